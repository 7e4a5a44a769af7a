"""Mimi's causal transformer: pre-norm LayerNorm blocks, rotary positions, layer scale and
attention limited to a sliding window of ``context`` frames (itself included), channels-last.

Two ways to run the same weights:

* ``__call__(x)``: a whole sequence at once. Attention is computed block by block (blocks of
  ``context`` queries see their own block and the previous one), so memory grows with
  ``T * context``, not ``T**2``, and a five-minute file encodes as easily as a short one.
* ``step(x, cache)``: streaming. ``cache`` holds the last ``context`` keys/values of every
  layer in a ring buffer plus their absolute positions; a step takes a few new frames and
  returns their outputs and the new cache. Frame by frame equals the whole-sequence call.

Rotary embedding uses the half-split convention (``[x1, x2] -> [x1 c - x2 s, x2 c + x1 s]``,
as transformers' Mimi); Kyutai's release interleaves pairs, which the importer undoes by
permuting the query/key rows, so one convention serves both layouts.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def _param(module: nn.Module, name: str, init, shape, names) -> Array:
    return module.param(name, nn.with_logical_partitioning(init, names), shape, jnp.float32)


def rope_tables(positions: Array, head_dim: int, max_period: float) -> tuple[Array, Array]:
    """cos/sin ``[T, head_dim]`` for integer positions ``[T]`` (frequencies repeated twice)."""
    inv_freq = 1.0 / (max_period ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """x ``[B, T, H, D]``; cos/sin ``[T, D]``."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[None, :, None, :] + rotated * sin[None, :, None, :]


def _attend(q: Array, k: Array, v: Array, allowed: Array) -> Array:
    """q ``[..., Q, H, D]``, k/v ``[..., K, H, D]``, allowed bool ``[..., Q, K]`` (broadcast)."""
    scale = 1.0 / jnp.sqrt(jnp.float32(q.shape[-1]))
    scores = jnp.einsum("...qhd,...khd->...hqk", q, k) * scale
    scores = jnp.where(allowed[..., None, :, :], scores, jnp.finfo(scores.dtype).min)
    weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum("...hqk,...khd->...qhd", weights, v)


