"""Wires a codec config's ``data.*`` keys to the data package: training batches and eval clips."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np


def _source(config: Any, spec: str, split: str):
    from audiolm_jax.data import make_source

    d = config.data
    return make_source(spec, int(d.sample_rate), split=split, seed=int(config.train.seed),
                       num_utterances=int(d.get("synthetic_utterances", 512)),
                       utterance_seconds=float(d.get("synthetic_seconds", 4.0)))


def make_train_iterator(config: Any):
    """Per-process iterator of {'audio': [batch_size / processes, crop_length]} batches, plus
    'features' [batch, frames, teacher_dim] cropped with the audio when the config distills
    from precomputed teacher features."""
    from audiolm_jax.data import make_audio_iterator

    processes = jax.process_count()
    if config.train.batch_size % processes:
        raise ValueError(f"config key 'train.batch_size' ({config.train.batch_size}) must be "
                         f"divisible by the number of processes ({processes})")
    source = _source(config, config.data.source, "train")
    source, feature_hop = _with_teacher(config, source)
    if hasattr(source, "bad_files"):  # a folder: fail now, not after compiling, if unreadable
        from audiolm_jax.data import ensure_readable

        ensure_readable(source)
    return make_audio_iterator(
        source, crop_length=int(config.data.crop_length),
        batch_size=int(config.train.batch_size) // processes, seed=int(config.train.seed),
        shard_index=jax.process_index(), shard_count=processes, feature_hop=feature_hop,
        worker_processes=int(config.data.get("worker_processes", 0)))


def _with_teacher(config: Any, source):
    """(source, feature_hop): wraps a folder source with its precomputed teacher features, and
    checks before anything compiles that the configured teacher can run."""
    distill = config.get("distill", None)
    if distill is None or not distill.enabled:
        return source, None
    from audiolm_jax.codec import teachers

    if distill.teacher == "function":
        teachers.make_teacher(distill)
        teachers.check_teacher_files(distill)
        return source, None
    if not hasattr(source, "paths"):
        raise ValueError("config key 'distill.teacher': precomputed features need a folder "
                         f"'data.source', got {config.data.source!r}")
    from audiolm_jax.data.features import TeacherFeatureSource, features_path, load_features

    suffix = str(distill.features_suffix)
    present = [p for p in source.paths if os.path.exists(features_path(p, suffix))]
    if not present:
        raise ValueError(f"config key 'distill.features_suffix': no teacher features "
                         f"'*.{suffix}.npy' beside the audio files of {config.data.source!r}; "
                         "write them with `audiolm-jax precompute-teacher`")
    load_features(features_path(present[0], suffix), int(distill.teacher_dim))
    hop = int(round(float(config.data.sample_rate) / float(distill.feature_rate)))
    return TeacherFeatureSource(source, suffix, int(distill.teacher_dim)), hop


def eval_clips(config: Any) -> np.ndarray:
    """[num_eval, eval_seconds * rate] held-out clips for periodic reconstruction samples."""
    from audiolm_jax.data import iter_eval_batches

    d = config.data
    n = int(d.get("num_eval", 4))
    length = int(float(d.get("eval_seconds", 4.0)) * int(d.sample_rate))
    source = _source(config, d.get("eval_source", d.source), "eval")
    clips = [b["audio"] for b in iter_eval_batches(source, crop_length=length, batch_size=n,
                                                   max_items=n)]
    return np.concatenate(clips, axis=0)[:n] if clips else None
