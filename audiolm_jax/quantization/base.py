"""What every quantizer shares: names, the typed config base, batch code metrics.

The bottom of ``quantization/``: it imports nothing else of the package.

* ``STATS``: the variable collection that holds EMA codebook statistics. A quantizer whose
  config says ``has_stats`` keeps them there; callers apply it with ``mutable=[STATS]`` when
  training and store the collection beside the params (the train states' ``vq_stats`` field).
* ``RNG``: the rng stream of every training-time random draw (dropout, bypass, k-means init,
  dead-code resets).
* :class:`QuantizerConfig`: one frozen dataclass per quantizer kind, built from an experiment
  config's ``quantizer`` section; the fields every kind has, and their defaults, are here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Dict

import jax
import jax.numpy as jnp

from audiolm_jax.typed_config import SectionConfig, setting_error

Array = jax.Array

STATS = "vq_stats"
RNG = "vq"


def module_option(default: Any) -> Any:
    """A keyword-only module field: option bases declare these so the module that inherits
    them can still add fields without defaults."""
    return dataclasses.field(default=default, kw_only=True)


def bits_per_frame(num_levels: int, codebook_size: int) -> float:
    """Bits per latent frame: ``num_levels * log2(codebook_size)``."""
    return float(num_levels) * math.log2(int(codebook_size))


def usage_perplexity(counts: Array) -> Dict[str, Array]:
    """Batch ``usage`` (fraction of the K codes used) and ``perplexity`` (exp entropy) of a
    code histogram ``counts`` [K] (float32)."""
    K = counts.shape[0]
    total = jnp.sum(counts)
    p = counts / jnp.maximum(total, 1e-12)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    return {
        "usage": jnp.sum(counts > 0).astype(jnp.float32) / K,
        "perplexity": jnp.where(total > 0, jnp.exp(entropy), 0.0),
    }


# ---------------------------------------------------------------------------
# Typed configs
# ---------------------------------------------------------------------------


def invalid(key: str, requirement: str, value: Any) -> ValueError:
    """The error of a bad setting; the message starts with the key's dotted name."""
    return setting_error("quantizer", key, requirement, value)


@dataclasses.dataclass(frozen=True)
class QuantizerConfig(SectionConfig):
    """Settings every quantizer kind has. A kind subclasses this, adds its fields with their
    defaults, declares ``has_stats`` and extends :meth:`validate`; it must also provide
    ``codebook_size`` (codes per level), as a field or a property.

    Attributes:
      num_levels: residual levels (for ``split_rvq``: semantic + acoustic).
      codebook_dim: the dimension the levels work in, reached through bias-free projections;
        0 = the latent dimension (no projection).
      dropout: quantizer dropout while training (a random number of leading levels is used).
      dropout_mode: 'batch' (one draw per batch) or 'sample' (one per sample).
      no_quant_rate: training-time probability, per sample, of skipping quantization.
    """

    # Whether the built quantizer keeps EMA statistics in the STATS collection (and so wants
    # ``mutable=[STATS]`` in training and a k-means init on the first batch).
    has_stats: ClassVar[bool] = False
    SECTION = "quantizer"
    SETTING = "quantizer"

    num_levels: int = 8
    codebook_dim: int = 0
    dropout: bool = False
    dropout_mode: str = "batch"
    no_quant_rate: float = 0.0

    def __post_init__(self):
        if self.codebook_dim is None:  # older configs wrote None for "the latent dimension"
            object.__setattr__(self, "codebook_dim", 0)
        super().__post_init__()

    def validate(self) -> None:
        """Raises ValueError naming the first bad key."""
        if self.num_levels < 1:
            raise invalid("num_levels", ">= 1", self.num_levels)
        if self.codebook_dim < 0:
            raise invalid("codebook_dim", ">= 0 (0 = the latent dimension)", self.codebook_dim)
        if self.dropout_mode not in ("batch", "sample"):
            raise invalid("dropout_mode", "one of ['batch', 'sample']", self.dropout_mode)
        if not 0.0 <= self.no_quant_rate <= 1.0:
            raise invalid("no_quant_rate", "in [0, 1]", self.no_quant_rate)

    @property
    def bits_per_frame(self) -> float:
        """Bits per latent frame with every level: ``num_levels * log2(codebook_size)``."""
        return bits_per_frame(self.num_levels, self.codebook_size)
