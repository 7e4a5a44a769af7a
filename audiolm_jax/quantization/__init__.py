"""EMA residual vector quantization (EnCodec / SoundStream / Mimi), Flax Linen.

Conventions shared by every quantizer here:

* Codebook statistics live in the variable collection ``'vq_stats'``; apply
  with ``mutable=['vq_stats']`` when ``train=True``.
* All training-time randomness uses the rng stream ``'vq'``.
* ``train=False`` is pure: no mutation, no rng.
"""

from __future__ import annotations

import math
from typing import Any, Union

from audiolm_jax.quantization.rvq import ResidualVQ, SplitResidualVQ
from audiolm_jax.quantization.vq import (
    VectorQuantizer,
    kmeans,
    laplace_smoothed_sizes,
    nearest_codes,
    sample_rows,
)

__all__ = [
    "VectorQuantizer",
    "ResidualVQ",
    "SplitResidualVQ",
    "make_quantizer",
    "bits_per_frame",
    "kmeans",
    "nearest_codes",
    "sample_rows",
    "laplace_smoothed_sizes",
]

_DEFAULTS = dict(
    kind="rvq", num_levels=8, num_semantic_levels=1, codebook_size=1024, codebook_dim=None,
    decay=0.99, epsilon=1e-5, kmeans_iters=50, dead_code_threshold=2.0,
    dead_code_mode="absolute", dead_code_interval=1, dropout=False, dropout_mode="batch",
    no_quant_rate=0.0,
)


def _get(cfg: Any, key: str) -> Any:
    default = _DEFAULTS[key]
    if hasattr(cfg, "get"):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def make_quantizer(qcfg: Any, latent_dim: int) -> Union[ResidualVQ, SplitResidualVQ]:
    """Builds a quantizer from a config (ConfigDict, dict or attribute object).

    Keys (missing ones fall back to defaults): ``kind`` ('rvq' | 'split_rvq'),
    ``num_levels`` (total; for split = semantic + acoustic),
    ``num_semantic_levels`` (split only), ``codebook_size``, ``codebook_dim``
    (0/None = latent_dim), ``decay``, ``epsilon``, ``kmeans_iters``,
    ``dead_code_threshold``, ``dead_code_mode``, ``dead_code_interval``,
    ``dropout``, ``dropout_mode``, ``no_quant_rate``.
    """
    kind = _get(qcfg, "kind")
    num_levels = int(_get(qcfg, "num_levels"))
    common = dict(
        codebook_size=int(_get(qcfg, "codebook_size")),
        dim=int(latent_dim),
        codebook_dim=int(_get(qcfg, "codebook_dim") or latent_dim),
        decay=float(_get(qcfg, "decay")),
        epsilon=float(_get(qcfg, "epsilon")),
        kmeans_iters=int(_get(qcfg, "kmeans_iters")),
        dead_code_threshold=float(_get(qcfg, "dead_code_threshold")),
        dead_code_mode=str(_get(qcfg, "dead_code_mode")),
        dead_code_interval=int(_get(qcfg, "dead_code_interval")),
        dropout=bool(_get(qcfg, "dropout")),
        dropout_mode=str(_get(qcfg, "dropout_mode")),
        no_quant_rate=float(_get(qcfg, "no_quant_rate")),
    )
    if kind == "rvq":
        return ResidualVQ(num_levels=num_levels, **common)
    if kind == "split_rvq":
        n_sem = int(_get(qcfg, "num_semantic_levels"))
        if not 0 <= n_sem <= num_levels:
            raise ValueError(f"num_semantic_levels={n_sem} must be in [0, num_levels={num_levels}]")
        return SplitResidualVQ(num_semantic_levels=n_sem, num_acoustic_levels=num_levels - n_sem,
                               **common)
    raise ValueError(f"unknown quantizer kind {kind!r} (expected 'rvq' or 'split_rvq')")


def bits_per_frame(num_levels: int, codebook_size: int) -> float:
    """Bits per latent frame: ``num_levels * log2(codebook_size)``."""
    return float(num_levels) * math.log2(int(codebook_size))
