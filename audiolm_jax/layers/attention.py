"""Causal self-attention kernels: pure functions of q/k/v, then the KV-cache variants.

Training and whole-sequence inference (``q``, ``k``, ``v`` ``[B, T, H, D]``), chosen by the
transformer config's ``attention``:

* ``"xla"``: one ``[T, T]`` score matrix per head, masked; the reference.
* ``"blocked"``: queries in blocks of ``block``; block i scores only the keys it can see
  (``0 .. (i+1) * block - 1``, and with a ``window`` only the last ``window`` of those), so
  the masked upper triangle is never computed and memory grows with ``T * (block + window)``
  instead of ``T ** 2``. Equal to ``"xla"`` up to float rounding.
* ``"dot_product"``: :func:`jax.nn.dot_product_attention`: on a GPU with 16-bit q/k/v, cuDNN's
  fused (flash) attention, which never holds the ``[T, T]`` probabilities; elsewhere XLA's
  (JAX's ``implementation=None`` means XLA, so the GPU choice is made here, when the program
  is traced for the default backend). No attention-probability dropout.
* ``"splash"``: the Pallas splash-attention kernel on a TPU
  (:mod:`audiolm_jax.layers.tpu_attention`): flash attention that skips every block the
  causal (or window) mask hides, run per device inside a ``shard_map`` under a mesh (batch
  and heads split as the ``activation_batch`` / ``activation_heads`` rules say). Chosen when
  the program is lowered: a TPU gets the kernel, any other platform ``"dot_product"``, so
  the same config runs everywhere. No attention-probability dropout; ``block`` is not used
  (the kernel's blocks are 512, or ``T`` rounded up to 128 when shorter).

Decoding against a KV cache of ``[B * H, S, D]`` rows per layer (row ``b * H + h``), the
same for every kind above:

* :func:`full_cache_attention`: a cache of every position so far; the chunk's keys are
  written at slots ``index .. index + T - 1`` first, then each query reads the slots up to
  its own.
* :func:`ring_cache_attention`: a cache of the last ``window`` positions (slot = position mod
  window): each query reads the cache and the chunk's own keys, then the chunk is written.

Scores and softmax are float32 whatever the compute dtype; masked scores get float32's
minimum, so a fully masked row (padding) stays finite.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from audiolm_jax.layers import tpu_attention

KINDS = ("xla", "blocked", "dot_product", "splash")
# kernels that never materialise the probabilities: no probs dropout
FUSED = ("dot_product", "splash")
NEG = jnp.finfo(jnp.float32).min

# probs float32 [..., T, S] -> probs (dropout); identity at inference.
ProbsFn = Callable[[jax.Array], jax.Array]


def _scale(head_dim: int) -> jax.Array:
    return jnp.float32(1.0) / jnp.sqrt(jnp.float32(head_dim))


def allowed(q_pos, k_pos, window: int = 0):
    """Causal (and windowed) visibility of keys at ``k_pos`` from queries at ``q_pos``
    (numpy or jax integer vectors) -> bool ``[Tq, Tk]``."""
    delta = q_pos[:, None] - k_pos[None, :]
    ok = delta >= 0
    if window:
        ok = ok & (delta < window)
    return ok


def _softmax_attend(scores, mask, v, probs_fn: Optional[ProbsFn], spec: str):
    scores = jnp.where(mask, scores, NEG)
    probs = jax.nn.softmax(scores, axis=-1)
    if probs_fn is not None:
        probs = probs_fn(probs)
    return jnp.einsum(spec, probs.astype(v.dtype), v)


def causal_attention(q, k, v, *, window: int = 0, kind: str = "blocked", block: int = 128,
                     probs_fn: Optional[ProbsFn] = None) -> jax.Array:
    """Causal self-attention of ``q, k, v [B, T, H, D]`` -> ``[B, T, H, D]``; with a
    ``window``, query i sees keys ``i - window + 1 .. i``."""
    if kind not in KINDS:
        raise ValueError(f"attention must be one of {KINDS}, got {kind!r}")
    if kind in FUSED:
        if probs_fn is not None:
            raise ValueError(f"attention={kind!r} has no attention-probability dropout: "
                             "train it with dropout=0 or use attention='blocked'")
        if kind == "splash":
            return tpu_attention.splash_or_reference(
                q, k, v, window=window,
                reference=lambda q, k, v: _dot_product(q, k, v, window))
        return _dot_product(q, k, v, window)
    T = q.shape[1]
    if kind == "blocked" and block and T > block:
        return _blocked(q, k, v, window, block, probs_fn)
    scores = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32)
    pos = np.arange(T)
    return _softmax_attend(scores * _scale(q.shape[-1]), allowed(pos, pos, window), v,
                           probs_fn, "bhts,bshd->bthd")


def _dot_product(q, k, v, window: int):
    return jax.nn.dot_product_attention(
        q, k, v, is_causal=True, local_window_size=(window - 1, 0) if window else None,
        implementation="cudnn" if _cudnn_applies(q) else "xla")


def _cudnn_applies(q) -> bool:
    """cuDNN's fused attention: a GPU backend, 16-bit inputs, head_dim a multiple of 8 up to
    128. Tracing it needs cuDNN, so it is never chosen off a GPU."""
    D = q.shape[-1]
    return (jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16)
            and D % 8 == 0 and D <= 128)


def _blocked(q, k, v, window: int, block: int, probs_fn):
    B, T, H, D = q.shape
    pad = -T % block  # padded keys come after every real query: causality masks them
    if pad:
        q, k, v = (jnp.pad(a, ((0, 0), (0, pad), (0, 0), (0, 0))) for a in (q, k, v))
    # Heads-major once, so each block's slices are plain row ranges per (batch, head).
    q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))  # [B, H, T, D]
    scale = _scale(D)
    outs = []
    for lo in range(0, T + pad, block):
        hi = lo + block
        k_lo = max(0, lo - window + 1) if window else 0
        scores = jnp.einsum("bhtd,bhsd->bhts", q[:, :, lo:hi], k[:, :, k_lo:hi],
                            preferred_element_type=jnp.float32)
        mask = allowed(np.arange(lo, hi), np.arange(k_lo, hi), window)
        outs.append(_softmax_attend(scores * scale, mask, v[:, :, k_lo:hi], probs_fn,
                                    "bhts,bhsd->bhtd"))
    return jnp.concatenate(outs, axis=2)[:, :, :T].transpose(0, 2, 1, 3)


def _rows(a):
    """[B, T, H, D] -> the cache's row layout [B * H, T, D]."""
    B, T, H, D = a.shape
    return a.transpose(0, 2, 1, 3).reshape(B * H, T, D)


