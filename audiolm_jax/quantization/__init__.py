"""Quantizers for latent sequences, Flax Linen: EMA residual vector quantization (EnCodec /
SoundStream / Mimi) and finite scalar quantization.

Conventions shared by every quantizer here:

* A kind is a typed config (``base.QuantizerConfig``) and a module builder, registered below;
  ``make_quantizer(section, latent_dim)`` builds the module an experiment config's
  ``quantizer`` section names (see ``registry.py`` for the keys policy).
* A quantizer whose config says ``has_stats`` keeps its codebook statistics in the variable
  collection ``STATS`` (``'vq_stats'``); apply it with ``mutable=[STATS]`` when
  ``train=True``. FSQ has no statistics.
* All training-time randomness uses the rng stream ``RNG`` (``'vq'``).
* ``train=False`` is pure: no mutation, no rng.
* Modules take latents [B, T, dim] and return ``quantized``, ``codes`` [B, T, levels],
  ``commit_loss`` and per-level ``metrics``; ``encode`` / ``decode`` are pure.
"""

from __future__ import annotations

from audiolm_jax.quantization.base import RNG, STATS, QuantizerConfig, bits_per_frame
from audiolm_jax.quantization.fsq import FiniteScalarQuantizer, FSQConfig, ResidualFSQ, build_fsq
from audiolm_jax.quantization.registry import (
    make_quantizer,
    quantizer_config,
    quantizer_kinds,
    quantizer_section,
    quantizer_settings,
    register_quantizer,
)
from audiolm_jax.quantization.rvq import (
    ResidualVQ,
    RVQConfig,
    SplitResidualVQ,
    SplitRVQConfig,
    build_rvq,
    build_split_rvq,
)
from audiolm_jax.quantization.vq import (
    VectorQuantizer,
    kmeans,
    laplace_smoothed_sizes,
    nearest_codes,
    sample_rows,
)

__all__ = [
    "STATS",
    "RNG",
    "QuantizerConfig",
    "RVQConfig",
    "SplitRVQConfig",
    "FSQConfig",
    "VectorQuantizer",
    "ResidualVQ",
    "SplitResidualVQ",
    "FiniteScalarQuantizer",
    "ResidualFSQ",
    "register_quantizer",
    "quantizer_kinds",
    "quantizer_config",
    "quantizer_settings",
    "quantizer_section",
    "make_quantizer",
    "bits_per_frame",
    "kmeans",
    "nearest_codes",
    "sample_rows",
    "laplace_smoothed_sizes",
]

register_quantizer("rvq", RVQConfig, build_rvq)
register_quantizer("split_rvq", SplitRVQConfig, build_split_rvq)
register_quantizer("fsq", FSQConfig, build_fsq)
