"""A trained codec's config and inference weights, read from its workdir or export directory.

Below both users of a trained codec: :class:`audiolm_jax.codec.inference.LoadedCodec` (files)
and :class:`audiolm_jax.codec.mimi.streaming.MimiStreamer` (frame by frame).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from audiolm_jax.codec.task import CodecTask
from audiolm_jax.export import load_inference_weights
from audiolm_jax.quantization import STATS
from audiolm_jax.workdir import load_config


@dataclasses.dataclass(frozen=True)
class CodecWeights:
    config: ml_collections.ConfigDict
    params: Any
    vq_stats: Any
    step: int


def load_codec_weights(workdir: str, step: int | None = None) -> CodecWeights:
    """The latest (or given) checkpoint's ``params`` and ``vq_stats``, on one device."""
    config = load_config(workdir)
    # A training workdir or an export directory (audiolm_jax/export.py).
    weights, step = load_inference_weights(workdir, CodecTask(config), step, what="codec")
    # A quantizer without statistics (FSQ) has none; a flat export cannot hold an empty tree.
    return CodecWeights(config, weights["params"], weights.get(STATS, {}), step)
