"""orbax checkpoints of the train state plus the data iterator's position.

A step directory only becomes visible once orbax has finalised it (it writes to a temporary
name and renames), so a run killed mid-save resumes from the previous complete step.
"""

from __future__ import annotations

import json
import os
from typing import Any

import grain
import orbax.checkpoint as ocp


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


class Checkpointer:
    """Periodic, asynchronous, keep-N checkpoints of ``state`` and the data iterator."""

    def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
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
        """Restores ``state`` shaped/sharded like ``abstract_state`` (ShapeDtypeStructs)."""
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        snapshot = _IteratorSnapshot()
        has_data = data_iterator is not None and os.path.isdir(
            os.path.join(self.directory, str(step), "data"))
        if has_data:
            items["data"] = grain.checkpoint.CheckpointRestore(snapshot)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        if has_data and snapshot.state is not None:
            data_iterator.set_state(_from_jsonable(json.loads(snapshot.state)))
        return restored["state"]

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
