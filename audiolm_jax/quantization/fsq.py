"""Finite scalar quantization (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made
Simple"), single level and residual, Flax Linen.

One level, for ``levels = (L_1, ..., L_d)``::

    x [..., dim] --in_proj (Dense dim -> d)--> z
      --bound: tanh(z + shift) * half_l - offset--> each dim in (-L/2, L/2)
      --round (straight-through when training)--> L integers per dim
      --/ (L // 2)--> zhat in [-1, 1]
      --out_proj (Dense d -> dim)--> quantized [..., dim]

with ``half_l = (L - 1) * (1 - eps) / 2``, ``offset = 0.5`` for even L (else 0) and
``shift = atanh(offset / half_l)``, so an even L gets the integers ``-L/2 .. L/2 - 1`` and an odd
L ``-(L-1)/2 .. (L-1)/2``. The code of a vector is the mixed-radix number of its per-dim
integers shifted to ``0 .. L_i - 1`` (dim 0 the least significant digit), so a level has
``prod(levels)`` codes. There is no codebook, no EMA statistics and no commitment loss: the
projections learn from the reconstruction gradient alone (``commit_loss`` is reported as 0).

Params of a level: ``in_proj`` {kernel [dim, d], bias [d]}, ``out_proj`` {kernel [d, dim],
bias [dim]}. :class:`ResidualFSQ` stacks levels with :class:`~audiolm_jax.quantization.rvq.
ResidualVQ`'s machinery (detached residuals, quantizer dropout, bypass); its levels are
``levels_{l}`` as there.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from audiolm_jax.quantization.base import QuantizerConfig, invalid, usage_perplexity
from audiolm_jax.quantization.rvq import ResidualVQ

Array = jax.Array

# Keeps tanh's range just inside the outermost rounding boundaries (the paper's value).
BOUND_EPS = 1e-3


# ---------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------


def _levels(levels: Sequence[int]) -> np.ndarray:
    return np.asarray(tuple(levels), np.int64)


def bound(z: Array, levels: Sequence[int]) -> Array:
    """Squashes z [..., d] so that rounding dim i gives exactly ``levels[i]`` integers."""
    L = _levels(levels).astype(np.float64)
    half_l = (L - 1.0) * (1.0 - BOUND_EPS) / 2.0
    offset = np.where(L % 2 == 0, 0.5, 0.0)
    shift = np.arctanh(offset / half_l)
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    return jnp.tanh(z + f32(shift)) * f32(half_l) - f32(offset)


def round_ste(z: Array) -> Array:
    """``round(z)`` forward, identity gradient (straight-through)."""
    return z + jax.lax.stop_gradient(jnp.round(z) - z)


def half_widths(levels: Sequence[int]) -> np.ndarray:
    """``L // 2`` per dim: rounded values divided by it lie in [-1, 1]."""
    return _levels(levels) // 2


def _basis(levels: Sequence[int]) -> np.ndarray:
    return np.concatenate([[1], np.cumprod(_levels(levels)[:-1])]).astype(np.int64)


def digits_to_codes(digits: Array, levels: Sequence[int]) -> Array:
    """Per-dim integers [..., d] in ``0 .. L_i - 1`` -> mixed-radix codes int32 [...]."""
    basis = jnp.asarray(_basis(levels), jnp.int32)
    return jnp.sum(digits.astype(jnp.int32) * basis, axis=-1).astype(jnp.int32)


