"""orbax checkpoints of the train state plus the data iterator's position.

A step directory only becomes visible once orbax has finalised it (it writes to
``STEP.orbax-checkpoint-tmp*`` and renames; on GCS, which has no atomic rename, it writes a
commit file last), so a run killed mid-save resumes from the previous complete step
(``tests/test_resume.py`` kills a process inside that rename). Paths go through
``etils.epath``, so a ``gs://`` workdir needs nothing special. Every process must call
:meth:`Checkpointer.save` (orbax writes each process's shards and the iterator state of each
process collectively).
"""

from __future__ import annotations

import json
import os
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from audiolm_jax.layers.transformer import legacy_renames


class _IteratorSnapshot:
    """Freezes an iterator's state at save time.

    Saves are asynchronous; taking the state now (not when the writer thread gets to it) keeps
    the saved data position in step with the saved weights.
    """

    def __init__(self, iterator: Any | None = None):
        self.state = None if iterator is None else json.dumps(_to_jsonable(iterator.get_state()))

    def get_state(self) -> bytes:
        return self.state.encode()

    def set_state(self, state: bytes) -> None:
        self.state = state.decode() if isinstance(state, bytes) else state

    def start_prefetch(self) -> None:  # called by grain's handler after restore
        pass


def _to_jsonable(state: Any) -> Any:
    if isinstance(state, bytes):
        return {"__bytes__": state.decode()}
    return state


def _from_jsonable(state: Any) -> Any:
    if isinstance(state, dict) and set(state) == {"__bytes__"}:
        return state["__bytes__"].encode()
    return state


_cpu_handler_registered = False  # (once per process)


def single_replica_saves_on_cpu() -> None:
    """On the CPU backend, a replicated array is saved from one replica, not split across
    them. orbax's replica-parallel save (its default off GPU) slices every replica's copy
    with a small program compiled per array shape and device: 200 compiles (8 s) in the first
    save of one tiny Moshi on 8 CPU devices, for a device-to-host copy that is a memcpy here.
    Accelerators keep orbax's default."""
    global _cpu_handler_registered
    if _cpu_handler_registered or jax.default_backend() != "cpu":
        return
    from orbax.checkpoint import type_handlers

    from absl import logging as absl_logging

    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)  # (orbax warns of any override)
    try:
        type_handlers.register_type_handler(
            jax.Array, type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
    finally:
        absl_logging.set_verbosity(verbosity)
    _cpu_handler_registered = True


class Checkpointer:
    """Periodic, asynchronous, keep-N checkpoints of ``state`` and the data iterator."""

    def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True):
        single_replica_saves_on_cpu()
        self.directory = absolute(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_iterator: Any | None = None,
             force: bool = True) -> bool:
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(_IteratorSnapshot(data_iterator))
        return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, step: int, abstract_state: Any, data_iterator: Any | None = None) -> Any:
        """Restores ``state`` shaped/sharded like ``abstract_state`` (ShapeDtypeStructs).

        A checkpoint written with older parameter names (see :func:`upgrade_tree`) is read as
        saved, renamed and reshaped onto ``abstract_state``."""
        wanted = {leaf_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(abstract_state)}
        if wanted - set(self._saved_names(step)):
            return self._restore_renamed(step, abstract_state, data_iterator)
        return self._restore_items(step, ocp.args.StandardRestore(abstract_state), data_iterator)

    def _saved_names(self, step: int) -> set:
        meta = ocp.StandardCheckpointer().metadata(self.directory / str(step) / "state")
        tree = getattr(meta, "item_metadata", meta)
        tree = getattr(tree, "tree", tree)
        return {leaf_name(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)}

    def _restore_items(self, step: int, state_args: Any, data_iterator: Any | None) -> Any:
        items = {"state": state_args}
        snapshot = _IteratorSnapshot()
        has_data = data_iterator is not None and (self.directory / str(step) / "data").is_dir()
        if has_data:
            items["data"] = grain.checkpoint.CheckpointRestore(snapshot)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        if has_data and snapshot.state is not None:
            data_iterator.set_state(_from_jsonable(json.loads(snapshot.state)))
        return restored["state"]

    def _restore_renamed(self, step: int, abstract_state: Any, data_iterator: Any | None):
        raw = jax.device_get(self._restore_items(step, ocp.args.StandardRestore(),
                                                 data_iterator))
        flat = upgrade_flat({leaf_name(p): v for p, v in
                             jax.tree_util.tree_leaves_with_path(raw)},
                            lambda arrays: np.stack(arrays, axis=1))

        def place(path, target):
            name = leaf_name(path)
            if name not in flat:
                raise ValueError(f"{self.directory / str(step)}: the checkpoint holds no "
                                 f"{name!r} (written by another model?)")
            value = np.asarray(flat[name]).reshape(target.shape).astype(target.dtype)
            return jax.device_put(value, getattr(target, "sharding", None))

        return jax.tree_util.tree_map_with_path(place, abstract_state)

    def saved_shapes(self, step: int, like: dict | None = None) -> dict[str, tuple[int, ...]]:
        """{dotted leaf name: shape} of the state saved at ``step`` (read from metadata only),
        under today's names (:func:`upgrade_flat`); a renamed leaf reports the shape of the
        same name in ``like`` ({name: shape}, the model's) when its size is the same."""
        # Read straight from the step folder: a fresh manager knows no handlers for its items.
        meta = ocp.StandardCheckpointer().metadata(self.directory / str(step) / "state")
        tree = getattr(meta, "item_metadata", meta)
        tree = getattr(tree, "tree", tree)
        saved = {leaf_name(path): tuple(meta.shape)
                 for path, meta in jax.tree_util.tree_leaves_with_path(tree)}
        upgraded = upgrade_flat(saved, lambda shapes: (shapes[0][0], len(shapes)) + shapes[0][1:])
        for name, shape in upgraded.items():
            if (name not in saved and like and name in like
                    and np.prod(like[name]) == np.prod(shape)):
                upgraded[name] = tuple(like[name])
        return upgraded

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def absolute(path: str) -> epath.Path:
    """An absolute local path, or a cloud path (gs://...) unchanged (never os.path.abspath)."""
    path = os.fspath(path)
    return epath.Path(path) if "://" in path else epath.Path(os.path.abspath(path))


def leaf_name(path: tuple) -> str:
    """'params.encoder.conv.kernel' for a pytree path of dict keys, attributes or indices."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return ".".join(parts)


def upgrade_flat(flat: dict, stack) -> dict:
    """A ``{dotted leaf name: value}`` map written by an older version, with today's names:
    Mimi's transformer layers before the shared transformer (:func:`legacy_renames`). A leaf
    made of several old ones is ``stack(values)``; renamed kernels keep their old (flattened)
    shape, which the caller reshapes onto the model's. ``flat`` itself when nothing is old."""
    renames = legacy_renames(flat)
    if not renames:
        return flat
    used = {old for olds in renames.values() for old in olds}
    out = {name: value for name, value in flat.items() if name not in used}
    for new, olds in renames.items():
        out[new] = flat[olds[0]] if len(olds) == 1 else stack([flat[o] for o in olds])
    return out
