"""Random-access audio sources (grain ``RandomAccessDataSource`` protocol).

``make_source(spec, sample_rate, split)`` understands three kinds of spec:

* ``'synthetic'`` — the built-in :class:`SyntheticSpeechCorpus` (default data).
* a folder path — every ``.wav/.flac/.ogg/.mp3`` below it (recursive, sorted).
  If the folder has a sub-folder named after the split (``train/``; for
  ``'eval'`` one of ``eval/ valid/ validation/ dev/ test/``) that sub-folder is
  used, otherwise the whole folder serves every split.
* ``'tfds:NAME'`` or ``'tfds:NAME:SPLIT'`` — a TFDS dataset through
  ``tfds.data_source`` (needs ``pip install audiolm_jax[tfds]`` and prepared
  ArrayRecord data).

Every source returns dicts with at least ``audio`` (float32 [samples] at the
requested rate) and ``index``. A malformed file in a folder does not raise:
its item carries ``audio`` of length 0 and an ``error`` string, and a warning
naming the file is logged once, so the pipeline can skip and count it.

A folder file longer than ``segment_seconds`` (default 60 s) becomes several
items, one per equal segment, each read on its own: an hour-long recording costs
a minute's memory per load and is sampled in proportion to its length.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any

import numpy as np
from absl import logging

from audiolm_jax.data.audio_io import (AUDIO_EXTENSIONS, AudioDecodeError, audio_frames,
                                       load_audio)
from audiolm_jax.data.synthetic import SyntheticSpeechCorpus

__all__ = [
    "FolderSource",
    "TfdsAudioSource",
    "ensure_readable",
    "find_audio_files",
    "make_source",
]

_EVAL_DIRS = ("eval", "valid", "validation", "dev", "test")

# Only files at least this big have their header read to find their length: smaller ones
# decode to a few minutes at most, and most corpora are many small files.
_SEGMENT_PROBE_BYTES = 1 << 20


def find_audio_files(folder: str | os.PathLike,
                     extensions: tuple[str, ...] = AUDIO_EXTENSIONS) -> list[str]:
    """All audio files below ``folder`` (recursive), sorted by relative path.

    Extensions match case-insensitively; hidden files/folders (``.name``) are
    ignored.
    """
    folder = os.fspath(folder)
    exts = tuple(e.lower() for e in extensions)
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and name.lower().endswith(exts):
                found.append(os.path.join(root, name))
    found.sort(key=lambda p: os.path.relpath(p, folder).split(os.sep))
    return found


class BadFileLog:
    """What a source that skips unusable files shares: ``bad_files`` (path -> reason),
    recorded under ``_lock`` (both set by the source's ``__init__``), a warning the first time
    a file fails (the source's ``_warn_bad``), and pickling without the lock."""

    def _note_bad(self, path: str, reason: str) -> None:
        with self._lock:
            first = path not in self.bad_files
            self.bad_files[path] = reason
        if first:
            self._warn_bad(path, reason)

    def _warn_bad(self, path: str, reason: str) -> None:
        raise NotImplementedError

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()


class FolderSource(BadFileLog):
    """Audio files in a folder tree as a random-access source.

    Items: ``{'audio': float32 [samples], 'index': int, 'path': str}``, plus
    ``'segment': (first_frame, frames)`` (in the file's own frames) for a piece
    of a long file; for an undecodable file ``audio`` is empty and ``'error'``
    holds the reason. ``paths`` lists the files, ``segments`` the items as
    ``(path, first_frame, frames or None)``; ``bad_files`` maps each failed path
    to its reason (this process only).

    ``segment_seconds`` (None: off) splits files longer than that into equal
    segments of at most that length, so no load decodes more than it.
    """

    def __init__(self, folder: str | os.PathLike, sample_rate: int,
                 extensions: tuple[str, ...] = AUDIO_EXTENSIONS,
                 segment_seconds: float | None = 60.0):
        self.folder = os.fspath(folder)
        self.sample_rate = int(sample_rate)
        if segment_seconds is not None and segment_seconds <= 0:
            raise ValueError(f"segment_seconds must be positive or None, got {segment_seconds}")
        if not os.path.isdir(self.folder):
            raise ValueError(f"audio folder {self.folder!r} does not exist or is not a directory")
        self.paths = find_audio_files(self.folder, extensions)
        if not self.paths:
            raise ValueError(
                f"audio folder {self.folder!r} contains no audio files "
                f"(searched recursively for {', '.join(extensions)})")
        self.segments = [seg for path in self.paths for seg in _split(path, segment_seconds)]
        self.bad_files: dict[str, str] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.segments)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        path, first, frames = self.segments[index]
        try:
            audio = load_audio(path, self.sample_rate, start=first, frames=frames)
        except AudioDecodeError as e:
            self._note_bad(path, e.reason)
            return {"audio": np.zeros((0,), np.float32), "index": index, "path": path,
                    "error": str(e)}
        except Exception as e:  # pylint: disable=broad-except
            reason = f"{type(e).__name__}: {e}"
            self._note_bad(path, reason)
            return {"audio": np.zeros((0,), np.float32), "index": index, "path": path,
                    "error": f"cannot decode audio file {path!r}: {reason}"}
        item = {"audio": audio, "index": index, "path": path}
        if frames is not None:
            item["segment"] = (first, frames)
        return item

    def _warn_bad(self, path: str, reason: str) -> None:
        logging.warning("Skipping malformed audio file %s: %s", path, reason)

    def __repr__(self) -> str:
        return (f"FolderSource({self.folder!r}, sample_rate={self.sample_rate}, "
                f"files={len(self.paths)}, items={len(self)})")


def _split(path: str, segment_seconds: float | None) -> list[tuple[str, int, int | None]]:
    """``[(path, first_frame, frames)]``: equal segments of at most ``segment_seconds``
    (so none is a short tail), or ``[(path, 0, None)]`` for the whole file."""
    whole = [(path, 0, None)]
    if segment_seconds is None:
        return whole
    try:
        if os.path.getsize(path) < _SEGMENT_PROBE_BYTES:
            return whole
    except OSError:
        return whole  # load_audio names the problem when the item is read
    header = audio_frames(path)
    if header is None:
        return whole
    total, rate = header
    count = -(-total // max(1, int(segment_seconds * rate)))
    if count <= 1:
        return whole
    bounds = [total * k // count for k in range(count + 1)]
    return [(path, lo, hi - lo) for lo, hi in zip(bounds[:-1], bounds[1:])]


def _to_float(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.dtype == np.int16:
        audio = audio.astype(np.float32) / 32768.0
    elif audio.dtype == np.int32:
        audio = audio.astype(np.float32) / 2147483648.0
    elif audio.dtype == np.uint8:
        audio = (audio.astype(np.float32) - 128.0) / 128.0
    elif audio.dtype == np.int64:
        audio = audio.astype(np.float32) / 32768.0  # TFDS default int64 holds int16 PCM
    else:
        audio = audio.astype(np.float32)
    if audio.ndim == 2:  # [samples, channels]
        audio = audio.mean(axis=-1)
    return audio.reshape(-1)


# Default TFDS splits for datasets without a plain 'train' / 'validation'.
_TFDS_DEFAULT_SPLITS = {
    "librispeech": {"train": "train_clean100+train_clean360+train_other500",
                    "eval": "dev_clean"},
}


class TfdsAudioSource:
    """A TFDS dataset (``tfds.data_source``) yielding float32 mono audio.

    The audio feature is the first ``tfds.features.Audio`` in the features dict
    (LibriSpeech: ``'speech'``, int16 at 16 kHz); integer PCM is scaled to
    [-1, 1] and resampled to ``sample_rate`` if the feature's rate differs.
    Items: ``{'audio', 'index'}`` (+ ``'error'`` on non-finite audio).
    """

    def __init__(self, name: str, split: str, sample_rate: int, data_dir: str | None = None,
                 audio_key: str | None = None, download: bool = False):
        try:
            import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
        except ImportError as e:
            raise ImportError(
                f"data source 'tfds:{name}' needs tensorflow_datasets: "
                "pip install audiolm_jax[tfds]") from e
        self.name = name
        self.split = split
        self.sample_rate = int(sample_rate)
        try:
            self._ds = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
        except Exception as e:  # pylint: disable=broad-except
            raise ValueError(
                f"cannot open TFDS dataset {name!r} split {split!r} (data_dir={data_dir!r}): {e}. "
                f"Prepare it first (e.g. `tfds build {name.split(':')[0]}`) or pass "
                "tfds_download=True.") from e
        features = self._ds.dataset_info.features
        if audio_key is None:
            audio_keys = [k for k, f in features.items() if isinstance(f, tfds.features.Audio)]
            if not audio_keys:
                raise ValueError(f"TFDS dataset {name!r} has no Audio feature; features: "
                                 f"{list(features.keys())}")
            audio_key = audio_keys[0]
        self.audio_key = audio_key
        feature = features[audio_key]
        rate = getattr(feature, "sample_rate", None)
        if not rate:
            logging.warning("TFDS %s: audio feature %r has no sample_rate; assuming %d Hz",
                            name, audio_key, self.sample_rate)
            rate = self.sample_rate
        self.source_rate = int(rate)

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        record = self._ds[index]
        audio = _to_float(record[self.audio_key])
        if audio.size and not np.all(np.isfinite(audio)):
            return {"audio": np.zeros((0,), np.float32), "index": index,
                    "path": f"tfds:{self.name}:{self.split}[{index}]",
                    "error": "non-finite samples"}
        if self.source_rate != self.sample_rate and audio.size:
            import librosa  # pylint: disable=g-import-not-at-top

            audio = librosa.resample(audio, orig_sr=self.source_rate, target_sr=self.sample_rate)
        return {"audio": np.ascontiguousarray(audio, np.float32), "index": index}

    def __repr__(self) -> str:
        return (f"TfdsAudioSource({self.name!r}, split={self.split!r}, "
                f"sample_rate={self.sample_rate}, items={len(self)})")


def _default_tfds_split(name: str, split: str, data_dir: str | None) -> str:
    base = name.split("/")[0].split(":")[0]
    if base in _TFDS_DEFAULT_SPLITS:
        return _TFDS_DEFAULT_SPLITS[base][split]
    try:
        import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

        available = list(tfds.builder(name, data_dir=data_dir).info.splits.keys())
    except Exception:  # pylint: disable=broad-except
        available = []
    if split == "train":
        if not available or "train" in available:
            return "train"
        trains = sorted(s for s in available if s.startswith("train"))
        return "+".join(trains) if trains else available[0]
    for cand in ("validation", "valid", "dev", "dev_clean", "test"):
        if cand in available:
            return cand
    return "validation" if not available else available[-1]


def _parse_tfds_spec(spec: str) -> tuple[str, str | None]:
    rest = spec[len("tfds:"):]
    if not rest:
        raise ValueError(f"bad data spec {spec!r}: expected 'tfds:NAME' or 'tfds:NAME:SPLIT'")
    if ":" in rest:
        name, last = rest.rsplit(":", 1)
        if re.fullmatch(r"\d+(\.\d+)*", last):  # 'name:1.2.0' is a version, not a split
            return rest, None
        return name, last
    return rest, None


def make_source(spec: str, sample_rate: int, split: str = "train", seed: int = 0, *,
                data_dir: str | None = None, tfds_download: bool = False,
                **synthetic_kwargs):
    """Builds a random-access audio source from a spec string.

    Args:
      spec: ``'synthetic'``, a folder path, ``'tfds:NAME'`` or ``'tfds:NAME:SPLIT'``.
      sample_rate: rate of the returned audio.
      split: ``'train'`` or ``'eval'``.
      seed: corpus seed (synthetic only; shuffling is the pipeline's job).
      data_dir: TFDS data_dir (tfds only; default: TFDS's own default).
      tfds_download: let TFDS download and prepare a missing dataset (off by
        default: preparing LibriSpeech is a large one-off job).
      **synthetic_kwargs: ``num_utterances``, ``utterance_seconds``,
        ``num_voices`` for the synthetic corpus; ignored for other specs.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    spec = os.fspath(spec)
    if spec == "synthetic":
        return SyntheticSpeechCorpus(sample_rate=sample_rate, seed=seed, split=split,
                                     **synthetic_kwargs)
    if spec.startswith("tfds:"):
        name, tfds_split = _parse_tfds_spec(spec)
        if tfds_split is None:
            tfds_split = _default_tfds_split(name, split, data_dir)
        return TfdsAudioSource(name, tfds_split, sample_rate, data_dir=data_dir,
                               download=tfds_download)
    folder = os.path.expanduser(spec)
    if not os.path.isdir(folder):
        raise ValueError(
            f"data spec {spec!r} is neither 'synthetic', 'tfds:NAME[:SPLIT]' nor an existing "
            f"folder: audio folder {folder!r} does not exist")
    names = [split] if split == "train" else list(_EVAL_DIRS)
    for sub in names:
        candidate = os.path.join(folder, sub)
        if os.path.isdir(candidate):
            return FolderSource(candidate, sample_rate)
    if split == "eval":
        logging.info("Folder %s has no eval/valid/dev/test sub-folder; evaluating on all of it.",
                     folder)
    return FolderSource(folder, sample_rate)


def ensure_readable(source, max_probe: int | None = 64) -> dict[str, Any]:
    """Probes up to ``max_probe`` items (evenly spaced; ``None`` = all).

    Returns ``{'probed': int, 'ok': int, 'bad': int, 'bad_files': [str]}``.

    Raises:
      ValueError: if none of the probed items is readable ("no readable audio
        in <folder>"), naming some of the failures.
    """
    n = len(source)
    if n == 0:
        raise ValueError(f"no readable audio in {_describe(source)}: the source is empty")
    k = n if max_probe is None else max(1, min(int(max_probe), n))
    indices = sorted(set(np.linspace(0, n - 1, k).round().astype(int).tolist()))
    ok, bad_files, reasons = 0, [], []
    for i in indices:
        item = source[i]
        if item.get("error") or np.size(item["audio"]) == 0:
            bad_files.append(str(item.get("path", f"item {i}")))
            reasons.append(item.get("error") or "empty audio")
        else:
            ok += 1
    if ok == 0:
        examples = "; ".join(reasons[:3])
        raise ValueError(
            f"no readable audio in {_describe(source)}: all {len(indices)} probed files failed "
            f"to decode (e.g. {examples})")
    return {"probed": len(indices), "ok": ok, "bad": len(bad_files), "bad_files": bad_files}


def _describe(source) -> str:
    if isinstance(source, FolderSource):
        return repr(source.folder)
    return repr(source)
