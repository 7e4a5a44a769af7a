"""Joins this process to a multi-process JAX job (``jax.distributed.initialize``) when it is one.

Where the settings come from, first match wins:

1. explicit values (the CLI's ``--coordinator_address``, ``--num_processes``, ``--process_id``);
2. the environment variables ``AUDIOLM_JAX_COORDINATOR``, ``AUDIOLM_JAX_NUM_PROCESSES`` and
   ``AUDIOLM_JAX_PROCESS_ID`` (what ``launch/local_multiprocess.sh`` sets);
3. a cluster JAX detects by itself, in which case ``initialize()`` gets no arguments: SLURM with
   more than one task (``SLURM_JOB_ID`` and ``SLURM_NTASKS`` > 1), a Cloud TPU VM slice with
   several workers (``TPU_WORKER_HOSTNAMES`` lists more than one host), or
   ``AUDIOLM_JAX_DISTRIBUTED=auto`` to ask for detection anyway (``launch/tpu_pod.sh`` sets it);
4. otherwise nothing happens: one process.

It must run before anything touches a JAX backend, which is why the CLI calls it first.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

ENV_COORDINATOR = "AUDIOLM_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "AUDIOLM_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "AUDIOLM_JAX_PROCESS_ID"
ENV_MODE = "AUDIOLM_JAX_DISTRIBUTED"


def _int_or_none(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def resolve(coordinator_address: str | None = None, num_processes: int | None = None,
            process_id: int | None = None,
            env: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The keyword arguments for ``jax.distributed.initialize``, or None for a single process.

    Pure (reads only ``env``), so the decision can be tested without starting anything.
    """
    env = os.environ if env is None else env
    address = coordinator_address or env.get(ENV_COORDINATOR) or None
    count = _int_or_none(num_processes, "--num_processes")
    if count is None:
        count = _int_or_none(env.get(ENV_NUM_PROCESSES), ENV_NUM_PROCESSES)
    index = _int_or_none(process_id, "--process_id")
    if index is None:
        index = _int_or_none(env.get(ENV_PROCESS_ID), ENV_PROCESS_ID)

    if address is not None or count is not None or index is not None:
        missing = [name for name, value in (("--coordinator_address", address),
                                            ("--num_processes", count),
                                            ("--process_id", index)) if value is None]
        if missing:
            raise ValueError(f"multi-process run: {', '.join(missing)} missing (give all three "
                             f"flags, or the {ENV_COORDINATOR}/{ENV_NUM_PROCESSES}/"
                             f"{ENV_PROCESS_ID} variables)")
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"--process_id must lie in [0, --num_processes={count}), got {index}")
        if count == 1:
            return None
        return {"coordinator_address": address, "num_processes": count, "process_id": index}

    mode = env.get(ENV_MODE, "").lower()
    if mode not in ("", "auto", "off"):
        raise ValueError(f"{ENV_MODE} must be 'auto' or 'off', got {mode!r}")
    if mode == "off":
        return None
    slurm = "SLURM_JOB_ID" in env and (_int_or_none(env.get("SLURM_NTASKS"), "SLURM_NTASKS") or 1) > 1
    tpu_slice = len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
    if mode == "auto" or slurm or tpu_slice:
        return {}  # JAX reads the cluster's own environment
    return None


def maybe_initialize(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> bool:
    """Initialises ``jax.distributed`` if this process is one of several; True if it did."""
    kwargs = resolve(coordinator_address, num_processes, process_id)
    if kwargs is None:
        return False
    import jax

    if jax.distributed.is_initialized():
        return True
    # CPU processes exchange collectives over gloo; harmless on GPU/TPU, where the CPU backend
    # is not used for the training step.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    return True
