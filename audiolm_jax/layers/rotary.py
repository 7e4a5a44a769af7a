"""Rotary position embedding (RoPE) in its two conventions.

* ``"half"``: the head vector's first and second halves form the rotated pairs
  (``[x1, x2] -> [x1 c - x2 s, x2 c + x1 s]``), as GPT-NeoX and transformers' Mimi write it.
* ``"interleaved"``: adjacent entries form the pairs (``(x[2i], x[2i+1])``), as Kyutai's
  ``moshi`` (``modules/rope.py``, ``interleave=True``) and the original RoFormer write it.

Pair ``i`` turns by ``position * base ** (-2 i / D)``. The two conventions hold the same
rotation; converting weights between them permutes the query/key rows of each head.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

CONVENTIONS = ("none", "half", "interleaved")


def inverse_frequencies(head_dim: int, base: float) -> jax.Array:
    """``[D/2]`` float32: ``1 / base ** (2 i / D)``, as transformers and moshi compute it."""
    return 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))


def apply_rope(x: jax.Array, positions: jax.Array, base: float, convention: str = "half"
               ) -> jax.Array:
    """Rotates ``x [B, T, H, D]`` at integer ``positions [B, T]`` (or ``[T]``); float32 math,
    result in ``x``'s dtype."""
    if convention == "none":
        return x
    if convention not in CONVENTIONS:
        raise ValueError(f"rope convention must be one of {CONVENTIONS}, got {convention!r}")
    positions = jnp.asarray(positions)
    if positions.ndim == 1:
        positions = positions[None]
    angles = positions.astype(jnp.float32)[..., None] * inverse_frequencies(x.shape[-1], base)
    cos = jnp.cos(angles)[:, :, None, :]  # [B, T, 1, D/2]: broadcast over heads
    sin = jnp.sin(angles)[:, :, None, :]
    xf = x.astype(jnp.float32)
    if convention == "half":
        half = x.shape[-1] // 2
        x1, x2 = xf[..., :half], xf[..., half:]
        out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    else:
        pairs = xf.reshape(x.shape[:-1] + (x.shape[-1] // 2, 2))
        x1, x2 = pairs[..., 0], pairs[..., 1]
        out = jnp.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).reshape(x.shape)
    return out.astype(x.dtype)