def _unrows(a, B: int):
    """[B * H, T, D] -> [B, T, H, D]."""
    BH, T, D = a.shape
    return a.reshape(B, BH // B, T, D).transpose(0, 2, 1, 3)


def full_cache_attention(q, k, v, cache: dict, index, *, window: int = 0,
                         probs_fn: Optional[ProbsFn] = None):
    """A chunk ``q, k, v [B, T, H, D]`` at positions ``index .. index + T - 1`` against a
    full-length cache ``{'k', 'v'}: [B * H, S, D]`` -> (``[B, T, H, D]``, new cache).

    The cache is written in place (one ``dynamic_update_slice`` per array) and read by the
    score dot with the keys on the left, so neither needs a transposed copy per token.
    ``index`` may be traced; the caller keeps ``index + T <= S``.
    """
    B, T = q.shape[:2]
    new = {name: jax.lax.dynamic_update_slice(cache[name], _rows(a).astype(cache[name].dtype),
                                              (0, index, 0))
           for name, a in (("k", k), ("v", v))}
    k_c, v_c = new["k"].astype(q.dtype), new["v"].astype(q.dtype)
    S = k_c.shape[1]
    scores = jnp.einsum("nsd,ntd->nts", k_c, _rows(q), preferred_element_type=jnp.float32)
    mask = allowed(index + jnp.arange(T), jnp.arange(S), window)
    out = _softmax_attend(scores * _scale(q.shape[-1]), mask, v_c, probs_fn, "nts,nsd->ntd")
    return _unrows(out, B), new


def ring_slot_positions(index, size: int) -> jax.Array:
    """Positions held by a ring cache's slots before a chunk at ``index`` is written: slot s
    holds the latest position ``p < index`` with ``p % size == s`` (negative: still empty)."""
    slots = jnp.arange(size)
    return index - size + jnp.mod(slots - index, size)


def ring_cache_attention(q, k, v, cache: dict, index, *, window: int,
                         probs_fn: Optional[ProbsFn] = None):
    """A chunk ``q, k, v [B, T, H, D]`` (T <= window) at positions ``index .. index + T - 1``
    against a ring cache ``{'k', 'v'}: [B * H, window, D]`` of the previous ``window``
    positions -> (``[B, T, H, D]``, new cache)."""
    B, T = q.shape[:2]
    size = cache["k"].shape[1]
    if T > size:
        raise ValueError(f"a chunk of {T} positions does not fit a ring cache of {size}")
    if T == 1 and jnp.ndim(index) == 1:
        return _ring_step_per_row(q, k, v, cache, index, window, probs_fn)
    if T == 1:
        # One position (streaming generation): write it into its slot first, then attend
        # over the ring alone. The position it overwrites is the one that just left the
        # window, so nothing is lost, and the cache is not copied every step.
        slot = jnp.mod(index, size)
        new = {name: jax.lax.dynamic_update_slice(
                   cache[name], _rows(a).astype(cache[name].dtype), (0, slot, 0))
               for name, a in (("k", k), ("v", v))}
        k_pos = ring_slot_positions(index + 1, size)
        q_pos = index + jnp.arange(1)
        mask = allowed(q_pos, k_pos, window) & (k_pos >= 0)[None, :]
        scores = jnp.einsum("nsd,ntd->nts", new["k"].astype(q.dtype), _rows(q),
                            preferred_element_type=jnp.float32)
        out = _softmax_attend(scores * _scale(q.shape[-1]), mask, new["v"].astype(q.dtype),
                              probs_fn, "nts,nsd->ntd")
        return _unrows(out, B), new
    k_rows, v_rows = _rows(k), _rows(v)
    keys = jnp.concatenate([cache["k"].astype(q.dtype), k_rows], axis=1)
    values = jnp.concatenate([cache["v"].astype(q.dtype), v_rows], axis=1)
    q_pos = index + jnp.arange(T)
    k_pos = jnp.concatenate([ring_slot_positions(index, size), q_pos])
    mask = allowed(q_pos, k_pos, window) & (k_pos >= 0)[None, :]
    scores = jnp.einsum("ntd,nsd->nts", _rows(q), keys, preferred_element_type=jnp.float32)
    out = _softmax_attend(scores * _scale(q.shape[-1]), mask, values, probs_fn,
                          "nts,nsd->ntd")
    slots = jnp.mod(q_pos, size)
    new = {"k": cache["k"].at[:, slots].set(k_rows.astype(cache["k"].dtype)),
           "v": cache["v"].at[:, slots].set(v_rows.astype(cache["v"].dtype))}
    return _unrows(out, B), new


def _ring_step_per_row(q, k, v, cache: dict, index, window: int, probs_fn):
    """The one-position ring step with a position per batch row (``index [B]``): rows are
    separate streams that may have started at different steps (a server's sessions). Each
    row writes its own slot; its keys' positions follow from its own index, so the slots a
    freshly started row has not written yet (a previous stream's) are masked as empty."""
    B, _, H, _ = q.shape
    size = cache["k"].shape[1]
    row_index = jnp.repeat(jnp.asarray(index, jnp.int32), H)  # [B * H], batch-major rows
    rows = jnp.arange(B * H)
    slot = jnp.mod(row_index, size)
    new = {name: cache[name].at[rows, slot].set(_rows(a)[:, 0].astype(cache[name].dtype))
           for name, a in (("k", k), ("v", v))}
    k_pos = ring_slot_positions(row_index[:, None] + 1, size)  # [B * H, S]
    delta = row_index[:, None] - k_pos
    ok = (delta >= 0) & (k_pos >= 0)
    if window:
        ok = ok & (delta < window)
    scores = jnp.einsum("nsd,ntd->nts", new["k"].astype(q.dtype), _rows(q),
                        preferred_element_type=jnp.float32)
    out = _softmax_attend(scores * _scale(q.shape[-1]), ok[:, None, :],
                          new["v"].astype(q.dtype), probs_fn, "nts,nsd->ntd")
    return _unrows(out, B), new
