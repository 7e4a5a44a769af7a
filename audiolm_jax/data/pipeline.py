"""Grain input pipeline: shuffled, sharded, randomly cropped audio batches.

Training::

    it = make_audio_iterator(source, crop_length=24000, batch_size=16, seed=0)
    batch = next(it)                  # {'audio': float32 [16, 24000]}
    state = it.get_state()            # JSON-serialisable dict; save with the checkpoint
    ...
    it = make_audio_iterator(source, crop_length=24000, batch_size=16, seed=0)
    it.set_state(state)               # continues exactly where the saved one stopped
    it.skipped.as_dict()              # {'count': ..., 'files': {path: reason}}

Pipeline (grain 0.2 ``MapDataset``)::

    source -> seed(seed) -> shuffle (global, same order on every host)
           -> even shard: first len - len % shard_count items, [shard_index::shard_count]
           -> repeat(num_epochs)  (reshuffled and re-cropped every epoch)
           -> filter(drop malformed items, counting them)
           -> random_map(random crop, per-element deterministic rng)
           -> to_iter_dataset (thread prefetch) -> batch

Items shorter than ``crop_length`` are zero-padded at the end (not looped):
padding is silence, which the codec sees anyway between utterances.
"""

from __future__ import annotations

import os
import threading
from concurrent import futures
from typing import Any, Iterator

import grain
import jax
import numpy as np

__all__ = ["AudioIterator", "SkipStats", "iter_eval_batches", "make_audio_iterator"]