def codes_to_digits(codes: Array, levels: Sequence[int]) -> Array:
    """Inverse of :func:`digits_to_codes`: int32 [...] -> int32 [..., d]."""
    basis = jnp.asarray(_basis(levels), jnp.int32)
    L = jnp.asarray(_levels(levels), jnp.int32)
    return (codes[..., None] // basis) % L


# ---------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------


class FiniteScalarQuantizer(nn.Module):
    """One FSQ level with the :class:`~audiolm_jax.quantization.vq.VectorQuantizer` contract.

    Attributes:
      levels: integers per projected dim (each >= 3; see :class:`FSQConfig`).
      dim: D, the input (and output) vector dimension.
    """

    levels: Tuple[int, ...]
    dim: int

    def setup(self):
        self.in_proj = nn.Dense(len(self.levels))
        self.out_proj = nn.Dense(self.dim)

    @property
    def codebook_size(self) -> int:
        return int(np.prod(self.levels))

    def _rounded(self, flat: Array, train: bool) -> Tuple[Array, Array]:
        """(rounded values [N, d] (straight-through if training), digits int32 [N, d])."""
        z = bound(self.in_proj(flat), self.levels)
        r = round_ste(z) if train else jnp.round(z)
        hw = jnp.asarray(half_widths(self.levels), jnp.float32)
        digits = (jnp.round(jax.lax.stop_gradient(z)) + hw).astype(jnp.int32)
        return r, digits

    def _dequantize(self, r: Array) -> Array:
        hw = jnp.asarray(half_widths(self.levels), jnp.float32)
        return self.out_proj(r / hw)

    # -- pure inference helpers ------------------------------------------------

    def quantize_codes(self, x: Array) -> Array:
        """Codes (int32 [...]) of x [..., D]."""
        _, digits = self._rounded(x.reshape(-1, self.dim).astype(jnp.float32), train=False)
        return digits_to_codes(digits, self.levels).reshape(x.shape[:-1])

    def lookup(self, codes: Array) -> Array:
        """Vectors (float32 [..., D]) of codes; negative codes -> zeros."""
        flat = codes.reshape(-1)
        digits = codes_to_digits(jnp.clip(flat, 0, self.codebook_size - 1), self.levels)
        hw = jnp.asarray(half_widths(self.levels), jnp.float32)
        vec = self._dequantize(digits.astype(jnp.float32) - hw)
        vec = jnp.where((flat >= 0)[:, None], vec, 0.0)
        return vec.reshape(codes.shape + (self.dim,))

    def get_codebook(self) -> Array:
        """Every code's vector, float32 [prod(levels), D]."""
        return self.lookup(jnp.arange(self.codebook_size, dtype=jnp.int32))

    # -- forward ---------------------------------------------------------------

    def __call__(self, x: Array, train: bool = False, mask: Optional[Array] = None,
                 init_codebooks: Optional[bool] = None) -> Dict[str, Any]:
        """Quantizes x [..., D]; returns the keys :class:`VectorQuantizer` returns.

        ``mask`` False entries get ``quantized = 0``, ``codes = -1`` and are left out of the
        batch metrics. ``init_codebooks`` is accepted for the common contract and ignored.
        """
        del init_codebooks
        if x.shape[-1] != self.dim:
            raise ValueError(f"expected last dim {self.dim}, got shape {x.shape}")
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.dim).astype(jnp.float32)
        if mask is None:
            valid = jnp.ones(flat.shape[:1], bool)
        else:
            valid = jnp.broadcast_to(mask, lead).reshape(-1).astype(bool)
        r, digits = self._rounded(flat, train)
        q = jnp.where(valid[:, None], self._dequantize(r), 0.0)
        codes = digits_to_codes(digits, self.levels)
        # Integer histogram: exact under any sharding, and no [N, K] one-hot for big K.
        counts = jnp.zeros((self.codebook_size,), jnp.int32).at[
            jnp.where(valid, codes, 0)].add(valid.astype(jnp.int32))
        result = {
            "quantized": q.reshape(x.shape).astype(x.dtype),
            "codes": jnp.where(valid, codes, -1).reshape(lead),
            "commit_loss": jnp.zeros((), jnp.float32),
            "codes_reset": jnp.zeros((), jnp.int32),
        }
        result.update(usage_perplexity(counts.astype(jnp.float32)))
        return result


class ResidualFSQ(ResidualVQ):
    """Residual stack of :class:`FiniteScalarQuantizer` levels.

    Same contract and options as :class:`ResidualVQ` (``codebook_size`` must be
    ``prod(fsq_levels)``; the EMA settings are unused). Levels learn by gradient: each level's
    straight-through output is summed undetached, so the encoder gets the reconstruction
    gradient through every level, and each level's projections learn from it.
    """

    learned_levels: ClassVar[bool] = True

    fsq_levels: Tuple[int, ...] = ()

    def _make_level(self) -> nn.Module:
        if int(np.prod(self.fsq_levels or (0,))) != self.codebook_size:
            raise ValueError(f"codebook_size {self.codebook_size} must be prod(fsq_levels) "
                             f"for fsq_levels={self.fsq_levels}")
        return FiniteScalarQuantizer(levels=tuple(self.fsq_levels), dim=self.inner_dim)


# ---------------------------------------------------------------------------
# Typed config and builder (registered in ``quantization/__init__.py``)
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FSQConfig(QuantizerConfig):
    """``kind='fsq'``: :class:`ResidualFSQ`, ``num_levels`` residual levels of
    ``fsq_levels``. (8, 5, 5, 5) is the paper's choice for about 2^10 codes."""

    has_stats: ClassVar[bool] = False

    fsq_levels: Tuple[int, ...] = (8, 5, 5, 5)

    def validate(self) -> None:
        super().validate()
        # L = 2 has no tanh bound: its shift atanh(0.5 / half_l) needs half_l > 0.5.
        if not self.fsq_levels or min(self.fsq_levels) < 3:
            raise invalid("fsq_levels", "a non-empty tuple of integers >= 3", self.fsq_levels)
        if math.prod(self.fsq_levels) > np.iinfo(np.int32).max:
            raise invalid("fsq_levels", "a tuple whose product fits in int32", self.fsq_levels)

    @property
    def codebook_size(self) -> int:
        return math.prod(self.fsq_levels)


def build_fsq(cfg: FSQConfig, latent_dim: int) -> ResidualFSQ:
    return ResidualFSQ(
        num_levels=cfg.num_levels, codebook_size=cfg.codebook_size, dim=int(latent_dim),
        codebook_dim=cfg.codebook_dim or int(latent_dim), dropout=cfg.dropout,
        dropout_mode=cfg.dropout_mode, no_quant_rate=cfg.no_quant_rate,
        fsq_levels=cfg.fsq_levels)
