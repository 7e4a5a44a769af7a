"""Token layouts ("patterns") for codec-token language models: plain data, no model.

Codes are integer arrays ``[B, K, T]`` (K quantizer levels / codebooks, T frames),
or ``[B, S, K, T]`` for S parallel streams (see :class:`MultiStreamPattern`).
Every pattern is a small frozen (hashable, so usable as a static jit argument)
dataclass with

* ``build(codes) -> sequence``  and  ``revert(sequence) -> codes``
  (``revert(build(x)) == x``); numpy in -> numpy out, jax in -> jax out,
  both jit-compatible (shapes are static, index tables are numpy constants);
* ``seq_shape(T)``: the built sequence's shape without the batch axis;
* ``embed_vocab_size``: how many distinct ids a sequence position can hold
  (the LM's input embedding size per table);
* ``valid_mask(T)``: bool, True where the sequence holds a real code
  (False on special "empty" slots of delayed layouts);
* ``level_ids(seq_len=None)``: the level each sequence position (flat) or row
  (other layouts) holds, and ``level_weights(weights, seq_len=None)`` to expand
  per-level loss weights such as the article's ``[10] + [0.1] * 7``.

Layouts (shown for one batch element, ``c[q, t]`` = level q of frame t):

* :class:`FlatPattern`: ``b q t -> b (t q)``:
  ``[c[0,0], c[1,0], .., c[K-1,0], c[0,1], ...]``; sequence ``[B, T*K]``.
* :class:`ParallelPattern`: identity ``[B, K, T]``; all levels predicted per step.
* :class:`DelayPattern` (MusicGen): row q at step s holds ``c[q, s - delays[q]]``,
  special id ``vocab_size`` elsewhere; ``[B, K, T + max(delays)]``.
* :class:`DepthPattern` (Moshi's depth transformer): the first ``num_semantic``
  levels have delay 0, the rest ``acoustic_delay``; ``[B, K, T + acoustic_delay]``.
* :class:`MultiStreamPattern`: ``[B, S, K, T]`` treated as ``[B, S*K, T]``
  (stream-major: row ``s*K + q``) and laid out with the base layout.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

Array = Union[np.ndarray, jax.Array]

__all__ = [
    "FlatPattern",
    "ParallelPattern",
    "DelayPattern",
    "DepthPattern",
    "MultiStreamPattern",
    "make_pattern",
    "level_weights",
    "PATTERN_NAMES",
]

PATTERN_NAMES = ("flat", "parallel", "delay", "depth")


def _xp(x):
    # Tracers under jit are jax.Array instances too.
    return jnp if isinstance(x, jax.Array) else np


def _as_array(x):
    return x if isinstance(x, (jax.Array, np.ndarray)) else np.asarray(x)


def _check_int(x, what: str):
    if not np.issubdtype(np.dtype(x.dtype), np.integer):
        raise ValueError(f"{what} must be an integer array, got dtype {x.dtype}")


def _check_codes(codes, num_levels: int, name: str):
    codes = _as_array(codes)
    _check_int(codes, f"{name}.build: codes")
    if codes.ndim != 3 or codes.shape[1] != num_levels:
        raise ValueError(
            f"{name}.build expects codes of shape [B, K={num_levels}, T], got shape "
            f"{tuple(codes.shape)}")
    return codes


def _fit(x, max_id: int):
    """Promote small integer dtypes (e.g. uint8) that cannot hold ``max_id``."""
    if np.iinfo(np.dtype(x.dtype)).max < max_id:
        x = x.astype(np.promote_types(np.dtype(x.dtype), np.int32))
    return x


def _check_positive(value, what: str):
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")


def _expand_weights(weights, num_levels: int) -> np.ndarray:
    if weights is None:
        return np.ones((num_levels,), np.float32)
    w = np.asarray(weights, np.float32)
    if w.ndim != 1 or w.shape[0] != num_levels:
        raise ValueError(f"expected {num_levels} per-level weights, got shape {w.shape}")
    return w


# ----------------------------------------------------------------------------- flat


@dataclasses.dataclass(frozen=True)
class FlatPattern:
    """Level-interleaved flat sequence: ``b q t -> b (t q)``, shape ``[B, T*K]``.

    Position ``i`` holds level ``i % K`` of frame ``i // K``.  With
    ``level_offsets=True`` level q's tokens are shifted by ``q * vocab_size`` so
    one LM vocabulary of ``K * vocab_size`` ids distinguishes the levels
    (``revert`` removes the shift again).
    """

    num_levels: int
    vocab_size: Optional[int] = None
    level_offsets: bool = False

    def __post_init__(self):
        _check_positive(self.num_levels, "num_levels")
        if self.vocab_size is not None:
            _check_positive(self.vocab_size, "vocab_size")
        if self.level_offsets and self.vocab_size is None:
            raise ValueError("level_offsets=True needs vocab_size")

    @property
    def embed_vocab_size(self) -> Optional[int]:
        if self.vocab_size is None:
            return None
        return self.num_levels * self.vocab_size if self.level_offsets else self.vocab_size

    def seq_len(self, num_frames: int) -> int:
        return num_frames * self.num_levels

    def seq_shape(self, num_frames: int) -> Tuple[int, ...]:
        return (self.seq_len(num_frames),)

    def num_frames(self, seq_len: int) -> int:
        if seq_len % self.num_levels:
            raise ValueError(
                f"FlatPattern: sequence length {seq_len} is not a multiple of the "
                f"number of levels K={self.num_levels}")
        return seq_len // self.num_levels

    def _offsets(self) -> np.ndarray:
        return np.arange(self.num_levels, dtype=np.int32)[:, None] * self.vocab_size

    def build(self, codes: Array) -> Array:
        """``[B, K, T] -> [B, T*K]``."""
        codes = _check_codes(codes, self.num_levels, "FlatPattern")
        xp = _xp(codes)
        if self.level_offsets:
            codes = _fit(codes, self.num_levels * self.vocab_size - 1)
            codes = codes + self._offsets().astype(codes.dtype)
        b, k, t = codes.shape
        return xp.transpose(codes, (0, 2, 1)).reshape(b, t * k)

    def revert(self, seq: Array) -> Array:
        """``[B, T*K] -> [B, K, T]``.

        Raises ValueError if the length is not a multiple of K (a partially
        generated frame); trim it first, e.g. ``seq[:, :K * (L // K)]``.
        """
        seq = _as_array(seq)
        _check_int(seq, "FlatPattern.revert: sequence")
        if seq.ndim != 2:
            raise ValueError(f"FlatPattern.revert expects a sequence [B, T*K], got shape "
                             f"{tuple(seq.shape)}")
        b, n = seq.shape
        t = self.num_frames(n)
        codes = _xp(seq).transpose(seq.reshape(b, t, self.num_levels), (0, 2, 1))
        if self.level_offsets:
            codes = codes - self._offsets().astype(codes.dtype)
        return codes

    def level_ids(self, seq_len: Optional[int] = None) -> np.ndarray:
        """``[seq_len]`` int32: position i holds level ``i % K`` (any seq_len)."""
        if seq_len is None:
            raise ValueError("FlatPattern.level_ids needs seq_len")
        return (np.arange(seq_len) % self.num_levels).astype(np.int32)

    def frame_ids(self, seq_len: int) -> np.ndarray:
        """``[seq_len]`` int32: position i belongs to frame ``i // K``."""
        return (np.arange(seq_len) // self.num_levels).astype(np.int32)

    def valid_mask(self, num_frames: int) -> np.ndarray:
        return np.ones(self.seq_shape(num_frames), bool)

    def level_weights(self, weights: Optional[Sequence[float]] = None,
                      seq_len: Optional[int] = None) -> np.ndarray:
        """Per-level weights ``[K]`` -> per-position ``[seq_len]`` float32."""
        return _expand_weights(weights, self.num_levels)[self.level_ids(seq_len)]

    def _for_streams(self, num_streams: int) -> "FlatPattern":
        return FlatPattern(self.num_levels * num_streams, self.vocab_size, self.level_offsets)


# ------------------------------------------------------------------------- parallel


class _RowLayout:
    """Shared helpers for layouts whose sequence is ``[B, K, L]`` (one row per level)."""

    num_levels: int

    def level_ids(self, seq_len: Optional[int] = None) -> np.ndarray:
        """``[K]`` int32: row q holds level q (``seq_len`` is ignored)."""
        return np.arange(self.num_levels, dtype=np.int32)

    def level_weights(self, weights: Optional[Sequence[float]] = None,
                      seq_len: Optional[int] = None) -> np.ndarray:
        """Per-level weights ``[K]`` float32 (validated; ``seq_len`` ignored)."""
        return _expand_weights(weights, self.num_levels)


@dataclasses.dataclass(frozen=True)
class ParallelPattern(_RowLayout):
    """Identity layout ``[B, K, T]``: all K levels of frame t are predicted at step t."""

    num_levels: int
    vocab_size: Optional[int] = None

    def __post_init__(self):
        _check_positive(self.num_levels, "num_levels")
        if self.vocab_size is not None:
            _check_positive(self.vocab_size, "vocab_size")

    @property
    def embed_vocab_size(self) -> Optional[int]:
        return self.vocab_size

    def seq_shape(self, num_frames: int) -> Tuple[int, ...]:
        return (self.num_levels, num_frames)

    def num_frames(self, seq_len: int) -> int:
        return seq_len

    def build(self, codes: Array) -> Array:
        """``[B, K, T] -> [B, K, T]`` (validated identity)."""
        return _check_codes(codes, self.num_levels, "ParallelPattern")

    def revert(self, seq: Array) -> Array:
        """``[B, K, T] -> [B, K, T]`` (validated identity)."""
        seq = _as_array(seq)
        _check_int(seq, "ParallelPattern.revert: sequence")
        if seq.ndim != 3 or seq.shape[1] != self.num_levels:
            raise ValueError(f"ParallelPattern.revert expects [B, K={self.num_levels}, T], "
                             f"got shape {tuple(seq.shape)}")
        return seq

    def valid_mask(self, num_frames: int) -> np.ndarray:
        return np.ones(self.seq_shape(num_frames), bool)

    def _for_streams(self, num_streams: int) -> "ParallelPattern":
        return ParallelPattern(self.num_levels * num_streams, self.vocab_size)


# ---------------------------------------------------------------------------- delay


class _DelayedLayout(_RowLayout):
    """Row q at step s holds frame ``s - delays[q]``; other slots hold ``vocab_size``."""

    num_levels: int
    vocab_size: int

    @property
    def level_delays(self) -> Tuple[int, ...]:
        raise NotImplementedError

    @property
    def max_delay(self) -> int:
        return max(self.level_delays)

    @property
    def special_token(self) -> int:
        """Id of the empty slot: ``vocab_size`` (embedding tables need vocab_size+1)."""
        return self.vocab_size

    @property
    def embed_vocab_size(self) -> int:
        return self.vocab_size + 1

    def seq_shape(self, num_frames: int) -> Tuple[int, ...]:
        return (self.num_levels, num_frames + self.max_delay)

    def num_frames(self, seq_len: int) -> int:
        if seq_len < self.max_delay:
            raise ValueError(f"{type(self).__name__}: sequence length {seq_len} is shorter "
                             f"than the maximum delay {self.max_delay}")
        return seq_len - self.max_delay

    def _frame_index(self, num_frames: int):
        """``[K, T+D]`` frame index each slot holds and whether it is in range."""
        d = np.asarray(self.level_delays)[:, None]
        t = np.arange(num_frames + self.max_delay)[None, :] - d
        valid = (t >= 0) & (t < num_frames)
        return np.clip(t, 0, max(num_frames - 1, 0)), valid

    def valid_mask(self, num_frames: int) -> np.ndarray:
        """bool ``[K, T + max_delay]``: True on slots holding a real code."""
        return self._frame_index(num_frames)[1]

    def build(self, codes: Array) -> Array:
        """``[B, K, T] -> [B, K, T + max_delay]`` with ``special_token`` in empty slots."""
        name = type(self).__name__
        codes = _fit(_check_codes(codes, self.num_levels, name), self.special_token)
        xp = _xp(codes)
        b, k, t = codes.shape
        if t == 0:
            return xp.full((b, k, self.max_delay), self.special_token, codes.dtype)
        t_idx, valid = self._frame_index(t)
        rows = np.broadcast_to(np.arange(k)[:, None], t_idx.shape)
        gathered = codes[:, rows, t_idx]
        return xp.where(valid[None], gathered,
                        xp.asarray(self.special_token, dtype=codes.dtype))

    def revert(self, seq: Array) -> Array:
        """``[B, K, T + max_delay] -> [B, K, T]`` (the special slots are dropped
        unchecked, so a model's output there does not matter)."""
        name = type(self).__name__
        seq = _as_array(seq)
        _check_int(seq, f"{name}.revert: sequence")
        if seq.ndim != 3 or seq.shape[1] != self.num_levels:
            raise ValueError(f"{name}.revert expects [B, K={self.num_levels}, T+"
                             f"{self.max_delay}], got shape {tuple(seq.shape)}")
        t = self.num_frames(seq.shape[2])
        d = np.asarray(self.level_delays)[:, None]
        t_idx = np.arange(t)[None, :] + d
        rows = np.broadcast_to(np.arange(self.num_levels)[:, None], t_idx.shape)
        return seq[:, rows, t_idx]


def _check_delays(delays, num_levels):
    if len(delays) != num_levels:
        raise ValueError(f"expected {num_levels} delays (one per level), got {len(delays)}")
    for d in delays:
        if isinstance(d, bool) or int(d) != d or d < 0:
            raise ValueError(f"delays must be non-negative integers, got {delays!r}")


@dataclasses.dataclass(frozen=True)
class DelayPattern(_DelayedLayout):
    """MusicGen delay layout: level q is shifted right by ``delays[q]`` steps
    (default ``delays[q] = q``); sequence ``[B, K, T + max(delays)]``."""

    num_levels: int
    vocab_size: int
    delays: Optional[Tuple[int, ...]] = None

    def __post_init__(self):
        _check_positive(self.num_levels, "num_levels")
        _check_positive(self.vocab_size, "vocab_size")
        delays = tuple(range(self.num_levels)) if self.delays is None else \
            tuple(int(d) for d in self.delays)
        _check_delays(delays, self.num_levels)
        object.__setattr__(self, "delays", delays)

    @property
    def level_delays(self) -> Tuple[int, ...]:
        return self.delays

    def _for_streams(self, num_streams: int) -> "DelayPattern":
        return DelayPattern(self.num_levels * num_streams, self.vocab_size,
                            self.delays * num_streams)


@dataclasses.dataclass(frozen=True)
class DepthPattern(_DelayedLayout):
    """Moshi's per-frame depth layout: step t holds the K tokens the depth
    transformer predicts; the first ``num_semantic`` levels have delay 0, the
    acoustic levels ``acoustic_delay`` (Moshi: 1).  ``[B, K, T + acoustic_delay]``."""

    num_levels: int
    vocab_size: int
    acoustic_delay: int = 1
    num_semantic: int = 1
    streams: int = 1  # internal: >1 when laid out for MultiStreamPattern

    def __post_init__(self):
        _check_positive(self.num_levels, "num_levels")
        _check_positive(self.vocab_size, "vocab_size")
        _check_positive(self.streams, "streams")
        if isinstance(self.acoustic_delay, bool) or int(self.acoustic_delay) != \
                self.acoustic_delay or self.acoustic_delay < 0:
            raise ValueError(f"acoustic_delay must be a non-negative integer, "
                             f"got {self.acoustic_delay!r}")
        per_stream = self.num_levels // self.streams
        if self.num_levels % self.streams or not 0 <= self.num_semantic <= per_stream:
            raise ValueError(f"num_semantic must be in [0, {per_stream}], "
                             f"got {self.num_semantic!r}")

    @property
    def level_delays(self) -> Tuple[int, ...]:
        per_stream = self.num_levels // self.streams
        one = (0,) * self.num_semantic + (self.acoustic_delay,) * (per_stream - self.num_semantic)
        return one * self.streams

    @property
    def max_delay(self) -> int:
        # Always acoustic_delay (also with no acoustic levels), so shapes are predictable.
        return self.acoustic_delay

    def _for_streams(self, num_streams: int) -> "DepthPattern":
        return DepthPattern(self.num_levels * num_streams, self.vocab_size,
                            self.acoustic_delay, self.num_semantic, self.streams * num_streams)


# ---------------------------------------------------------------------- multistream


@dataclasses.dataclass(frozen=True)
class MultiStreamPattern:
    """S parallel code streams ``[B, S, K, T]`` (e.g. Moshi's user + model audio).

    The streams' levels are stacked per frame, stream-major (row ``s*K + q``),
    and laid out with ``base`` widened to ``S*K`` levels (per-level delays and
    ``num_semantic`` repeat per stream; flat ``level_offsets`` apply per row
    ``s*K + q``).  So flat frame t is ``[s0 l0..lK-1, s1 l0..lK-1]`` and
    sequences are ``[B, T*S*K]`` (flat) or ``[B, S*K, L]`` (others).
    ``revert`` returns ``[B, S, K, T]``.
    """

    base: Union[FlatPattern, ParallelPattern, DelayPattern, DepthPattern]
    num_streams: int = 2

    def __post_init__(self):
        _check_positive(self.num_streams, "num_streams")
        if not hasattr(self.base, "_for_streams"):
            raise ValueError(f"unsupported base pattern {self.base!r}")

    @property
    def num_levels(self) -> int:
        return self.base.num_levels

    @property
    def total_levels(self) -> int:
        return self.num_streams * self.base.num_levels

    @property
    def inner(self):
        """The base layout over ``S*K`` stacked levels (what actually builds the sequence)."""
        return self.base._for_streams(self.num_streams)

    @property
    def vocab_size(self):
        return self.base.vocab_size

    @property
    def embed_vocab_size(self):
        return self.inner.embed_vocab_size

    def seq_shape(self, num_frames: int) -> Tuple[int, ...]:
        return self.inner.seq_shape(num_frames)

    def num_frames(self, seq_len: int) -> int:
        return self.inner.num_frames(seq_len)

    def valid_mask(self, num_frames: int) -> np.ndarray:
        return self.inner.valid_mask(num_frames)

    def build(self, codes: Array) -> Array:
        """``[B, S, K, T] -> `` the inner layout's sequence."""
        codes = _as_array(codes)
        _check_int(codes, "MultiStreamPattern.build: codes")
        if codes.ndim != 4 or codes.shape[1] != self.num_streams or \
                codes.shape[2] != self.num_levels:
            raise ValueError(
                f"MultiStreamPattern.build expects codes of shape [B, S={self.num_streams}, "
                f"K={self.num_levels}, T], got shape {tuple(codes.shape)}")
        b, s, k, t = codes.shape
        return self.inner.build(codes.reshape(b, s * k, t))

    def revert(self, seq: Array) -> Array:
        """Inner layout's sequence ``-> [B, S, K, T]``."""
        codes = self.inner.revert(seq)
        b, _, t = codes.shape
        return codes.reshape(b, self.num_streams, self.num_levels, t)

    def stream_ids(self, seq_len: Optional[int] = None) -> np.ndarray:
        """Stream of each position (flat, ``[seq_len]``) or row (others, ``[S*K]``)."""
        return (self.inner.level_ids(seq_len) // self.num_levels).astype(np.int32)

    def level_ids(self, seq_len: Optional[int] = None) -> np.ndarray:
        """Level within its stream of each position (flat) or row (others)."""
        return (self.inner.level_ids(seq_len) % self.num_levels).astype(np.int32)

    def level_weights(self, weights: Optional[Sequence[float]] = None,
                      seq_len: Optional[int] = None) -> np.ndarray:
        """Weights of length K (shared by the streams) or S*K (per stream-level),
        expanded to ``[seq_len]`` (flat) or ``[S*K]`` (others)."""
        if weights is not None and len(weights) == self.num_levels:
            weights = list(weights) * self.num_streams
        return self.inner.level_weights(weights, seq_len)


# ------------------------------------------------------------------------- helpers


Pattern = Union[FlatPattern, ParallelPattern, DelayPattern, DepthPattern, MultiStreamPattern]


def make_pattern(name: str, num_levels: int, vocab_size: Optional[int] = None,
                 num_streams: int = 1, **kw) -> Pattern:
    """Pattern by name: 'flat' (kw: level_offsets), 'parallel', 'delay' (kw: delays),
    'depth' (kw: acoustic_delay, num_semantic); ``num_streams > 1`` wraps it in a
    :class:`MultiStreamPattern`."""
    if name == "flat":
        pattern = FlatPattern(num_levels, vocab_size, **kw)
    elif name == "parallel":
        pattern = ParallelPattern(num_levels, vocab_size, **kw)
    elif name in ("delay", "depth"):
        if vocab_size is None:
            raise ValueError(f"pattern {name!r} needs vocab_size (the special token id)")
        cls = DelayPattern if name == "delay" else DepthPattern
        pattern = cls(num_levels, vocab_size, **kw)
    else:
        raise ValueError(f"unknown pattern {name!r}; expected one of {PATTERN_NAMES}")
    if num_streams != 1:
        pattern = MultiStreamPattern(pattern, num_streams)
    return pattern


def level_weights(weights: Optional[Sequence[float]], pattern: Pattern,
                  seq_len: Optional[int] = None) -> np.ndarray:
    """Expand per-level loss weights (e.g. ``[10] + [0.1] * 7``; None = all ones).

    Flat layouts: per-position ``[seq_len]`` (position i gets ``weights[i % K]``).
    Row layouts (parallel / delay / depth): per-level ``[K]`` (``[S*K]`` for
    multi-stream), to broadcast against a ``[B, K, L]`` loss as ``w[:, None]``.
    """
    return pattern.level_weights(weights, seq_len)