class SkipStats:
    """Thread-safe record of malformed items the pipeline dropped.

    ``count`` counts skip events (a bad file is skipped again every epoch it is
    visited); ``files`` maps each distinct bad file (or ``'item N'``) to its
    reason. With prefetching, a few skips may be recorded for elements read
    ahead of the batch the trainer is currently consuming.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self.count = 0
        self.files: dict[str, str] = {}

    def record(self, name: str, reason: str) -> None:
        with self._lock:
            self.count += 1
            self.files[name] = reason

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"count": self.count, "files": dict(self.files)}

    def load(self, state: dict[str, Any]) -> None:
        with self._lock:
            self.count = int(state.get("count", 0))
            self.files = dict(state.get("files", {}))

    def __getstate__(self):
        return {"count": self.count, "files": self.files}

    def __setstate__(self, state):
        self._lock = threading.Lock()
        self.count, self.files = state["count"], state["files"]

    def __repr__(self) -> str:
        return f"SkipStats(count={self.count}, files={sorted(self.files)})"


def _is_bad(item: dict[str, Any]) -> str | None:
    if item.get("error"):
        return str(item["error"])
    if np.size(item["audio"]) == 0:
        return "empty audio"
    return None


def _item_name(item: dict[str, Any]) -> str:
    return str(item.get("path", f"item {item.get('index', '?')}"))


class _KeepGood:
    """grain filter: keeps readable items, records the rest in ``stats``.

    Raises once ``limit`` items in a row were unreadable, instead of letting an
    infinitely repeated, all-bad dataset spin forever. Any ``2 * len - 1``
    consecutive elements of a repeated dataset contain a whole epoch, so
    ``limit = 2 * len + slack`` (slack for thread-order jitter) never fires
    while at least one item is readable.
    """

    def __init__(self, stats: SkipStats, limit: int):
        self.stats = stats
        self.limit = max(1, int(limit))
        self._streak = 0

    def __call__(self, item: dict[str, Any]) -> bool:
        reason = _is_bad(item)
        if reason is None:
            self._streak = 0
            return True
        self.stats.record(_item_name(item), reason)
        self._streak += 1
        if self._streak >= self.limit:
            raise ValueError(
                f"no readable audio: the last {self._streak} items were all malformed "
                f"(e.g. {_item_name(item)}: {reason}); skipped so far: {self.stats.count}")
        return False


def _fit(audio: np.ndarray, crop_length: int, start: int) -> np.ndarray:
    audio = np.asarray(audio, np.float32).reshape(-1)
    if audio.shape[0] >= crop_length:
        return np.ascontiguousarray(audio[start:start + crop_length])
    out = np.zeros((crop_length,), np.float32)
    out[:audio.shape[0]] = audio
    return out


class _RandomCrop:
    """grain random_map: a uniformly random ``crop_length`` window."""

    def __init__(self, crop_length: int):
        self.crop_length = crop_length

    def __call__(self, item: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        n = np.size(item["audio"])
        start = int(rng.integers(0, n - self.crop_length + 1)) if n > self.crop_length else 0
        return {"audio": _fit(item["audio"], self.crop_length, start)}


class AudioIterator:
    """Iterator over ``{'audio': float32 [batch, crop_length]}`` batches.

    Wraps a grain ``DatasetIterator``; adds ``skipped`` (:class:`SkipStats`).

    ``get_state()`` returns a JSON-serialisable dict
    ``{'grain': <grain iterator state>, 'skipped': {'count', 'files'}}``;
    ``set_state(state)`` on an iterator built with the same arguments makes the
    following batches identical to those the saved iterator would have
    produced (and restores the skip counters). A bare grain state (without the
    ``'grain'`` key) is accepted too.
    """

    def __init__(self, grain_iterator, skipped: SkipStats):
        self._it = grain_iterator
        self.skipped = skipped

    def __iter__(self) -> "AudioIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._it)

    def get_state(self) -> dict[str, Any]:
        return {"grain": self._it.get_state(), "skipped": self.skipped.as_dict()}

    def set_state(self, state: dict[str, Any]) -> None:
        if "grain" in state:
            self._it.set_state(state["grain"])
            self.skipped.load(state.get("skipped", {}))
        else:
            self._it.set_state(state)

    @property
    def grain_iterator(self):
        return self._it

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


def make_audio_iterator(
        source,
        *,
        crop_length: int,
        batch_size: int,
        seed: int,
        shard_index: int | None = None,
        shard_count: int | None = None,
        num_epochs: int | None = None,
        shuffle: bool = True,
        drop_remainder: bool = True,
        num_threads: int | None = None,
        prefetch_buffer_size: int | None = None,
        skipped: SkipStats | None = None,
) -> AudioIterator:
    """Training iterator of randomly cropped audio batches.

    Args:
      source: random-access source whose items have ``'audio'`` (see
        :func:`make_source`); items with an ``'error'`` or empty audio are
        skipped and counted in ``iterator.skipped``.
      crop_length: samples per example; shorter items are zero-padded at the end.
      batch_size: per-process batch size.
      seed: controls the shuffle order (per epoch) and the crop offsets.
      shard_index, shard_count: this process's shard (default:
        ``jax.process_index()`` / ``jax.process_count()``). All processes
        shuffle identically, then take disjoint, equally sized strided shards
        of each epoch (``len % shard_count`` items are left out per epoch, a
        different set each epoch when shuffling).
      num_epochs: ``None`` repeats forever.
      shuffle: shuffle items (re-shuffled every epoch).
      drop_remainder: drop a final partial batch (only relevant if finite).
      num_threads, prefetch_buffer_size: grain ``ReadOptions`` (defaults:
        ``min(16, cpu_count)`` threads, ``max(64, 4 * batch_size)`` items).
      skipped: optional shared :class:`SkipStats` to record skips into.
    """
    if crop_length <= 0:
        raise ValueError(f"crop_length must be positive, got {crop_length}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    shard_index = jax.process_index() if shard_index is None else int(shard_index)
    shard_count = jax.process_count() if shard_count is None else int(shard_count)
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
    n = len(source)
    if n < shard_count:
        raise ValueError(f"source has {n} items, fewer than shard_count={shard_count}")
    skipped = SkipStats() if skipped is None else skipped

    ds = grain.MapDataset.source(source).seed(int(seed))
    if shuffle:
        ds = ds.shuffle()
    if shard_count > 1:
        ds = ds[: (n // shard_count) * shard_count][shard_index::shard_count]
    ds = ds.repeat(num_epochs)
    ds = ds.filter(_KeepGood(skipped, limit=2 * (n // shard_count) + 128))
    ds = ds.random_map(_RandomCrop(int(crop_length)))
    read_options = grain.ReadOptions(
        num_threads=num_threads if num_threads is not None else min(16, os.cpu_count() or 1),
        prefetch_buffer_size=(prefetch_buffer_size if prefetch_buffer_size is not None
                              else max(64, 4 * batch_size)),
    )
    it_ds = ds.to_iter_dataset(read_options).batch(batch_size, drop_remainder=drop_remainder)
    return AudioIterator(iter(it_ds), skipped)


def iter_eval_batches(
        source,
        crop_length: int,
        batch_size: int,
        max_items: int | None = None,
        *,
        crop: str = "center",
        pad_final_batch: bool = True,
        num_threads: int = 8,
        skipped: SkipStats | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Deterministic evaluation batches over the first ``max_items`` items.

    Each readable item gives one ``crop_length`` window (``crop='center'`` or
    ``'first'``), zero-padded at the end when shorter. Malformed items are
    skipped (recorded in ``skipped`` if given).

    Yields ``{'audio': float32 [B, crop_length], 'length': int32 [B] (real,
    unpadded samples in each row), 'mask': bool [B] (row holds an item)}``.
    All batches have ``B = batch_size``: the last one is padded with
    all-zero rows whose ``mask`` is False (``pad_final_batch=False`` instead
    yields a smaller final batch).
    """
    if crop not in ("center", "first"):
        raise ValueError(f"crop must be 'center' or 'first', got {crop!r}")
    if crop_length <= 0 or batch_size <= 0:
        raise ValueError("crop_length and batch_size must be positive")
    n = len(source) if max_items is None else min(int(max_items), len(source))

    def load(i: int):
        item = source[i]
        reason = _is_bad(item)
        if reason is not None:
            if skipped is not None:
                skipped.record(_item_name(item), reason)
            return None
        audio = np.asarray(item["audio"], np.float32).reshape(-1)
        extra = audio.shape[0] - crop_length
        start = extra // 2 if (crop == "center" and extra > 0) else 0
        return _fit(audio, crop_length, start), min(audio.shape[0], crop_length)

    def emit(rows):
        k = len(rows)
        size = batch_size if pad_final_batch else k
        audio = np.zeros((size, crop_length), np.float32)
        length = np.zeros((size,), np.int32)
        mask = np.zeros((size,), bool)
        for j, (a, l) in enumerate(rows):
            audio[j], length[j], mask[j] = a, l, True
        return {"audio": audio, "length": length, "mask": mask}

    rows = []
    with futures.ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
        # Bounded look-ahead keeps memory flat for long evaluations.
        window = max(batch_size * 2, num_threads)
        for lo in range(0, n, window):
            for result in pool.map(load, range(lo, min(lo + window, n))):
                if result is None:
                    continue
                rows.append(result)
                if len(rows) == batch_size:
                    yield emit(rows)
                    rows = []
    if rows:
        yield emit(rows)
