"""μ-law sample tokens (WaveNet style): 256 tokens per sample at mu=255.

Reference (the article's tokens), which this module reproduces without calling
librosa at run time::

    tokens = (librosa.mu_compress(x.clip(-1, 1), mu=255) + 128).astype(np.uint8)
    audio = librosa.mu_expand(tokens.astype(int) - 128, mu=255)

How the match is made exact
---------------------------
librosa quantizes ``c(x) = sign(x) * log1p(mu*|x|) / log1p(mu)`` with
``np.digitize(c, linspace(-1, 1, mu+1), right=True)``, i.e. the token is the
number of bin edges ``b_i`` with ``b_i < c(x)``.  Because ``c`` is monotone in
``x``, ``b_i < c(x)`` is the same as ``x > t_i`` where ``t_i`` is the largest
value *of the input's float dtype* with ``c(t_i) <= b_i`` (found once per
(dtype, mu) by bisection over the ordered float bit patterns, evaluating
librosa's exact numpy formula on that dtype).  Encoding is then a
``searchsorted`` against those thresholds: pure comparisons, so numpy and jax
(jitted, float32) give identical tokens, equal to librosa's for the same input
dtype, including -1, 0, 1 and inputs that sit exactly on a bin boundary.

One deliberate difference: for float32/float16 input exactly 1.0, librosa's
formula evaluates ``log1p`` in the low precision and gets ``c(1) > 1``, so
``mu_compress`` returns ``mu+1 - (mu+1)//2`` (128 at mu=255; +128 = 256, which
wraps to token 0 = full negative scale in the article's uint8 cast).  Here the
token is clamped to ``mu`` (255), which is what float64 input gives.  NaN
input also maps to the top token (undefined; don't feed NaN).

Decoding is a lookup into a (mu+1)-entry table computed with librosa's
``mu_expand(quantize=True)`` formula in float64, so numpy output is bit-exact
and jax output is that table rounded to the output dtype (float32 by default).
"""

from __future__ import annotations

import functools
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np

ArrayLike = Union[np.ndarray, jax.Array]

__all__ = ["mulaw_encode", "mulaw_decode", "mulaw_vocab_size"]

_FLOAT_BITS = {np.dtype(np.float16): 16, np.dtype(np.float32): 32, np.dtype(np.float64): 64}


def _check_mu(mu) -> int:
    if isinstance(mu, bool) or int(mu) != mu or mu < 1:
        raise ValueError(f"mu must be a positive integer (tokens are 0..mu), got {mu!r}")
    return int(mu)


def mulaw_vocab_size(mu: int = 255) -> int:
    """Number of distinct tokens: ``mu + 1`` (256 at the default mu=255)."""
    return _check_mu(mu) + 1


def _compress_formula(x: np.ndarray, mu: int) -> np.ndarray:
    # Exactly librosa.mu_compress's continuous part, evaluated on x's own dtype
    # (log1p runs in x's precision; the division by the float64 scalar promotes).
    return np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)


def _to_keys(v: np.ndarray, bits: int) -> np.ndarray:
    """Float bit patterns -> int64 keys ordered like the floats (±0 -> 0)."""
    u = v.view(np.dtype(f"uint{bits}")).astype(np.uint64)
    sign = (u >> np.uint64(bits - 1)).astype(bool)
    mag = (u & np.uint64((1 << (bits - 1)) - 1)).astype(np.int64)
    return np.where(sign, -mag, mag)


def _from_keys(k: np.ndarray, dtype: np.dtype, bits: int) -> np.ndarray:
    mag = np.abs(k).astype(np.uint64)
    u = mag | (k < 0).astype(np.uint64) << np.uint64(bits - 1)
    return u.astype(np.dtype(f"uint{bits}")).view(dtype)


