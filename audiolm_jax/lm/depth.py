"""Moshi's RQ-Transformer ("depth transformer") LM: a temporal transformer over frames and a
small depth transformer over the levels within a frame (Flax Linen).

Tokens use the depth layout (:class:`~audiolm_jax.lm.patterns.DepthPattern`, optionally inside
a two-stream :class:`~audiolm_jax.lm.patterns.MultiStreamPattern`): ``[B, R, T]``, one column
per step, R rows = every level of every stream. Predicting step t's column::

    temporal:  h[t-1] = Transformer(sum_r emb_r(token[r, s]) for s < t)      [B, T, W]
               (the existing GPT Transformer with R per-level input tables and no LM head)
    depth:     x[k]   = proj_k(h[t-1]) + (start if k == 0 else emb'_k(token[k-1, t]))
               y      = causal transformer over x[0..R-1]                       [.., R, Wd]
               logits[k, t] = head_k(LayerNorm(y[k]))

``proj_k``, ``emb'_k`` and ``head_k`` are separate weights per level, as Moshi has them. The
depth stack's blocks are shared across levels (Moshi can also give each level its own block
weights, ``depformer_weights_per_step``; not done here). It has no position embedding: the
per-level projections and embeddings already tell it which level it is at.

Training is teacher forced: ``__call__(inputs, targets)`` gets the inputs (steps 0..T-1) for the
temporal transformer and the targets (steps 1..T) for the depth inputs of the previous level,
and returns logits ``[B, R, T, V]`` (the parallel layout's shape, so the task's loss code
serves both).

Decoding, one frame at a time (see :mod:`audiolm_jax.lm.depth_sampling`)::

    h, cache = apply(tokens [B, R, P], cache, 0, method=DepthTransformerLM.temporal_decode)
    frame, logits = apply(h[:, -1], choose, method=DepthTransformerLM.decode_frame)
    h, cache = apply(frame[..., None], cache, P, method=DepthTransformerLM.temporal_decode)

``decode_frame`` runs the depth transformer level by level with its own tiny KV cache (over
R <= 16 slots) and calls ``choose(k, logits [B, V]) -> tokens [B]`` for each level, so sampling
and forcing of a whole frame happen inside one compiled function.

Parameter tree (``V`` = padded vocabulary, ``W`` / ``Wd`` = temporal / depth width)::

    temporal       the Transformer's tree (wte [R, V, W], wpe, blocks_i, ln_f; no lm_head)
    depth_in       [R, W, Wd]     ('levels', 'embed', None)   proj_k
    depth_start    [Wd]           ('embed',)                  level 0's "previous token"
    depth_wte      [R-1, V, Wd]   ('levels', 'vocab', 'embed') emb'_k, k = 1..R-1 (R > 1)
    depth_blocks_i Block params, width Wd
    depth_ln       scale, bias    ('embed',)
    depth_head     [R, Wd, V]     ('levels', 'embed', 'vocab') head_k

``depth_in`` leaves its depth side unnamed because a logical name may appear only once per
array and both sides are 'embed'-like; its temporal side shards over fsdp like every weight.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from audiolm_jax.layers.params import normal, param
from audiolm_jax.layers.transformer import ACTIVATION, make_blocks, make_norm, run_blocks
from audiolm_jax.lm.transformer import Cache, LMConfig, Transformer, init_cache, num_params

# (level k, logits [B, V] float32) -> tokens [B] int32: sampling and forcing of one level.
Choose = Callable[[int, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class DepthLMConfig:
    """The two transformers of a depth LM.

    temporal: the frame transformer; ``num_levels`` = R rows (all streams' levels),
      ``output_head=False``.
    depth: the level transformer's blocks (width, heads, layers, dropout, dtype, remat are
      read from it; its vocab_size must equal the temporal one; context = R).
    codebook_size: real code ids are ``< codebook_size``; larger ids (the layout's special
      token, vocabulary padding) are never sampled.
    """

    temporal: LMConfig
    depth: LMConfig
    codebook_size: int

    def __post_init__(self):
        t, d = self.temporal, self.depth
        if t.output_head:
            raise ValueError("the temporal transformer of a depth LM has no LM head: "
                             "set output_head=False")
        if d.vocab_size != t.vocab_size or d.context != t.num_levels:
            raise ValueError(f"depth config must have vocab_size={t.vocab_size} and "
                             f"context={t.num_levels} (one slot per level), got "
                             f"{d.vocab_size} and {d.context}")
        if not 0 < self.codebook_size <= t.vocab_size:
            raise ValueError(f"codebook_size {self.codebook_size} must be in "
                             f"[1, vocab_size={t.vocab_size}]")

    @property
    def num_levels(self) -> int:
        """R: the rows of the layout, i.e. the depth transformer's sequence length."""
        return self.temporal.num_levels


