"""Wires a codec config's ``data.*`` keys to the data package: training batches and eval clips."""

from __future__ import annotations

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
    """Per-process iterator of {'audio': [batch_size / processes, crop_length]} batches."""
    from audiolm_jax.data import make_audio_iterator

    processes = jax.process_count()
    if config.train.batch_size % processes:
        raise ValueError(f"config key 'train.batch_size' ({config.train.batch_size}) must be "
                         f"divisible by the number of processes ({processes})")
    source = _source(config, config.data.source, "train")
    if hasattr(source, "bad_files"):  # a folder: fail now, not after compiling, if unreadable
        from audiolm_jax.data import ensure_readable

        ensure_readable(source)
    return make_audio_iterator(
        source, crop_length=int(config.data.crop_length),
        batch_size=int(config.train.batch_size) // processes, seed=int(config.train.seed),
        shard_index=jax.process_index(), shard_count=processes)


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