@functools.lru_cache(maxsize=None)
def _thresholds(dtype_str: str, mu: int) -> np.ndarray:
    """t[i] = largest value of `dtype` in [-1, 1] with c(t) <= b_i (-inf if none)."""
    dtype = np.dtype(dtype_str)
    bits = _FLOAT_BITS[dtype]
    edges = np.linspace(-1, 1, num=int(1 + mu), endpoint=True)

    def holds(keys):  # c(value(key)) <= b_i, elementwise over the edges
        return _compress_formula(_from_keys(keys, dtype, bits), mu) <= edges

    lo = np.full(edges.shape, _to_keys(np.array([-1.0], dtype), bits)[0], np.int64)
    hi = np.full(edges.shape, _to_keys(np.array([1.0], dtype), bits)[0], np.int64)
    all_hold = holds(hi)
    none_hold = ~holds(lo)
    # Invariant on the remaining edges: holds(lo) and not holds(hi).
    active = ~(all_hold | none_hold)
    while np.any(active & (hi - lo > 1)):
        mid = lo + (hi - lo) // 2
        ok = holds(mid)
        step = active & (hi - lo > 1)
        lo = np.where(step & ok, mid, lo)
        hi = np.where(step & ~ok, mid, hi)
    t = _from_keys(lo, dtype, bits).copy()
    t[all_hold] = dtype.type(1.0)
    t[none_hold] = -np.inf
    t.setflags(write=False)
    return t


@functools.lru_cache(maxsize=None)
def _expand_table(mu: int) -> np.ndarray:
    # Exactly librosa.mu_expand(k - (mu+1)//2, mu=mu, quantize=True) for k = 0..mu.
    x = (np.arange(mu + 1, dtype=np.int64) - (mu + 1) // 2) * 2.0 / (1 + mu)
    table = np.sign(x) / mu * (np.power(1 + mu, np.abs(x)) - 1)
    table.setflags(write=False)
    return table


def _is_jax(x) -> bool:
    return isinstance(x, jax.Array)  # also true for tracers under jit


def mulaw_encode(audio: ArrayLike, mu: int = 255) -> ArrayLike:
    """Audio in [-1, 1] (any shape) -> μ-law tokens in [0, mu], same shape.

    Input outside [-1, 1] is clipped first (like the article's ``x.clip(-1, 1)``).
    numpy input -> ``uint8`` tokens (``int32`` if mu > 255); jax input (jit-able)
    -> ``int32`` tokens.  Tokens equal ``librosa.mu_compress(x.clip(-1, 1), mu=mu)
    + (mu+1)//2`` for float16/32/64 input of the same dtype (integer input is
    treated as float64 in numpy, float32 in jax; bfloat16 as float32), except the
    clamp to ``mu`` described in the module docstring.
    """
    mu = _check_mu(mu)
    if _is_jax(audio):
        x = audio
        if x.dtype not in (jnp.float16, jnp.float32, jnp.float64):
            x = x.astype(jnp.float32)
        t = jnp.asarray(_thresholds(np.dtype(x.dtype).str, mu), dtype=x.dtype)
        x = jnp.clip(x, -1, 1)
        idx = jnp.searchsorted(t, x.ravel(), side="left").reshape(x.shape)
        return jnp.minimum(idx, mu).astype(jnp.int32)

    x = np.asarray(audio)
    if np.dtype(x.dtype) not in _FLOAT_BITS:
        x = x.astype(np.float64)
    t = _thresholds(x.dtype.str, mu)
    x = np.clip(x, -1, 1)
    idx = np.minimum(np.searchsorted(t, x, side="left"), mu)
    return idx.astype(np.uint8 if mu <= 255 else np.int32)


def mulaw_decode(tokens: ArrayLike, mu: int = 255, dtype=None) -> ArrayLike:
    """μ-law tokens in [0, mu] -> audio in [-1, 1], same shape.

    Equals ``librosa.mu_expand(tokens.astype(int) - (mu+1)//2, mu=mu)``.
    numpy: float64 (bit-exact), tokens outside [0, mu] raise ValueError.
    jax (jit-able): ``dtype`` (default float32, float64 under x64), out-of-range
    tokens are clamped (no check is possible under jit).
    """
    mu = _check_mu(mu)
    table = _expand_table(mu)
    if _is_jax(tokens):
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"mu-law tokens must be integers, got dtype {tokens.dtype}")
        out_dtype = dtype if dtype is not None else jnp.asarray(0.0).dtype
        return jnp.take(jnp.asarray(table, out_dtype), tokens.astype(jnp.int32), mode="clip")

    tok = np.asarray(tokens)
    if not np.issubdtype(tok.dtype, np.integer):
        raise ValueError(f"mu-law tokens must be integers, got dtype {tok.dtype}")
    if tok.size and (tok.min() < 0 or tok.max() > mu):
        raise ValueError(f"mu-law tokens must lie in [0, {mu}], got range "
                         f"[{tok.min()}, {tok.max()}]")
    out = table[tok.astype(np.intp)]
    return out if dtype is None else out.astype(dtype)
