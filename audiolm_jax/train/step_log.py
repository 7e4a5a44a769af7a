"""A machine-readable record of every step: ``WORKDIR/metrics.jsonl``, one JSON object a line.

Each line holds the step, its scalar metrics and ``batch``, a fingerprint of the host batch the
step consumed. After a crash and resume, the steps after the last checkpoint are run (and logged)
again; :func:`read_step_log` keeps the last record of each step, so a resumed run reads like an
uninterrupted one, and equal fingerprints show that no batch was skipped or repeated.
Only process 0 writes (its own slice of the global batch is what it fingerprints).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable

import jax
import numpy as np
from etils import epath

STEP_LOG_FILE = "metrics.jsonl"


def batch_fingerprint(batch: Any) -> str:
    """A short hash of every array in a (host, numpy) batch: values, shapes and dtypes."""
    digest = hashlib.blake2b(digest_size=8)
    for leaf in jax.tree.leaves(batch):
        arr = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{arr.dtype}{arr.shape}".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


class StepLog:
    def __init__(self, workdir: str, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = epath.Path(workdir) / STEP_LOG_FILE

    def append(self, records: Iterable[dict]) -> None:
        lines = "".join(json.dumps(r) + "\n" for r in records)
        if not (self.enabled and lines):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One write per call: a kill leaves at most one torn last line, which the reader skips.
        with self.path.open("a") as f:
            f.write(lines)


def read_step_log(workdir: str) -> list[dict]:
    """The last record of each step, in step order (a torn final line is ignored)."""
    path = epath.Path(workdir) / STEP_LOG_FILE
    by_step: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        by_step[int(record["step"])] = record
    return [by_step[s] for s in sorted(by_step)]
