"""Inference exports: a trained model's weights and config, without training state.

``export(workdir, out)`` writes an *export directory*::

    EXPORT/export.json      {"kind": "codec" | "lm" | ..., "format": "orbax" | "safetensors",
                             "step": N, "source": the training workdir, + the task's entries}
    EXPORT/config.json      the training config, unchanged
    EXPORT/weights/         orbax (format orbax), or
    EXPORT/weights.safetensors   flat "params/encoder/.../kernel" keys (format safetensors)
    EXPORT/...              what the task adds (``Task.export_files``). The LM: tokens.json,
                            and a codec-token LM's codec exported into codec/, tokens.json
                            pointing there (relative path "codec")

What is kept of the train state is the task's choice (``Task.inference_state``): a codec keeps
``params`` and ``vq_stats`` (the codebooks live in the EMA statistics), an LM ``params``;
optimizer state, the discriminator and the balancer are left behind. This module knows no kind
of model: the caller passes the tasks by name (``audiolm_jax.tasks.TASKS``).
:func:`load_inference_weights` is the one loader every inference command uses, so a command that
takes a workdir takes an export directory too.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import jax
import numpy as np
from etils import epath

from audiolm_jax import workdir as workdir_lib
from audiolm_jax.train.checkpoint import (single_replica_saves_on_cpu, absolute, leaf_name,
                                         upgrade_flat)
from audiolm_jax.train.loop import restore_for_inference, strip_boxes
from audiolm_jax.train.task import Task
from audiolm_jax.workdir import EXPORT_FILE, is_export

FORMATS = ("orbax", "safetensors")


# ----------------------------------------------------------------------------- loading
def load_inference_weights(path: str, task: Task, step: int | None = None,
                           what: str = "model") -> tuple[dict, int]:
    """(``task.inference_state`` of the checkpoint, e.g. {'params': ..., 'vq_stats': ...},
    step) from a training workdir or an export directory."""
    kind = task.name
    if is_export(path):
        info = workdir_lib.read_export_info(path)
        if info.get("kind") != kind:
            raise ValueError(f"{path!r} is an export of a {info.get('kind')}, not of a {kind}")
        if step is not None and step != info["step"]:
            raise ValueError(f"{path!r} holds step {info['step']} only, not step {step}")
        weights = _read_weights(absolute(path), info["format"])  # orbax wants absolute paths
        flat = {leaf_name(p): v for p, v in jax.tree_util.tree_leaves_with_path(weights)}
        upgraded = upgrade_flat(flat, lambda arrays: np.stack(arrays, axis=1))
        if upgraded is not flat:  # an export with older parameter names
            shapes = task.inference_state(
                strip_boxes(jax.eval_shape(task.init_state, jax.random.PRNGKey(0))))
            weights = jax.tree_util.tree_map_with_path(
                lambda p, t: jax.numpy.asarray(upgraded[leaf_name(p)]).reshape(t.shape), shapes)
        return weights, int(info["step"])
    state, step = restore_for_inference(task, path, step, what=what)
    return task.inference_state(state), step


def _read_weights(folder: epath.Path, fmt: str) -> dict:
    if fmt == "safetensors":
        from safetensors.numpy import load_file

        flat = load_file(os.fspath(folder / "weights.safetensors"))
        tree: dict = {}
        for key, value in flat.items():
            node = tree
            *parents, leaf = key.split("/")
            for name in parents:
                node = node.setdefault(name, {})
            node[leaf] = jax.numpy.asarray(value)
        return tree
    if fmt != "orbax":
        raise ValueError(f"{folder / EXPORT_FILE}: unknown format {fmt!r}")
    import orbax.checkpoint as ocp

    single_replica_saves_on_cpu()
    checkpointer = ocp.StandardCheckpointer()
    location = folder / "weights"
    meta = checkpointer.metadata(location)
    meta = getattr(meta, "item_metadata", meta)
    meta = getattr(meta, "tree", meta)
    # Restore onto this machine's first device, whatever devices wrote it.
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta)
    return checkpointer.restore(location, target)


# ----------------------------------------------------------------------------- writing
def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    flat = {}
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            flat.update(_flatten(value, key + "/"))
        elif value is not None:
            flat[key] = np.ascontiguousarray(np.asarray(value))
    return flat


def _write_weights(out: epath.Path, weights: dict, fmt: str) -> None:
    weights = jax.tree.map(np.asarray, jax.device_get(weights))
    if fmt == "safetensors":
        from safetensors.numpy import save_file

        save_file(_flatten(weights), os.fspath(out / "weights.safetensors"),
                  metadata={"writer": "audiolm_jax.export"})
        return
    import orbax.checkpoint as ocp

    single_replica_saves_on_cpu()
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(out / "weights", weights)
    checkpointer.wait_until_finished()


def export(workdir: str, out: str, fmt: str = "orbax", step: int | None = None, *,
           tasks: Mapping[str, Callable[[Any], Task]]) -> dict:
    """Writes the inference export of ``workdir``'s latest (or given) checkpoint to ``out``.
    ``tasks``: the task of each kind of model by name (``audiolm_jax.tasks.TASKS``)."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {list(FORMATS)}, got {fmt!r}")
    if not (epath.Path(workdir) / workdir_lib.CONFIG_FILE).exists():
        raise FileNotFoundError(f"--workdir {workdir!r} is not a training workdir "
                                "(no config.json)")
    if is_export(workdir):
        raise ValueError(f"--workdir {workdir!r} is already an export")
    out_path = absolute(out)
    if out_path.exists() and any(out_path.iterdir()):
        raise ValueError(f"--out {out!r} exists and is not empty; choose a new folder")
    kind = workdir_lib.model_kind(workdir)
    if kind not in tasks:
        raise ValueError(f"--workdir {workdir!r} holds {workdir_lib.KINDS[kind]}, which has no "
                         "export")
    config = workdir_lib.load_config(workdir)
    task = tasks[kind](config)
    weights, step = load_inference_weights(workdir, task, step, what=kind)
    out_path.mkdir(parents=True, exist_ok=True)
    _write_weights(out_path, weights, fmt)
    workdir_lib.save_config(config, os.fspath(out_path))
    summary = {"kind": kind, "format": fmt, "step": int(step),
               "source": os.fspath(absolute(workdir))}
    summary.update(task.export_files(
        workdir, os.fspath(out_path),
        lambda source, dest, at: export(source, dest, fmt, at, tasks=tasks)))
    workdir_lib.write_export_info(os.fspath(out_path), summary)
    n = sum(int(np.size(x)) for x in jax.tree.leaves(weights))
    return {"out": os.fspath(out_path), **summary, "num_weights": n}
