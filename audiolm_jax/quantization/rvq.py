"""Residual vector quantization (EnCodec/SoundStream) and split RVQ (Mimi).

Gradient flow follows the audiocraft fix of EnCodec issue #25: inside the
level loop the residual is reduced by the *detached* quantized value of each
level, each level's commitment loss is taken against its own residual input,
and the final output is the straight-through ``z + stop_gradient(q_sum - z)``.
So the only gradient paths into the latent are the identity straight-through
and the per-level commitment terms.

Randomness (quantizer dropout, no-quantization bypass, k-means init and dead
code replacement) all comes from the single rng stream ``'vq'``; Flax folds
the module path into it, so each use gets an independent key.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Dict, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from audiolm_jax.quantization.base import RNG, QuantizerConfig, invalid, module_option
from audiolm_jax.quantization.vq import EMACodebookOptions, VectorQuantizer

Array = jax.Array

_LEVEL_METRICS = ("usage", "perplexity", "codes_reset", "commit_loss", "level_active")


class StackOptions(EMACodebookOptions):
    """Settings of a residual stack, on top of its levels' EMA settings (documented on
    :class:`ResidualVQ`); keyword-only."""

    codebook_dim: Optional[int] = module_option(None)
    dropout: bool = module_option(False)
    dropout_mode: str = module_option("batch")
    no_quant_rate: float = module_option(0.0)


def _mean_over_active(per_level: Array, active: Array) -> Array:
    """Average of per-level values over levels that saw at least one vector."""
    a = active.astype(jnp.float32)
    return jnp.sum(per_level * a) / jnp.maximum(jnp.sum(a), 1.0)


class ResidualVQ(StackOptions):
    """Residual stack of EMA vector quantizers.

    Attributes:
      num_levels: L, number of codebooks.
      codebook_size: K per level.
      dim: input latent dimension.
      codebook_dim: dimension the quantizers work in; None means ``dim``.
      decay, epsilon, kmeans_iters, dead_code_threshold, dead_code_mode,
        dead_code_interval: see :class:`VectorQuantizer`.
      dropout: quantizer dropout during training (number of active levels
        n ~ U{1..L}; levels >= n output zero, emit code -1 and do not update
        their statistics with the dropped samples).
      dropout_mode: 'batch' (one n per batch) or 'sample' (one n per sample).
      no_quant_rate: training-time probability, per sample, that quantization
        is skipped (Mimi): the sample's output is ``out_proj(in_proj(x))``, the
        input itself when there is no projection. The codebooks still see (and
        learn from) those samples.
      use_projection: whether to use bias-free linear in/out projections
        (dim -> codebook_dim -> dim); None = only when codebook_dim != dim.

    Variables: params ``in_proj``/``out_proj`` (when projecting) and, per level
    ``levels_{l}``, the ``'vq_stats'`` collection of :class:`VectorQuantizer`.

    A subclass can stack another level module (:class:`~audiolm_jax.quantization.fsq.
    ResidualFSQ`): it overrides :meth:`_make_level` and sets ``learned_levels`` when its levels
    are trained by gradient rather than by statistics. Such a level's output then enters the
    sum undetached (its own straight-through estimator carries the gradient), and the stack
    has no outer straight-through; the residual passed on is still detached.
    """

    learned_levels: ClassVar[bool] = False

    num_levels: int
    codebook_size: int
    dim: int
    use_projection: Optional[bool] = None

    @property
    def inner_dim(self) -> int:
        return int(self.codebook_dim or self.dim)

    @property
    def projects(self) -> bool:
        if self.use_projection is None:
            return self.inner_dim != self.dim
        return bool(self.use_projection)

    def setup(self):
        if self.dropout_mode not in ("batch", "sample"):
            raise ValueError(f"dropout_mode must be 'batch' or 'sample', got {self.dropout_mode!r}")
        if not self.projects and self.inner_dim != self.dim:
            raise ValueError("codebook_dim != dim requires use_projection")
        if self.projects:
            self.in_proj = nn.Dense(self.inner_dim, use_bias=False)
            self.out_proj = nn.Dense(self.dim, use_bias=False)
        self.levels = [self._make_level() for _ in range(self.num_levels)]

    def _make_level(self) -> nn.Module:
        """One level: quantizes [..., inner_dim] with the :class:`VectorQuantizer` contract
        (``__call__``, ``quantize_codes``, ``lookup``, ``get_codebook``)."""
        return VectorQuantizer(codebook_size=self.codebook_size, dim=self.inner_dim,
                               **self.ema_options())

    def _in(self, x: Array) -> Array:
        z = self.in_proj(x) if self.projects else x
        return z.astype(jnp.float32)

    def _out(self, q: Array) -> Array:
        return self.out_proj(q) if self.projects else q

    def _check_n(self, n_levels: Optional[int]) -> int:
        n = self.num_levels if n_levels is None else int(n_levels)
        if not 0 <= n <= self.num_levels:
            raise ValueError(f"n_levels must be in [0, {self.num_levels}], got {n_levels}")
        return n

    def get_codebooks(self) -> Array:
        """All codebooks, float32 [L, K, codebook_dim]."""
        return jnp.stack([vq.get_codebook() for vq in self.levels])

    def __call__(self, x: Array, train: bool = False, n_levels: Optional[int] = None,
                 mask: Optional[Array] = None,
                 init_codebooks: Optional[bool] = None,
                 bypass: Optional[Array] = None) -> Dict[str, Any]:
        """Quantizes x [B, T, dim].

        Args:
          x: [B, T, dim] latents.
          train: update codebook statistics (apply with ``mutable=['vq_stats']``
            and rng ``'vq'``); enables dropout / bypass and straight-through.
          n_levels: static number of levels to use (overrides random dropout).
          mask: optional bool [B, T] of valid (non-padding) frames.
          init_codebooks: None: each level runs k-means once, under a cond; True: run
            k-means on this batch now, every level, with dropout and bypass off (a trainer's
            first-batch init step); False: never run k-means (the trainer's hot step).
          bypass: optional bool [B], training only: samples that skip quantization,
            decided by the caller (a split quantizer shares one draw between its
            branches); when given, ``no_quant_rate`` is not drawn here.
        Returns:
          dict:
            ``quantized`` [B, T, dim] (x.dtype);
            ``codes`` int32 [B, T, L], -1 for inactive levels;
            ``commit_loss`` scalar: mean over active levels of each level's
              commitment MSE (per latent element, in codebook space);
            ``metrics``: per-level float arrays [L] ``usage``, ``perplexity``,
              ``codes_reset``, ``commit_loss``, ``level_active`` (1 if the level
              saw any vector), and scalar ``active_levels`` (mean number of
              active levels per sample) and ``bypass_frac`` (fraction of
              samples that skipped quantization).
        """
        B, T, _ = x.shape
        L = self.num_levels
        n_static = self._check_n(n_levels)
        updating = train and not self.is_initializing()
        if init_codebooks:
            n_levels, n_static = None, L  # every level initialises; no dropout
        z = self._in(x)

        # One uniform draw serves both dropout (row 0) and bypass (row 1).
        u = None
        draw_bypass = bypass is None and self.no_quant_rate > 0
        if updating and not init_codebooks and (
                (self.dropout and n_levels is None) or draw_bypass):
            u = jax.random.uniform(self.make_rng(RNG), (2, B))

        # active[b, l]: level l is used for sample b.
        level_ids = jnp.arange(L)[None, :]
        if u is not None and self.dropout and n_levels is None:
            u_n = u[0, :1] if self.dropout_mode == "batch" else u[0]
            n = jnp.minimum(1 + jnp.floor(u_n * L).astype(jnp.int32), L)  # U{1..L}
            active = level_ids < n[:, None]
        else:
            active = level_ids < n_static
        active = jnp.broadcast_to(active, (B, L))
        frames = jnp.ones((B, T), bool) if mask is None else mask.astype(bool)

        residual = z
        q_sum = jnp.zeros_like(z)
        codes, per_level = [], {k: [] for k in _LEVEL_METRICS}
        for l, vq in enumerate(self.levels):
            if l >= n_static and not self.is_initializing():
                # Statically unused level: skip the work entirely.
                codes.append(jnp.full((B, T), -1, jnp.int32))
                for k in _LEVEL_METRICS:
                    per_level[k].append(jnp.zeros((), jnp.float32))
                continue
            m = jnp.logical_and(frames, active[:, l][:, None])
            out = vq(residual, train=train, mask=m, init_codebooks=init_codebooks)
            # Detached: later levels and their commit losses never backprop
            # through this level's quantized value (audiocraft fix, issue #25).
            q_level = out["quantized"].astype(jnp.float32)
            q_l = jax.lax.stop_gradient(q_level)
            residual = residual - q_l
            q_sum = q_sum + (q_level if self.learned_levels else q_l)
            codes.append(out["codes"])
            per_level["usage"].append(out["usage"])
            per_level["perplexity"].append(out["perplexity"])
            per_level["codes_reset"].append(out["codes_reset"].astype(jnp.float32))
            per_level["commit_loss"].append(out["commit_loss"])
            per_level["level_active"].append(jnp.any(m).astype(jnp.float32))

        if self.learned_levels or not train:
            q = q_sum
        else:
            q = z + jax.lax.stop_gradient(q_sum - z)
        if not (updating and not init_codebooks):
            bypass = jnp.zeros((B,), bool)
        elif bypass is None:
            bypass = (u[1] < self.no_quant_rate) if draw_bypass else jnp.zeros((B,), bool)
        # Skipping happens in codebook space, between the projections, as in Mimi's released
        # quantizer: the projections then also learn from the unquantized samples.
        q = jnp.where(bypass[:, None, None], z, q)
        quantized = self._out(q).astype(x.dtype)

        metrics = {k: jnp.stack(v) for k, v in per_level.items()}
        metrics["active_levels"] = jnp.mean(jnp.sum(active, axis=-1).astype(jnp.float32))
        metrics["bypass_frac"] = jnp.mean(bypass.astype(jnp.float32))
        return {
            "quantized": quantized,
            "codes": jnp.stack(codes, axis=-1),
            "commit_loss": _mean_over_active(metrics["commit_loss"], metrics["level_active"]),
            "metrics": metrics,
        }

    def encode(self, x: Array, n_levels: Optional[int] = None) -> Array:
        """Greedy residual codes int32 [B, T, n] (n = n_levels or L). Pure."""
        n = self._check_n(n_levels)
        residual = self._in(x)
        codes = []
        for vq in self.levels[:n]:
            c = vq.quantize_codes(residual)
            residual = residual - vq.lookup(c)
            codes.append(c)
        if not codes:
            return jnp.zeros(x.shape[:-1] + (0,), jnp.int32)
        return jnp.stack(codes, axis=-1)

    def decode(self, codes: Array) -> Array:
        """Latents [B, T, dim] from codes [B, T, n], n <= L (-1 = skip). Pure."""
        n = codes.shape[-1]
        if n > self.num_levels:
            raise ValueError(f"got {n} levels of codes, quantizer has {self.num_levels}")
        q = jnp.zeros(codes.shape[:-1] + (self.inner_dim,), jnp.float32)
        for l in range(n):
            q = q + self.levels[l].lookup(codes[..., l])
        return self._out(q)


class SplitResidualVQ(StackOptions):
    """Mimi-style split RVQ: a semantic RVQ and an acoustic RVQ in parallel.

    Both quantize the *same* input latent, each through its own bias-free
    in/out projection; their outputs are summed. Quantizer dropout applies to
    the acoustic RVQ only. The no-quantization bypass is one draw per sample,
    shared by both branches, so a bypassed sample skips quantization entirely;
    each branch then outputs ``out_proj(in_proj(x))`` (Mimi's released quantizer
    skips between the projections too, but draws per branch).
    Codes are concatenated semantic-first: [B, T, S + A].
    """

    num_acoustic_levels: int
    codebook_size: int
    dim: int
    num_semantic_levels: int = 1

    @property
    def num_levels(self) -> int:
        return self.num_semantic_levels + self.num_acoustic_levels

    def _rvq(self, levels: int, dropout: bool, name: str) -> ResidualVQ:
        return ResidualVQ(
            num_levels=levels, codebook_size=self.codebook_size, dim=self.dim,
            codebook_dim=self.codebook_dim, dropout=dropout, dropout_mode=self.dropout_mode,
            no_quant_rate=0.0, use_projection=True, name=name, **self.ema_options())

    def setup(self):
        if self.num_semantic_levels < 0 or self.num_acoustic_levels < 0:
            raise ValueError("level counts must be >= 0")
        if self.num_semantic_levels > 0:
            self.semantic = self._rvq(self.num_semantic_levels, False, "semantic")
        if self.num_acoustic_levels > 0:
            self.acoustic = self._rvq(self.num_acoustic_levels, self.dropout, "acoustic")

    def _split_n(self, n_levels: Optional[int]):
        if n_levels is None:
            return None, None
        n = int(n_levels)
        if not 0 <= n <= self.num_levels:
            raise ValueError(f"n_levels must be in [0, {self.num_levels}], got {n_levels}")
        n_sem = min(n, self.num_semantic_levels)
        return n_sem, n - n_sem

    def __call__(self, x: Array, train: bool = False, n_levels: Optional[int] = None,
                 mask: Optional[Array] = None,
                 init_codebooks: Optional[bool] = None) -> Dict[str, Any]:
        """Same contract as :meth:`ResidualVQ.__call__` (levels semantic-first),
        plus ``semantic_quantized`` [B, T, dim]: the semantic branch output, the
        projected unquantized latent for bypassed samples (what semantic distillation
        trains against a self-supervised teacher)."""
        n_sem, n_ac = self._split_n(n_levels)
        B = x.shape[0]
        bypass = jnp.zeros((B,), bool)
        if train and not self.is_initializing() and self.no_quant_rate > 0 and not init_codebooks:
            bypass = jax.random.uniform(self.make_rng(RNG), (B,)) < self.no_quant_rate
        parts = []
        if self.num_semantic_levels > 0:
            parts.append(self.semantic(x, train=train, n_levels=n_sem, mask=mask,
                                       init_codebooks=init_codebooks, bypass=bypass))
        if self.num_acoustic_levels > 0:
            parts.append(self.acoustic(x, train=train, n_levels=n_ac, mask=mask,
                                       init_codebooks=init_codebooks, bypass=bypass))

        quantized = sum(p["quantized"] for p in parts)
        metrics = {k: jnp.concatenate([p["metrics"][k] for p in parts]) for k in _LEVEL_METRICS}
        metrics["active_levels"] = sum(p["metrics"]["active_levels"] for p in parts)
        metrics["bypass_frac"] = jnp.mean(bypass.astype(jnp.float32))

        sem_q = (parts[0]["quantized"] if self.num_semantic_levels > 0
                 else jnp.zeros_like(x))
        return {
            "quantized": quantized,
            "semantic_quantized": sem_q,
            "codes": jnp.concatenate([p["codes"] for p in parts], axis=-1),
            "commit_loss": _mean_over_active(metrics["commit_loss"], metrics["level_active"]),
            "metrics": metrics,
        }

    def encode(self, x: Array, n_levels: Optional[int] = None) -> Array:
        """Codes int32 [B, T, n], semantic levels first. Pure."""
        n_sem, n_ac = self._split_n(n_levels)
        codes = []
        if self.num_semantic_levels > 0:
            codes.append(self.semantic.encode(x, n_levels=n_sem))
        if self.num_acoustic_levels > 0:
            codes.append(self.acoustic.encode(x, n_levels=n_ac))
        return jnp.concatenate(codes, axis=-1)

    def decode(self, codes: Array) -> Array:
        """Latents [B, T, dim] from codes [B, T, n] (n <= S + A). Pure."""
        S = self.num_semantic_levels
        if codes.shape[-1] > self.num_levels:
            raise ValueError(f"got {codes.shape[-1]} levels of codes, quantizer has {self.num_levels}")
        out = 0.0
        if S > 0:
            out = out + self.semantic.decode(codes[..., :S])
        if self.num_acoustic_levels > 0:
            out = out + self.acoustic.decode(codes[..., S:])
        return out


# ---------------------------------------------------------------------------
# Typed configs and builders (registered in ``quantization/__init__.py``)
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RVQConfig(QuantizerConfig):
    """``kind='rvq'``: :class:`ResidualVQ` of EMA vector quantizers (fields: see there and
    :class:`~audiolm_jax.quantization.vq.VectorQuantizer`)."""

    has_stats: ClassVar[bool] = True

    codebook_size: int = 1024
    decay: float = 0.99
    epsilon: float = 1e-5
    kmeans_iters: int = 50
    dead_code_threshold: float = 2.0
    dead_code_mode: str = "absolute"
    dead_code_interval: int = 1

    def validate(self) -> None:
        super().validate()
        if self.codebook_size < 2:
            raise invalid("codebook_size", ">= 2", self.codebook_size)
        if not 0.0 <= self.decay <= 1.0:
            raise invalid("decay", "in [0, 1]", self.decay)
        if not self.epsilon > 0.0:
            raise invalid("epsilon", "> 0", self.epsilon)
        if self.kmeans_iters < 0:
            raise invalid("kmeans_iters", ">= 0", self.kmeans_iters)
        if self.dead_code_mode not in ("absolute", "relative"):
            raise invalid("dead_code_mode", "one of ['absolute', 'relative']", self.dead_code_mode)
        if self.dead_code_interval < 1:
            raise invalid("dead_code_interval", ">= 1", self.dead_code_interval)

    def vq_kwargs(self, latent_dim: int) -> Dict[str, Any]:
        return dict(
            codebook_size=self.codebook_size, dim=int(latent_dim),
            codebook_dim=self.codebook_dim or int(latent_dim), decay=self.decay,
            epsilon=self.epsilon, kmeans_iters=self.kmeans_iters,
            dead_code_threshold=self.dead_code_threshold, dead_code_mode=self.dead_code_mode,
            dead_code_interval=self.dead_code_interval, dropout=self.dropout,
            dropout_mode=self.dropout_mode, no_quant_rate=self.no_quant_rate)


@dataclasses.dataclass(frozen=True)
class SplitRVQConfig(RVQConfig):
    """``kind='split_rvq'``: :class:`SplitResidualVQ` (Mimi); ``num_levels`` counts both
    branches, ``num_semantic_levels`` of them semantic."""

    num_semantic_levels: int = 1

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.num_semantic_levels < self.num_levels:
            raise invalid("num_semantic_levels",
                          f"in [1, quantizer.num_levels - 1 = {self.num_levels - 1}]",
                          self.num_semantic_levels)


def build_rvq(cfg: RVQConfig, latent_dim: int) -> ResidualVQ:
    return ResidualVQ(num_levels=cfg.num_levels, **cfg.vq_kwargs(latent_dim))


def build_split_rvq(cfg: SplitRVQConfig, latent_dim: int) -> SplitResidualVQ:
    return SplitResidualVQ(num_semantic_levels=cfg.num_semantic_levels,
                           num_acoustic_levels=cfg.num_levels - cfg.num_semantic_levels,
                           **cfg.vq_kwargs(latent_dim))
