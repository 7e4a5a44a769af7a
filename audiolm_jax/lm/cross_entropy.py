"""Next-token cross-entropy, whole or in chunks of the sequence.

A large vocabulary makes the float32 logits ``[batch, length, vocab]`` the biggest tensor of
an LM step (Moshi's text head: 32,000 ids; at 8 x 3000 positions per chip that is 3 GB, and
the backward pass holds a second copy for the softmax gradient). ``chunked_cross_entropy``
computes the head and the loss for ``chunk`` positions at a time inside a loop whose body is
rematerialised, so only one chunk's logits exist at once, in the forward and the backward
pass; the result equals the whole computation (same ops per position).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

# hidden states [B, c, W] -> float32 logits [B, c, V] or [B, K, c, V] (K levels)
Head = Callable[[jax.Array], jax.Array]


def mask_padded_vocab(logits: jax.Array, vocab_size: int) -> jax.Array:
    """Sets the logits of padding ids (>= vocab_size) to a large negative value."""
    if logits.shape[-1] == vocab_size:
        return logits
    keep = jnp.arange(logits.shape[-1]) < vocab_size
    return jnp.where(keep, logits, jnp.finfo(logits.dtype).min / 2)


def cross_entropy(logits: jax.Array, targets: jax.Array, vocab_size: int) -> jax.Array:
    """Per-position cross-entropy of integer targets (logits' padding ids masked)."""
    return optax.softmax_cross_entropy_with_integer_labels(
        mask_padded_vocab(logits, vocab_size), targets)


def chunked_cross_entropy(head: Head, x: jax.Array, targets: jax.Array, vocab_size: int,
                          chunk: int) -> jax.Array:
    """``cross_entropy(head(x), targets)`` computed ``chunk`` positions at a time.

    x: hidden states ``[B, T, W]``; targets: ``[B, T]`` or ``[B, K, T]`` (the sequence on the
    last axis, as ``head``'s logits have it). ``chunk <= 0`` or ``>= T``: in one piece. A
    ragged last chunk is padded and its padding dropped. Returns float32 ``targets.shape``.
    """
    T = x.shape[1]
    if chunk <= 0 or chunk >= T:
        return cross_entropy(head(x), targets, vocab_size)
    n = -(-T // chunk)
    pad = n * chunk - T
    if pad:
        x = jnp.pad(x, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, [(0, 0)] * (targets.ndim - 1) + [(0, pad)])
    B, W = x.shape[0], x.shape[2]
    # [n, B, c, W] and [n, ..., c]: the loop runs over the leading chunk axis.
    xs = jnp.moveaxis(x.reshape(B, n, chunk, W), 1, 0)
    ts = jnp.moveaxis(targets.reshape(targets.shape[:-1] + (n, chunk)), -2, 0)

    # Rematerialised: the backward pass recomputes each chunk's logits instead of keeping all.
    @jax.checkpoint
    def one(xc, tc):
        return cross_entropy(head(xc), tc, vocab_size)

    ce = jax.lax.map(lambda args: one(*args), (xs, ts))  # [n, ..., c]
    ce = jnp.moveaxis(ce, 0, -2)
    return ce.reshape(ce.shape[:-2] + (n * chunk,))[..., :T]