def windowed_causal_attention(q: Array, k: Array, v: Array, context: int) -> Array:
    """Query i sees keys j with ``0 <= i - j < context``. q/k/v ``[B, T, H, D]``."""
    B, T, H, D = q.shape
    if T <= context:
        i = jnp.arange(T)
        delta = i[:, None] - i[None, :]
        return _attend(q, k, v, (delta >= 0) & (delta < context))
    # Blocks of `context` queries: each needs only its own block and the previous one.
    W = context
    nb = -(-T // W)
    pad = nb * W - T
    padded = [jnp.pad(a, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(B, nb, W, H, D)
              for a in (q, k, v)]
    qb, kb, vb = padded
    prev = lambda a: jnp.pad(a, ((0, 0), (1, 0), (0, 0), (0, 0), (0, 0)))[:, :-1]
    keys = jnp.concatenate([prev(kb), kb], axis=2)  # [B, nb, 2W, H, D]
    values = jnp.concatenate([prev(vb), vb], axis=2)
    qpos = jnp.arange(nb)[:, None] * W + jnp.arange(W)[None, :]  # [nb, W]
    kpos = jnp.arange(nb)[:, None] * W - W + jnp.arange(2 * W)[None, :]  # [nb, 2W]
    delta = qpos[:, :, None] - kpos[:, None, :]
    allowed = (kpos[:, None, :] >= 0) & (delta >= 0) & (delta < W)  # [nb, W, 2W]
    out = _attend(qb, keys, values, allowed[None])
    return out.reshape(B, nb * W, H, D)[:, :T]


class MimiAttention(nn.Module):
    dim: int
    num_heads: int
    context: int
    max_period: float = 10000.0

    def setup(self):
        d, hd = self.dim, self.dim  # heads are flattened into the output dimension
        init = nn.initializers.lecun_normal()
        self.q = _param(self, "q", init, (d, hd), ("embed", "heads"))
        self.k = _param(self, "k", init, (d, hd), ("embed", "heads"))
        self.v = _param(self, "v", init, (d, hd), ("embed", "heads"))
        self.o = _param(self, "o", init, (hd, d), ("heads", "embed"))

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def _qkv(self, x: Array, positions: Array):
        B, T, _ = x.shape
        split = lambda w: jnp.dot(x, w.astype(x.dtype)).reshape(B, T, self.num_heads, self.head_dim)
        cos, sin = rope_tables(positions, self.head_dim, self.max_period)
        q = apply_rope(split(self.q), cos, sin)
        k = apply_rope(split(self.k), cos, sin)
        return q, k, split(self.v)

    def _out(self, y: Array) -> Array:
        B, T = y.shape[:2]
        return jnp.dot(y.reshape(B, T, self.dim), self.o.astype(y.dtype))

    def __call__(self, x: Array) -> Array:
        q, k, v = self._qkv(x, jnp.arange(x.shape[1]))
        return self._out(windowed_causal_attention(q, k, v, self.context))

    def step(self, x: Array, cache: dict, positions: Array) -> tuple[Array, dict]:
        """x ``[B, n, dim]`` at absolute ``positions [n]``; cache k/v ``[B, context, H, D]``
        and ``pos [context]`` (-1 = empty slot)."""
        q, k, v = self._qkv(x, positions)
        keys = jnp.concatenate([cache["k"], k], axis=1)
        values = jnp.concatenate([cache["v"], v], axis=1)
        kpos = jnp.concatenate([cache["pos"], positions])
        delta = positions[:, None] - kpos[None, :]
        allowed = (kpos[None, :] >= 0) & (delta >= 0) & (delta < self.context)
        y = _attend(q, keys, values, allowed[None])
        slots = positions % self.context
        new_cache = {"k": cache["k"].at[:, slots].set(k), "v": cache["v"].at[:, slots].set(v),
                     "pos": cache["pos"].at[slots].set(positions)}
        return self._out(y), new_cache


class MimiTransformerLayer(nn.Module):
    dim: int
    num_heads: int
    ffn_dim: int
    context: int
    max_period: float = 10000.0
    layer_scale: float = 0.01
    norm_eps: float = 1e-5

    def setup(self):
        norm = lambda: nn.LayerNorm(
            epsilon=self.norm_eps, use_fast_variance=False,
            scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))
        self.attn_norm = norm()
        self.attn = MimiAttention(self.dim, self.num_heads, self.context, self.max_period)
        self.mlp_norm = norm()
        init = nn.initializers.lecun_normal()
        self.fc1 = _param(self, "fc1", init, (self.dim, self.ffn_dim), ("embed", "mlp"))
        self.fc2 = _param(self, "fc2", init, (self.ffn_dim, self.dim), ("mlp", "embed"))
        scale = nn.initializers.constant(self.layer_scale)
        self.attn_scale = _param(self, "attn_scale", scale, (self.dim,), ("embed",))
        self.mlp_scale = _param(self, "mlp_scale", scale, (self.dim,), ("embed",))

    def _mlp(self, x: Array) -> Array:
        h = jax.nn.gelu(jnp.dot(self.mlp_norm(x), self.fc1), approximate=False)  # exact erf GELU
        return x + self.mlp_scale * jnp.dot(h, self.fc2)

    def __call__(self, x: Array) -> Array:
        x = x + self.attn_scale * self.attn(self.attn_norm(x))
        return self._mlp(x)

    def step(self, x: Array, cache: dict, positions: Array) -> tuple[Array, dict]:
        y, cache = self.attn.step(self.attn_norm(x), cache, positions)
        return self._mlp(x + self.attn_scale * y), cache


class MimiTransformer(nn.Module):
    """A stack of ``num_layers`` layers on ``[B, T, dim]`` (no final norm, as the release)."""

    dim: int
    num_layers: int
    num_heads: int
    ffn_dim: int
    context: int
    max_period: float = 10000.0
    layer_scale: float = 0.01
    norm_eps: float = 1e-5

    def setup(self):
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise ValueError(f"transformer width {self.dim} must split into {self.num_heads} "
                             "heads of even size")
        self.layers = [MimiTransformerLayer(self.dim, self.num_heads, self.ffn_dim, self.context,
                                            self.max_period, self.layer_scale, self.norm_eps)
                       for _ in range(self.num_layers)]

    def __call__(self, x: Array) -> Array:
        for layer in self.layers:
            x = layer(x)
        return x

    def init_cache(self, batch: int, dtype: Any = jnp.float32) -> list[dict]:
        """An empty streaming cache (a plain pytree; no parameters needed)."""
        hd = self.dim // self.num_heads
        shape = (batch, self.context, self.num_heads, hd)
        return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
                 "pos": jnp.full((self.context,), -1, jnp.int32)}
                for _ in range(self.num_layers)]

    def step(self, x: Array, cache: list[dict], offset: Array) -> tuple[Array, list[dict]]:
        """Frames ``x [B, n, dim]`` at absolute positions ``offset .. offset + n - 1``."""
        positions = offset + jnp.arange(x.shape[1], dtype=jnp.int32)
        new_cache = []
        for layer, c in zip(self.layers, cache):
            x, c = layer.step(x, c, positions)
            new_cache.append(c)
        return x, new_cache