def make_depth_lm_config(temporal: LMConfig, *, num_layers: int, num_heads: int,
                         width: int, codebook_size: int) -> DepthLMConfig:
    """A depth LM config from the temporal transformer's config (whose dropout, dtype, remat,
    bias and MLP ratio the depth transformer shares) and the depth stack's sizes."""
    temporal = dataclasses.replace(temporal, output_head=False)
    depth = LMConfig(
        vocab_size=temporal.vocab_size, num_layers=num_layers, num_heads=num_heads, width=width,
        context=temporal.num_levels, mlp_ratio=temporal.mlp_ratio, dropout=temporal.dropout,
        positions="learned",  # no rotary embedding; no position table is made either
        dtype=temporal.dtype, remat=temporal.remat, bias=temporal.bias,
        norm_eps=temporal.norm_eps, output_head=False)
    return DepthLMConfig(temporal=temporal, depth=depth, codebook_size=codebook_size)


class DepthTransformerLM(nn.Module):
    """Temporal transformer over frames + depth transformer over a frame's levels."""

    config: DepthLMConfig

    def setup(self):
        cfg = self.config
        t, d = cfg.temporal, cfg.depth
        R, V, W, Wd = cfg.num_levels, t.vocab_size, t.width, d.width
        self.temporal = Transformer(t)
        self.depth_in = param(self, "depth_in", (R, W, Wd), ("levels", "embed", None),
                              normal(0.02))
        self.depth_start = param(self, "depth_start", (Wd,), ("embed",), normal(0.02))
        if R > 1:
            self.depth_wte = param(self, "depth_wte", (R - 1, V, Wd),
                                   ("levels", "vocab", "embed"), normal(0.02))
        self.depth_blocks = make_blocks(d, prefix="depth_blocks")
        self.depth_ln = make_norm(d)
        self.depth_head = param(self, "depth_head", (R, Wd, V), ("levels", "embed", "vocab"),
                                normal(0.02))
        self.drop = nn.Dropout(d.dropout)

    # ------------------------------------------------------------------ pieces

    def _check(self, tokens, what: str):
        R = self.config.num_levels
        if tokens.ndim != 3 or tokens.shape[1] != R:
            raise ValueError(f"{what} must be [B, R={R}, T] (rows = streams x levels), "
                             f"got shape {tokens.shape}")

    def _previous_level_embeddings(self, tokens):
        """tokens [..., R] of one step -> [..., R, Wd]: level k gets emb'_k(token k-1), level 0
        the start vector."""
        d = self.config.depth
        start = jnp.broadcast_to(self.depth_start, tokens.shape[:-1] + (1, d.width))
        if self.config.num_levels == 1:
            return start
        # All-gather the table before the lookup (as Transformer._embed does), so the gather
        # follows the batch sharding of the tokens.
        table = nn.with_logical_constraint(self.depth_wte, (None, None, None))
        levels = jnp.arange(self.config.num_levels - 1)
        prev = table[levels, tokens[..., :-1]]  # [..., R-1, Wd]
        return jnp.concatenate([start, prev], axis=-2)

    def _depth_head(self, y):
        """Depth outputs y [N, R, Wd] -> float32 logits [N, R, V].

        One plain matmul per level rather than one batched over levels: XLA:CPU has no
        batched bf16 x bf16 -> f32 dot ("Unsupported element type for DotThunk").
        """
        return jnp.stack([self._depth_head_at(y[:, k], k) for k in range(y.shape[1])], axis=1)

    # ------------------------------------------------------------------ training

    def __call__(self, inputs, targets, *, train: bool = False):
        """Teacher-forced logits. inputs / targets int [B, R, T] (targets = inputs shifted by
        one step) -> float32 logits [B, R, T, V]; logits[:, k, t] predicts targets[:, k, t]
        from inputs[:, :, :t+1] and targets[:, :k, t]. Dropout needs an rng named 'dropout'
        when ``train`` and ``dropout > 0``."""
        self._check(inputs, "inputs")
        self._check(targets, "targets")
        if inputs.shape != targets.shape:
            raise ValueError(f"inputs {inputs.shape} and targets {targets.shape} differ")
        d = self.config.depth
        B, R, T = inputs.shape
        h = self.temporal.features(inputs, train=train)  # [B, T, W]
        x = jnp.einsum("btw,rwd->btrd", h, self.depth_in.astype(d.dtype))
        x = x + self._previous_level_embeddings(jnp.swapaxes(targets, 1, 2)).astype(d.dtype)
        # Every (batch, step) is an independent depth sequence over the R levels.
        x = self.drop(x.reshape(B * T, R, d.width), deterministic=not train)
        x = nn.with_logical_constraint(x, ACTIVATION)
        positions = jnp.broadcast_to(jnp.arange(R), (B * T, R))
        x, _ = run_blocks(self.depth_blocks, x, positions, train=train)
        logits = self._depth_head(x).reshape(B, T, R, -1).transpose(0, 2, 1, 3)
        return nn.with_logical_constraint(logits, ("batch", "levels", "length", "vocab"))

    # ------------------------------------------------------------------ decoding

    def temporal_decode(self, tokens, cache: Cache, index):
        """Steps tokens [B, R, T] at cache slots index..index+T-1 -> (hidden [B, T, W], cache);
        hidden[:, i] conditions the depth transformer for step index + i + 1."""
        self._check(tokens, "tokens")
        return self.temporal.decode_features(tokens, cache, index)

    def decode_frame(self, hidden, choose: Choose, depth_kv_cache: bool = True):
        """One frame: hidden [B, W] (the temporal output of the previous step) -> (tokens
        [B, R] int32, logits [B, R, V] float32), level by level; ``choose(k, logits_k)`` picks
        level k's token (sampling, forcing), which feeds level k+1.

        ``depth_kv_cache``: run one position per level against a KV cache of R slots (default),
        or recompute the depth stack over levels 0..k at every level.
        """
        d = self.config.depth
        R = self.config.num_levels
        B = hidden.shape[0]
        proj = jnp.einsum("bw,rwd->brd", hidden.astype(d.dtype), self.depth_in.astype(d.dtype))
        start = jnp.broadcast_to(self.depth_start, (B, d.width))
        cache = init_cache(d, B, R)
        inputs, tokens, logits = [], [], []
        for k in range(R):  # static: level k's own weights are plain slices
            prev = start if k == 0 else jnp.take(self.depth_wte[k - 1], tokens[-1], axis=0)
            inputs.append(proj[:, k] + prev.astype(d.dtype))
            if depth_kv_cache:
                positions = jnp.full((B, 1), k, jnp.int32)
                x, cache = run_blocks(self.depth_blocks, inputs[-1][:, None], positions, cache, k)
            else:
                positions = jnp.broadcast_to(jnp.arange(k + 1), (B, k + 1))
                x, _ = run_blocks(self.depth_blocks, jnp.stack(inputs, axis=1), positions)
            level_logits = self._depth_head_at(x[:, -1], k)
            logits.append(level_logits)
            tokens.append(jnp.asarray(choose(k, level_logits), jnp.int32))
        return jnp.stack(tokens, axis=1), jnp.stack(logits, axis=1)

    def _depth_head_at(self, y, k: int):
        """Depth output y [B, Wd] at level k -> float32 logits [B, V]."""
        d = self.config.depth
        return jnp.einsum("bd,dv->bv", self.depth_ln(y), self.depth_head[k].astype(d.dtype),
                          preferred_element_type=jnp.float32)

    def init_cache(self, batch_size: int, max_length: int | None = None) -> Cache:
        """The temporal transformer's empty KV cache (works on an unbound module)."""
        return init_cache(self.config.temporal, batch_size, max_length)


# ----------------------------------------------------------------------------- functions


def dummy_tokens(cfg: DepthLMConfig, batch_size: int = 1, length: int = 1) -> jax.Array:
    return jnp.zeros((batch_size, cfg.num_levels, length), jnp.int32)


def init_depth_params(model: DepthTransformerLM, rng: jax.Array) -> Any:
    """Boxed params (``nn.LogicallyPartitioned`` leaves); cheap under ``jax.eval_shape``."""
    tokens = dummy_tokens(model.config)
    return model.init(rng, tokens, tokens)["params"]


def depth_num_params(cfg: DepthLMConfig) -> int:
    """The parameter count from the config alone (equals ``count_params`` of the tree)."""
    t, d = cfg.temporal, cfg.depth
    R, V, W, Wd = cfg.num_levels, t.vocab_size, t.width, d.width
    # The depth blocks and norm: a headless, position-free Transformer without its table.
    blocks = num_params(dataclasses.replace(d, num_levels=1), include_position_embedding=False)
    blocks -= V * Wd
    return (num_params(t) + blocks + R * W * Wd + Wd + (R - 1) * V * Wd + R * Wd * V)
