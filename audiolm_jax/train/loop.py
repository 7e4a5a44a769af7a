"""The one training loop that codec and language-model training share.

A *task* (:class:`audiolm_jax.train.task.Task`) supplies what differs: ``init_state(rng)``
(pure; weights may carry logical-axis boxes), ``train_step(state, batch) -> (state, metrics)``
(pure), ``prepare_batch(host_batch)``, and optionally ``init_step(state, batch) -> state`` (run
once on the first batch of a fresh run, e.g. k-means codebook init), ``write_samples(state,
step, workdir, writer)`` and ``program``, the name its compiled step has for platform tuning
(:mod:`audiolm_jax.runtime.xla_options`). The loop owns the mesh, shardings, compilation,
checkpoints, metrics (TensorBoard and ``metrics.jsonl`` with a fingerprint of each step's
batch), progress bar, the NaN guard and preemption: on SIGTERM the in-flight step completes, a
checkpoint of that step is written and waited for, and :class:`Preempted` is raised (the CLI
exits with :data:`EXIT_PREEMPTED`). Running the same command again resumes from it.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Iterator

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import logging
from tqdm.auto import tqdm

from audiolm_jax import workdir as workdir_lib
from audiolm_jax.errors import ConfigError
from audiolm_jax.runtime import xla_options
from audiolm_jax.train import mesh as mesh_lib
from audiolm_jax.train.checkpoint import Checkpointer, leaf_name
from audiolm_jax.train.preemption import PreemptionWatch
from audiolm_jax.train.step_log import StepLog, batch_fingerprint
from audiolm_jax.train.task import Task, overrides
from audiolm_jax.train.writers import MetricWriter

# The CLI's exit status after a preemption checkpoint: EX_TEMPFAIL ("try again later"), so a
# job script can tell "stopped early, resumable" from success (0) and from failure.
EXIT_PREEMPTED = 75


class NonFiniteLossError(FloatingPointError):
    """Raised when a loss becomes NaN or Inf; no checkpoint is written for that state."""


class Preempted(Exception):
    """Raised after a SIGTERM once the checkpoint of the current step is safely written."""

    def __init__(self, step: int):
        super().__init__(f"preempted: checkpoint written at step {step}; run the same command "
                         "again to resume")
        self.step = step


def check_checkpoint_shapes(checkpointer: Checkpointer, step: int, abstract: Any) -> None:
    """Refuses to restore a checkpoint whose arrays have other shapes than this config's model,
    naming the first leaves that differ (the config-level check names the config keys)."""
    wanted = {leaf_name(path): tuple(leaf.shape)
              for path, leaf in jax.tree_util.tree_leaves_with_path(abstract)}
    saved = checkpointer.saved_shapes(step, like=wanted)
    diffs = [f"{name} {saved[name]} -> {shape}" for name, shape in wanted.items()
             if name in saved and saved[name] != shape]
    diffs += [f"{name} is new" for name in wanted if name not in saved]
    diffs += [f"{name} is gone" for name in saved if name not in wanted]
    if diffs:
        more = f" (and {len(diffs) - 5} more)" if len(diffs) > 5 else ""
        raise ConfigError(
            f"the checkpoint at step {step} in {checkpointer.directory} holds a model of another "
            f"shape: {'; '.join(diffs[:5])}{more}; use a new --workdir")


def strip_boxes(tree: Any) -> Any:
    """Replaces logical-partitioning boxes by their values (no sharding constraint applied,
    which ``nn.meta.unbox`` would attempt under a mesh even on abstract values)."""
    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
    return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree,
                        is_leaf=is_box)


def abstract_state(task: Task, mesh, rng) -> tuple[Any, Any]:
    """(ShapeDtypeStructs carrying NamedShardings, shardings) of the task's state."""
    boxed = jax.eval_shape(task.init_state, rng)
    shardings = mesh_lib.tree_shardings(mesh, boxed)
    plain = strip_boxes(boxed)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), plain, shardings)
    return abstract, shardings


def compile_init_step(task: Task, state_shardings, mesh) -> Callable | None:
    if not overrides(task, "init_step"):
        return None
    return jax.jit(task.init_step,
                   in_shardings=(state_shardings, mesh_lib.batch_sharding(mesh, 1)),
                   out_shardings=state_shardings, donate_argnums=(0,))


def compile_step(task: Task, state_shardings, mesh) -> Callable:
    batch_sh = mesh_lib.batch_sharding(mesh, 1)
    return jax.jit(
        task.train_step,
        in_shardings=(state_shardings, batch_sh),
        out_shardings=(state_shardings, mesh_lib.replicated(mesh)),
        donate_argnums=(0,),
        # Platform tuning, chosen by the runtime for the program the task names and the
        # platform of the mesh's devices (which may be a TPU slice compiled for ahead of time).
        compiler_options=xla_options.compiler_options(task.program,
                                                      mesh.devices.flat[0].platform))


def initial_state(task: Task, mesh, rng, checkpointer: Checkpointer | None = None,
                  data_iterator: Any | None = None) -> tuple[Any, Any, int | None]:
    """Restores the latest checkpoint if there is one, else initialises. Returns
    (state, shardings, restored_step)."""
    abstract, shardings = abstract_state(task, mesh, rng)
    latest = checkpointer.latest_step() if checkpointer else None
    if latest is not None:
        check_checkpoint_shapes(checkpointer, latest, abstract)
        state = checkpointer.restore(latest, abstract, data_iterator)
        return state, shardings, latest
    init = jax.jit(lambda r: nn.meta.unbox(task.init_state(r)), out_shardings=shardings)
    return task.warm_start(init(rng)), shardings, None


