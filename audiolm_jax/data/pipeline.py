"""Grain input pipeline: shuffled, sharded, randomly cropped audio batches.

Training::

    it = make_audio_iterator(source, crop_length=24000, batch_size=16, seed=0)
    batch = next(it)                  # {'audio': float32 [16, 24000]}
    state = it.get_state()            # JSON-serialisable dict; save with the checkpoint
    ...
    it = make_audio_iterator(source, crop_length=24000, batch_size=16, seed=0)
    it.set_state(state)               # continues exactly where the saved one stopped
    it.skipped.as_dict()              # {'count': ..., 'files': {path: reason}}

Pipeline (grain 0.2)::

    source -> seed(seed) -> shuffle (global, same order on every host)
           -> repeat(num_epochs)  (reshuffled and re-cropped every epoch)
           -> random_map(random crop, per-element deterministic rng; a malformed item
              becomes a small skip marker instead)
           -> process blocks: of each run of batch_size * shard_count elements, this
              process takes the shard_index-th block of batch_size (lazily: it reads no other)
           -> to_iter_dataset (threads read ahead)
           -> [mp_prefetch: ``worker_processes`` processes, each reading every n-th element]
           -> filter (drops the markers and counts them, in this process) -> batch

Every step above the process split is the same on every process, and crops are seeded by an
element's place in that global stream, so the global batch (the processes' batches in process
order) is the single-process batch whatever the process count, as long as no item is skipped.
Worker processes hand their elements back in order, so the batches are the same with any
number of them; a checkpoint saved with one worker count resumes under another.

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
    # Folder and TFDS sources refuse NaN/Inf already; this guards any other source, so no
    # non-finite sample can reach a batch.
    if not np.all(np.isfinite(item["audio"])):
        return "non-finite (NaN/Inf) samples"
    return None


def _item_name(item: dict[str, Any]) -> str:
    return str(item.get("path", f"item {item.get('index', '?')}"))


_SKIP = "_skipped_item"  # key of the marker that stands in for a malformed item


class _KeepGood:
    """grain filter: passes cropped items, counts the skip markers in ``stats``.

    It runs in the consuming process (after any worker processes), so the counts are
    complete whatever the worker count. Raises once ``limit`` items in a row were unreadable,
    instead of letting an infinitely repeated, all-bad dataset spin forever. Any
    ``2 * len - 1`` consecutive elements of a repeated dataset contain a whole epoch, so
    ``limit = 2 * len + slack`` never fires while at least one item is readable.
    ``seen`` counts every element it was offered: the stream position a resume starts from.
    """

    def __init__(self, stats: SkipStats, limit: int, seen: int = 0):
        self.stats = stats
        self.limit = max(1, int(limit))
        self.seen = int(seen)
        self._streak = 0

    def __call__(self, item: dict[str, Any]) -> bool:
        self.seen += 1
        if _SKIP not in item:
            self._streak = 0
            return True
        name, reason = item[_SKIP]
        self.stats.record(name, reason)
        self._streak += 1
        if self._streak >= self.limit:
            raise ValueError(
                f"no readable audio: the last {self._streak} items were all malformed "
                f"(e.g. {name}: {reason}); skipped so far: {self.stats.count}")
        return False


def _fit(audio: np.ndarray, crop_length: int, start: int) -> np.ndarray:
    audio = np.asarray(audio, np.float32).reshape(-1)
    if audio.shape[0] >= crop_length:
        return np.ascontiguousarray(audio[start:start + crop_length])
    out = np.zeros((crop_length,), np.float32)
    out[:audio.shape[0]] = audio
    return out


def _fit_frames(features: np.ndarray, frames: int, start: int) -> np.ndarray:
    """``frames`` rows of ``features`` from ``start``, zero rows past the end."""
    out = np.zeros((frames, features.shape[1]), np.float32)
    part = features[start:start + frames]
    out[:part.shape[0]] = part
    return out


class _RandomCrop:
    """grain random_map: a uniformly random ``crop_length`` window.

    A malformed item (see ``_is_bad``) becomes a skip marker for :class:`_KeepGood`.
    Items with ``'features'`` (teacher frames every ``feature_hop`` samples from the file's
    start) get a window starting on a feature frame boundary, so the features crop with the
    audio exactly: ``ceil(crop_length / feature_hop)`` frames, zero rows past the file's end.
    """

    def __init__(self, crop_length: int, feature_hop: int | None = None):
        self.crop_length = crop_length
        self.feature_hop = feature_hop

    def __call__(self, item: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        reason = _is_bad(item)
        if reason is not None:
            return {_SKIP: (_item_name(item), reason)}
        n = np.size(item["audio"])
        if "features" in item and self.feature_hop:
            return self._crop_with_features(item, n, rng)
        start = int(rng.integers(0, n - self.crop_length + 1)) if n > self.crop_length else 0
        return {"audio": _fit(item["audio"], self.crop_length, start)}

    def _crop_with_features(self, item, n: int, rng: np.random.Generator):
        hop = int(self.feature_hop)
        last = (n - self.crop_length) // hop if n > self.crop_length else 0
        first_frame = int(rng.integers(0, last + 1))
        frames = -(-self.crop_length // hop)
        return {"audio": _fit(item["audio"], self.crop_length, first_frame * hop),
                "features": _fit_frames(item["features"], frames, first_frame)}


class _ProcessBlocks(grain.MapDataset):
    """This process's blocks of a global stream: local element ``j`` is global element
    ``(j // block * count + index) * block + j % block`` (its slice of each global batch)."""

    def __init__(self, parent: grain.MapDataset, block: int, count: int, index: int):
        super().__init__(parent)
        self._block, self._count, self._index = block, count, index

    def __len__(self) -> int:
        return len(self._parent) // (self._block * self._count) * self._block

    def __getitem__(self, j):
        if isinstance(j, slice):
            return self.slice(j)
        group, offset = divmod(int(j), self._block)
        return self._parent[(group * self._count + self._index) * self._block + offset]

    def __str__(self) -> str:
        return f"ProcessBlocks(block={self._block}, index={self._index} of {self._count})"


class AudioIterator:
    """Iterator over ``{'audio': float32 [batch, crop_length]}`` batches.

    Wraps a grain ``DatasetIterator`` (built on first use); adds ``skipped``
    (:class:`SkipStats`).

    ``get_state()`` returns a JSON-serialisable dict ``{'grain': <grain iterator state>,
    'skipped': {'count', 'files'}, 'position': elements consumed, 'base': where this
    pipeline started, 'worker_processes': n}``; ``set_state(state)`` on an iterator built with
    the same arguments makes the following batches identical to those the saved iterator would
    have produced (and restores the skip counters). With a different ``worker_processes`` the
    grain state does not apply, so the pipeline is rebuilt to start at the saved position:
    the batches are the same. States of older versions (no ``position``) and bare grain states
    are accepted too.
    """

    def __init__(self, build, worker_processes: int, skipped: SkipStats):
        self._build = build  # base -> (grain iterator over the stream from base, its filter)
        self.worker_processes = int(worker_processes)
        self.skipped = skipped
        self._base = 0
        self._it = None
        self._keep = None

    def _start(self, base: int) -> None:
        self.close()
        self._base = int(base)
        self._it, self._keep = self._build(self._base)

    def __iter__(self) -> "AudioIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._it is None:
            self._start(self._base)
        return next(self._it)

    def get_state(self) -> dict[str, Any]:
        if self._it is None:
            self._start(self._base)
        return {"grain": self._it.get_state(), "skipped": self.skipped.as_dict(),
                "position": self._keep.seen, "base": self._base,
                "worker_processes": self.worker_processes}

    def set_state(self, state: dict[str, Any]) -> None:
        if "grain" not in state:  # a bare grain state
            self._start(0)
            self._it.set_state(state)
            return
        native = state["grain"]
        workers = int(state.get("worker_processes", 0))
        base = int(state.get("base", 0))
        position = state.get("position")
        if position is None:  # written before positions were recorded: threads only
            position = base + int(native["next_index"])
        if workers == self.worker_processes:
            self._start(base)
            self._it.set_state(native)
            self._keep.seen = int(position)
        else:
            self._start(int(position))
        self.skipped.load(state.get("skipped", {}))

    @property
    def grain_iterator(self):
        if self._it is None:
            self._start(self._base)
        return self._it

    def close(self) -> None:
        """Stops the read-ahead (and any worker processes); the iterator restarts on use."""
        it, self._it = self._it, None
        close = getattr(it, "close", None)
        if close is not None:
            close()


def _allow_grain_workers() -> None:
    """grain's worker processes read absl flags; a program that never parsed them (a script,
    a notebook) would fail there, so mark them parsed with their defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


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
        worker_processes: int = 0,
        skipped: SkipStats | None = None,
        feature_hop: int | None = None,
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
        shuffle and crop identically; process ``i`` takes elements
        ``[i * batch_size, (i + 1) * batch_size)`` of each ``batch_size *
        shard_count`` (its slice of the global batch). With ``num_epochs`` set,
        a final partial global batch is left out.
      num_epochs: ``None`` repeats forever.
      shuffle: shuffle items (re-shuffled every epoch).
      drop_remainder: drop a final partial batch (only relevant if finite).
      num_threads, prefetch_buffer_size: grain ``ReadOptions`` of each reading
        process (defaults: ``min(16, cpus / processes)`` threads,
        ``max(64, 4 * batch_size)`` items in all).
      worker_processes: decode and crop in this many grain worker processes
        (``mp_prefetch``) instead of threads of this one: Python-heavy sources
        (the synthetic corpus, resampling) scale with cores only this way. The
        batches are the same with any count.
      skipped: optional shared :class:`SkipStats` to record skips into.
      feature_hop: for sources whose items carry teacher ``'features'``
        (:class:`audiolm_jax.data.features.TeacherFeatureSource`): samples per
        feature frame; batches then also hold ``'features'`` [batch, frames, dim]
        aligned with the audio crop.
    """
    if crop_length <= 0:
        raise ValueError(f"crop_length must be positive, got {crop_length}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    worker_processes = int(worker_processes)
    if worker_processes < 0:
        raise ValueError(f"worker_processes must be >= 0, got {worker_processes}")
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
    ds = ds.repeat(num_epochs)
    ds = ds.random_map(_RandomCrop(int(crop_length), feature_hop))
    if shard_count > 1:
        ds = _ProcessBlocks(ds, int(batch_size), shard_count, shard_index)
    readers = max(1, worker_processes)
    buffer = (prefetch_buffer_size if prefetch_buffer_size is not None
              else max(64, 4 * batch_size))
    read_options = grain.ReadOptions(
        num_threads=(num_threads if num_threads is not None
                     else max(1, min(16, (os.cpu_count() or 1) // readers))),
        prefetch_buffer_size=max(1, buffer // readers))
    # The streak limit counts this process's elements only, a 1/shard_count sample of the stream.
    limit = 2 * n * shard_count + 128

    def build(base: int):
        keep = _KeepGood(skipped, limit, seen=base)
        it_ds = (ds[base:] if base else ds).to_iter_dataset(read_options)
        if worker_processes:
            _allow_grain_workers()
            it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
                num_workers=worker_processes,
                per_worker_buffer_size=max(2, buffer // worker_processes)))
        it_ds = it_ds.filter(keep).batch(batch_size, drop_remainder=drop_remainder)
        return iter(it_ds), keep

    return AudioIterator(build, worker_processes, skipped)


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
