"""Teacher features stored beside audio files, for semantic distillation.

Convention: ``speech/utt1.wav`` has its features in ``speech/utt1.<suffix>.npy``, a float array
``[frames, dim]`` at a fixed frame rate that starts at the file's first sample (frame ``j``
covers samples ``[j * hop, (j + 1) * hop)``, ``hop = sample_rate / feature_rate``).
``audiolm-jax precompute-teacher`` writes them.

A missing or malformed feature file is treated like a malformed audio file: the item carries an
``error``, is skipped by the pipeline and counted, with one warning naming the file.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np
from absl import logging

from audiolm_jax.data.sources import BadFileLog

__all__ = ["TeacherFeatureSource", "features_path", "load_features"]


def features_path(audio_path: str, suffix: str) -> str:
    """``dir/utt.wav`` -> ``dir/utt.<suffix>.npy``."""
    return f"{os.path.splitext(audio_path)[0]}.{suffix}.npy"


def load_features(path: str, dim: int | None = None) -> np.ndarray:
    """float32 ``[frames, dim]`` from ``path``; ValueError naming the file if it is unusable."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"missing teacher features file {path!r} "
                                "(write it with `audiolm-jax precompute-teacher`)")
    try:
        feats = np.load(path, allow_pickle=False)
    except Exception as e:  # pylint: disable=broad-except
        raise ValueError(f"cannot read teacher features file {path!r}: {e}") from None
    if feats.ndim != 2:
        raise ValueError(f"teacher features file {path!r} has shape {feats.shape}, "
                         "expected [frames, dim]")
    if dim is not None and feats.shape[1] != dim:
        raise ValueError(f"teacher features file {path!r} has dim {feats.shape[1]}, but config "
                         f"key 'distill.teacher_dim' is {dim}")
    if not np.all(np.isfinite(feats)):
        raise ValueError(f"teacher features file {path!r} holds non-finite values")
    return np.asarray(feats, np.float32)


class TeacherFeatureSource(BadFileLog):
    """A folder source whose items also carry ``'features'`` [frames, dim] from the file beside
    each audio file. Items whose features are missing or malformed get an ``'error'``."""

    def __init__(self, source, suffix: str, dim: int):
        if not hasattr(source, "paths"):
            raise ValueError(f"precomputed teacher features need a folder of audio files, got "
                             f"{source!r}")
        if any(frames is not None for _, _, frames in getattr(source, "segments", ())):
            # Stored features start at their file's first sample; a long file's segments start
            # mid-file, so read such files whole here (costs memory on very long files).
            source.segments = [(path, 0, None) for path in source.paths]
        self.source = source
        self.suffix = suffix
        self.dim = int(dim)
        self.paths = source.paths
        self.bad_files: dict[str, str] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.source[index]
        if item.get("error"):
            return item
        path = features_path(item["path"], self.suffix)
        try:
            item["features"] = load_features(path, self.dim)
        except (OSError, ValueError) as e:
            self._note_bad(path, str(e))
            return {**item, "audio": np.zeros((0,), np.float32), "error": str(e)}
        return item

    def _warn_bad(self, path: str, reason: str) -> None:
        logging.warning("Skipping audio file without usable teacher features: %s", reason)

    def __repr__(self) -> str:
        return f"TeacherFeatureSource({self.source!r}, suffix={self.suffix!r}, dim={self.dim})"