def restore_for_inference(task: Task, workdir: str, step: int | None = None,
                          what: str = "model") -> tuple[Any, int]:
    """(state, step) of a workdir's latest (or given) checkpoint, on one device."""
    checkpointer = Checkpointer(workdir_lib.checkpoints_dir(workdir), async_save=False)
    step = step if step is not None else checkpointer.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints: train the {what} first")
    mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1)),
                              jax.devices()[:1])
    with jax.set_mesh(mesh):
        abstract, _ = abstract_state(task, mesh, jax.random.PRNGKey(0))
        state = checkpointer.restore(step, abstract)
    checkpointer.close()
    return state, step


def _check_finite(step: int, metrics: dict, last_saved: int | None) -> None:
    loss = metrics.get("loss")
    if loss is not None and not np.all(np.isfinite(loss)):
        where = (f"the last good checkpoint (step {last_saved}) is intact"
                 if last_saved is not None else "no checkpoint was written")
        raise NonFiniteLossError(
            f"loss became {float(np.asarray(loss))} at step {step}; stopping. {where}. "
            "Lower train.learning_rate or check the data.")


def _scalars(metrics: dict) -> dict[str, float]:
    """Flattens metrics to scalars: per-level arrays become name/level_i."""
    out = {}
    for name, value in metrics.items():
        arr = np.asarray(value)
        if arr.ndim == 0:
            out[name] = float(arr)
        else:
            for i, v in enumerate(arr.reshape(-1)):
                out[f"{name}/{i}"] = float(v)
    return out


def train_loop(task: Task, config: Any, workdir: str, data_iterator: Iterator,
               writer: MetricWriter | None = None) -> tuple[Any, list[dict]]:
    """Runs ``config.train.num_steps`` steps (resuming if checkpoints exist).

    Returns the final state and the per-step host metrics of this invocation (each with
    ``batch``, the fingerprint of the host batch of that step). Raises :class:`Preempted` after
    a SIGTERM, once the checkpoint of the step in flight is written.
    """
    tcfg = config.train
    num_steps = int(tcfg.num_steps)
    log_every = max(int(tcfg.get("log_every", 10)), 1)
    ckpt_every = max(int(tcfg.checkpoint_every), 1)
    sample_every = int(tcfg.get("sample_every", 0) or 0)
    mesh = mesh_lib.make_mesh(config.mesh)
    workdir = os.fspath(workdir)  # may be gs://...: join with '/', never os.path.abspath
    writer = writer or MetricWriter(workdir_lib.tensorboard_dir(workdir))
    step_log = StepLog(workdir)
    checkpointer = Checkpointer(workdir_lib.checkpoints_dir(workdir),
                                max_to_keep=int(tcfg.get("keep_checkpoints", 3)),
                                async_save=bool(tcfg.get("async_checkpoints", True)))
    history: list[dict] = []
    rng = jax.random.PRNGKey(int(tcfg.seed))
    with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.LOGICAL_AXIS_RULES):
        state, shardings, restored = initial_state(task, mesh, rng, checkpointer, data_iterator)
        step = int(jax.device_get(state.step))
        if restored is not None:
            logging.info("resumed from checkpoint at step %d", restored)
        last_saved = restored
        step_fn = compile_step(task, shardings, mesh)
        first_batch_fn = compile_init_step(task, shardings, mesh) if restored is None else None
        batch_sh = mesh_lib.batch_sharding(mesh, 1)
        pending: list[tuple[int, str, Any]] = []
        bar = tqdm(total=num_steps, initial=step, unit="step", dynamic_ncols=True,
                   disable=jax.process_index() != 0 or not tcfg.get("progress", True),
                   desc=tcfg.get("name", "train"))
        start = time.time()
        preempted = False
        try:
            with PreemptionWatch() as watch:
                while step < num_steps:
                    host_batch = task.prepare_batch(next(data_iterator))
                    fingerprint = batch_fingerprint(host_batch)
                    batch = mesh_lib.global_batch(host_batch, batch_sh)
                    if first_batch_fn is not None and step == 0:
                        state = first_batch_fn(state, batch)
                    state, metrics = step_fn(state, batch)
                    step += 1
                    pending.append((step, fingerprint, metrics))
                    preempted = watch.requested(step)
                    must_save = step % ckpt_every == 0 or step == num_steps or preempted
                    if (step % log_every == 0 or must_save
                            or (sample_every and step % sample_every == 0)):
                        records = []
                        for s, fp, m in jax.device_get(pending):
                            _check_finite(s, m, last_saved)
                            scalars = _scalars(m)
                            records.append({"step": s, **scalars, "batch": fp})
                            writer.scalars(s, scalars)
                        history.extend(records)
                        step_log.append(records)
                        pending.clear()
                        bar.set_postfix(loss=f"{history[-1].get('loss', math.nan):.4g}")
                    if must_save:
                        checkpointer.save(step, state, data_iterator)
                        last_saved = step
                    if preempted:
                        break
                    if sample_every and step % sample_every == 0:
                        task.write_samples(state, step, workdir, writer)
                    bar.update(1)
        finally:
            bar.close()
            checkpointer.close()  # waits for the last (async) save to be committed
            writer.flush()
        if preempted:
            logging.warning("preempted: checkpoint of step %d written; stopping", step)
            raise Preempted(step)
        elapsed = time.time() - start
        logging.info("trained to step %d in %.1fs", step, elapsed)
    return state, history
