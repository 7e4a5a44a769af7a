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

A layout is a registered object (as audiocraft's pattern providers): ``register_layout(name,
cls)`` makes ``model.layout = name`` valid in a config, and the LM task, the token writer and
the samplers never branch on the name; everything they ask is a method of :class:`Layout`:
which model reads the sequence (``model_kind``, ``model_levels``), how many frames a number of
sequence steps holds and the reverse (``seq_len``, ``frames_to_fill``, ``frames_that_fit``,
``prompt_steps``), which slots are special (``valid_mask``, ``special_mask``), the vocabulary
(``embed_vocab_size``, ``sample_vocab_size``), per-position loss weights and per-level loss sums
(``position_weights``, ``level_sums``), and a sampling window in sequence space
(``sampling_inputs``). :func:`pattern_from_config` builds the layout a config names, from the
layout's own config keys (``config_kwargs``).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
from typing import Any, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

Array = Union[np.ndarray, jax.Array]

__all__ = [
    "Layout",
    "register_layout",
    "layout_names",
    "get_layout",
    "pattern_from_config",
    "FlatPattern",
    "ParallelPattern",
    "DelayPattern",
    "DepthPattern",
    "MultiStreamPattern",
    "make_pattern",
    "level_weights",
    "PATTERN_NAMES",
]

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


# --------------------------------------------------------------------------- protocol


class Layout:
    """What the LM task, the token writer and the samplers ask of a token layout.

    A sequence is ``[B, L]`` (one token per step: ``model_levels == 1``) or ``[B, R, L]`` (R
    rows per step, summed into one input by the model). A concrete layout is a frozen
    dataclass ``cls(num_levels, vocab_size, **config_kwargs)`` that defines ``build``,
    ``revert``, ``seq_shape``, ``num_frames``, ``valid_mask``, ``level_ids``,
    ``level_weights``, ``embed_vocab_size``, the step arithmetic (``seq_len``,
    ``frames_to_fill``, ``frames_that_fit``, ``prompt_steps``), ``special_mask``,
    ``position_weights``, ``level_sums`` and ``_for_streams`` (its widening to S stacked
    streams); :class:`FlatPattern` and ``_RowLayout`` (parallel, delayed) give a new layout
    all of them to inherit.
    """

    # Which model reads the sequence (lm/model_kinds.py): 'transformer' (one Transformer over
    # the steps, with ``model_levels`` summed input rows and as many heads) or 'depth' (Moshi's
    # temporal + depth transformers; the rows of a step are sampled level by level).
    model_kind = "transformer"

    @classmethod
    def config_kwargs(cls, model: Any, tokens: Any) -> dict:
        """The layout's own settings, read from the config's ``model`` / ``tokens`` sections."""
        del model, tokens
        return {}

    @property
    def total_levels(self) -> int:
        """Levels laid out per frame (all streams')."""
        return self.num_levels

    @property
    def model_levels(self) -> int:
        """Token rows the model reads and predicts per step (1: a flat sequence)."""
        raise NotImplementedError

    @property
    def max_delay(self) -> int:
        """Steps the layout adds after the last frame (0 unless levels are delayed)."""
        return 0

    @property
    def sample_vocab_size(self) -> Optional[int]:
        """Ids a sampler may draw are ``< sample_vocab_size`` (special ids are only forced)."""
        return self.embed_vocab_size

    def seq_len(self, num_frames: int) -> int:
        """Steps (the sequence's last axis) that ``num_frames`` frames lay out to."""
        return self.seq_shape(num_frames)[-1]

    def frames_to_fill(self, seq_len: int) -> int:
        """The fewest frames whose layout is at least ``seq_len`` steps (a training window)."""
        raise NotImplementedError

    def frames_that_fit(self, seq_len: int) -> int:
        """The most frames whose whole layout fits in ``seq_len`` steps (a model context)."""
        raise NotImplementedError

    def prompt_steps(self, num_frames: int) -> int:
        """Leading steps of a layout that ``num_frames`` known frames fix: the sampler's prompt
        (the steps after it are sampled, with the frames' delayed levels forced)."""
        raise NotImplementedError

    def special_mask(self, seq_len: int, *, include_tail: bool = True
                     ) -> Tuple[np.ndarray, np.ndarray]:
        """``(forced int32, mask bool)`` over a sequence of ``seq_len`` steps (shape
        ``seq_shape`` without the batch axis): the mask is True on the slots that hold no code
        and must hold ``forced`` (the special id) -- the head slots before a delayed level's
        first frame and, with ``include_tail``, the slots past the last frame; so with the
        tail it is ``~valid_mask(frames_that_fit(seq_len))``."""
        raise NotImplementedError

    def position_weights(self, weights: Optional[Sequence[float]], seq_len: int) -> np.ndarray:
        """float32 loss weights of the first ``seq_len`` steps of a training window (shaped
        like the sequence without the batch axis): each slot's level weight (``weights``
        per level as :meth:`level_weights` takes them; None = ones), 0 on special slots."""
        raise NotImplementedError

    def level_sums(self, values: jax.Array, first_step: int = 0) -> jax.Array:
        """Per-level sums ``[total_levels]`` of a per-slot quantity ``values`` shaped like a
        batch of sequences whose first step is ``first_step`` (the loss's targets start at 1):
        the LM's per-level loss report."""
        raise NotImplementedError

    def sampling_inputs(self, codes, given, prompt_frames: int):
        """One sampling window in sequence space.

        codes: int frames ``[B, K, F]`` (``[B, S, K, F]`` for streams), the first
          ``prompt_frames`` and every forced one filled in; given: bool, same shape, True
          where a frame's code is fixed (prompt, forcing).
        Returns ``(prompt [B, (R,) P], num_new, forced, forced_mask)``: the sampler's prompt
        (the first ``prompt_steps(prompt_frames)`` steps), how many steps to sample, and the
        forcing over all ``P + num_new`` steps: the given codes' slots and the special slots.
        """
        seq = np.asarray(self.build(codes))
        given = np.asarray(given).astype(np.int32)
        # build(given) - build(zeros) is the given mask on real slots and 0 on special slots,
        # and cancels flat level offsets.
        seq_mask = (np.asarray(self.build(given))
                    - np.asarray(self.build(np.zeros_like(given)))) == 1
        special, special_mask = self.special_mask(seq.shape[-1])
        seq = np.where(special_mask, special, seq)
        seq_mask = seq_mask | special_mask
        steps = self.prompt_steps(prompt_frames)
        return seq[..., :steps], seq.shape[-1] - steps, seq, seq_mask


# ----------------------------------------------------------------------------- flat


@dataclasses.dataclass(frozen=True)
class FlatPattern(Layout):
    """Level-interleaved flat sequence: ``b q t -> b (t q)``, shape ``[B, T*K]``.

    Position ``i`` holds level ``i % K`` of frame ``i // K``.  With
    ``level_offsets=True`` level q's tokens are shifted by ``q * vocab_size`` so
    one LM vocabulary of ``K * vocab_size`` ids distinguishes the levels
    (``revert`` removes the shift again).
    """

    num_levels: int
    vocab_size: Optional[int] = None
    level_offsets: bool = False
    streams: int = 1  # internal: >1 when laid out for MultiStreamPattern

    def __post_init__(self):
        _check_positive(self.num_levels, "num_levels")
        if self.vocab_size is not None:
            _check_positive(self.vocab_size, "vocab_size")
        if self.level_offsets and self.vocab_size is None:
            raise ValueError("level_offsets=True needs vocab_size")
        _check_positive(self.streams, "streams")
        if self.num_levels % self.streams:
            raise ValueError(f"num_levels {self.num_levels} is not a multiple of streams "
                             f"{self.streams}")

    @classmethod
    def config_kwargs(cls, model: Any, tokens: Any) -> dict:
        return {"level_offsets": bool(model.get("level_offsets", False))}

    @property
    def embed_vocab_size(self) -> Optional[int]:
        if self.vocab_size is None:
            return None
        return self.num_levels * self.vocab_size if self.level_offsets else self.vocab_size

    @property
    def model_levels(self) -> int:
        return 1

    def frames_to_fill(self, seq_len: int) -> int:
        return math.ceil(seq_len / self.total_levels)

    def frames_that_fit(self, seq_len: int) -> int:
        return seq_len // self.total_levels

    def prompt_steps(self, num_frames: int) -> int:
        return num_frames * self.total_levels

    def special_mask(self, seq_len: int, *, include_tail: bool = True
                     ) -> Tuple[np.ndarray, np.ndarray]:
        return np.zeros((seq_len,), np.int32), np.zeros((seq_len,), bool)

    def position_weights(self, weights: Optional[Sequence[float]], seq_len: int) -> np.ndarray:
        return self.level_weights(weights, seq_len).astype(np.float32)

    def level_sums(self, values: jax.Array, first_step: int = 0) -> jax.Array:
        """Sums over the batch and the positions of each level (values ``[B, L]``); laid out
        for S streams, level q of every stream is entry q (of ``S*K`` entries)."""
        n = first_step + values.shape[-1]
        ids = np.asarray(self.level_ids(n)[first_step:]) % (self.num_levels // self.streams)
        onehot = jax.nn.one_hot(ids, self.total_levels, dtype=jnp.float32)  # [L, levels]
        return jnp.einsum("bt,tr->r", values, onehot)

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
        return FlatPattern(self.num_levels * num_streams, self.vocab_size, self.level_offsets,
                           self.streams * num_streams)


# ------------------------------------------------------------------------- parallel


class _RowLayout(Layout):
    """Shared helpers for layouts whose sequence is ``[B, K, L]`` (one row per level): step s
    holds row q's code of frame ``s - delay_q`` (delay 0 unless the layout delays levels)."""

    num_levels: int
    vocab_size: Optional[int]

    @property
    def model_levels(self) -> int:
        return self.num_levels

    @property
    def sample_vocab_size(self) -> Optional[int]:
        return self.vocab_size

    def seq_shape(self, num_frames: int) -> Tuple[int, ...]:
        return (self.num_levels, num_frames + self.max_delay)

    def frames_to_fill(self, seq_len: int) -> int:
        return seq_len - self.max_delay

    def frames_that_fit(self, seq_len: int) -> int:
        return seq_len - self.max_delay

    def prompt_steps(self, num_frames: int) -> int:
        return num_frames

    def special_mask(self, seq_len: int, *, include_tail: bool = True
                     ) -> Tuple[np.ndarray, np.ndarray]:
        shape = (self.num_levels, int(seq_len))
        return np.zeros(shape, np.int32), np.zeros(shape, bool)

    def position_weights(self, weights: Optional[Sequence[float]], seq_len: int) -> np.ndarray:
        valid = np.asarray(self.valid_mask(self.frames_to_fill(seq_len)))
        return (self.level_weights(weights)[:, None] * valid).astype(np.float32)

    def level_sums(self, values: jax.Array, first_step: int = 0) -> jax.Array:
        """Sums over the batch and the steps of each row (values ``[B, R, L]``)."""
        return jnp.sum(values, axis=(0, 2))

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

    def _check_vocab(self):
        if self.vocab_size is None:
            raise ValueError(f"pattern {type(self).__name__} needs vocab_size (the special "
                             f"token id)")
        _check_positive(self.vocab_size, "vocab_size")

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

    def special_mask(self, seq_len: int, *, include_tail: bool = True
                     ) -> Tuple[np.ndarray, np.ndarray]:
        """Row q's first ``delays[q]`` steps and, with ``include_tail``, the slots past the
        last frame (``seq_len - max_delay`` frames) hold ``special_token``."""
        L = int(seq_len)
        delays = np.asarray(self.level_delays)[:, None]
        steps = np.arange(L)[None, :]
        mask = steps < delays  # the head
        if include_tail:
            if L < self.max_delay:
                raise ValueError(f"total_length {L} is shorter than the maximum delay "
                                 f"{self.max_delay}")
            mask = mask | (steps - delays >= L - self.max_delay)
        forced = np.where(mask, self.special_token, 0).astype(np.int32)
        return forced, mask

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
        self._check_vocab()
        delays = tuple(range(self.num_levels)) if self.delays is None else \
            tuple(int(d) for d in self.delays)
        _check_delays(delays, self.num_levels)
        object.__setattr__(self, "delays", delays)

    @classmethod
    def config_kwargs(cls, model: Any, tokens: Any) -> dict:
        """``model.delays`` (empty: level q is delayed by q)."""
        delays = model.get("delays")
        return {"delays": tuple(int(d) for d in delays)} if delays else {}

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

    model_kind = "depth"  # Moshi's temporal + depth transformers (lm/depth.py)

    def __post_init__(self):
        _check_positive(self.num_levels, "num_levels")
        self._check_vocab()
        _check_positive(self.streams, "streams")
        if isinstance(self.acoustic_delay, bool) or int(self.acoustic_delay) != \
                self.acoustic_delay or self.acoustic_delay < 0:
            raise ValueError(f"acoustic_delay must be a non-negative integer, "
                             f"got {self.acoustic_delay!r}")
        per_stream = self.num_levels // self.streams
        if self.num_levels % self.streams or not 0 <= self.num_semantic <= per_stream:
            raise ValueError(f"num_semantic must be in [0, {per_stream}], "
                             f"got {self.num_semantic!r}")

    @classmethod
    def config_kwargs(cls, model: Any, tokens: Any) -> dict:
        """``model.acoustic_delay``; the first level is semantic unless
        ``tokens.drop_semantic`` left it out."""
        return {"acoustic_delay": int(model.acoustic_delay),
                "num_semantic": 0 if tokens.get("drop_semantic", False) else 1}

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
class MultiStreamPattern(Layout):
    """S parallel code streams ``[B, S, K, T]`` (e.g. Moshi's user + model audio).

    The streams' levels are stacked per frame, stream-major (row ``s*K + q``),
    and laid out with ``base`` widened to ``S*K`` levels (per-level delays and
    ``num_semantic`` repeat per stream; flat ``level_offsets`` apply per row
    ``s*K + q``).  So flat frame t is ``[s0 l0..lK-1, s1 l0..lK-1]`` and
    sequences are ``[B, T*S*K]`` (flat) or ``[B, S*K, L]`` (others).
    ``revert`` returns ``[B, S, K, T]``.

    Everything but the stream-aware ``build`` / ``revert`` / ``level_ids`` /
    ``level_weights`` / ``stream_ids`` is the widened base layout's (:attr:`inner`).
    """

    base: Layout
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

    @property
    def model_kind(self) -> str:
        return self.base.model_kind

    @property
    def model_levels(self) -> int:
        return self.inner.model_levels

    @property
    def max_delay(self) -> int:
        return self.inner.max_delay

    @property
    def sample_vocab_size(self):
        return self.inner.sample_vocab_size

    def seq_shape(self, num_frames: int) -> Tuple[int, ...]:
        return self.inner.seq_shape(num_frames)

    def seq_len(self, num_frames: int) -> int:
        return self.inner.seq_len(num_frames)

    def num_frames(self, seq_len: int) -> int:
        return self.inner.num_frames(seq_len)

    def frames_to_fill(self, seq_len: int) -> int:
        return self.inner.frames_to_fill(seq_len)

    def frames_that_fit(self, seq_len: int) -> int:
        return self.inner.frames_that_fit(seq_len)

    def prompt_steps(self, num_frames: int) -> int:
        return self.inner.prompt_steps(num_frames)

    def valid_mask(self, num_frames: int) -> np.ndarray:
        return self.inner.valid_mask(num_frames)

    def special_mask(self, seq_len: int, *, include_tail: bool = True
                     ) -> Tuple[np.ndarray, np.ndarray]:
        return self.inner.special_mask(seq_len, include_tail=include_tail)

    def position_weights(self, weights: Optional[Sequence[float]], seq_len: int) -> np.ndarray:
        """As the base layout's, with K weights shared by the streams (or S*K of them)."""
        return self.inner.position_weights(self._stream_weights(weights), seq_len)

    def level_sums(self, values: jax.Array, first_step: int = 0) -> jax.Array:
        return self.inner.level_sums(values, first_step)

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
        return self.inner.level_weights(self._stream_weights(weights), seq_len)

    def _stream_weights(self, weights):
        if weights is not None and len(weights) == self.num_levels:
            weights = list(weights) * self.num_streams
        return weights


# ------------------------------------------------------------------------ registry


_LAYOUTS: dict = {}


def register_layout(name: str, cls: Optional[type] = None):
    """Makes ``cls`` the layout ``model.layout = name`` builds (also as ``@register_layout(
    name)``). ``cls(num_levels, vocab_size, **cls.config_kwargs(model, tokens))`` must give a
    :class:`Layout`. Registering another class under a taken name is refused."""
    def add(layout_cls):
        if not (isinstance(layout_cls, type) and issubclass(layout_cls, Layout)):
            raise TypeError(f"layout {name!r}: {layout_cls!r} is not a Layout subclass")
        if _LAYOUTS.get(name, layout_cls) is not layout_cls:
            raise ValueError(f"layout {name!r} is already registered "
                             f"({_LAYOUTS[name].__name__})")
        _LAYOUTS[name] = layout_cls
        return layout_cls
    return add if cls is None else add(cls)


def layout_names() -> Tuple[str, ...]:
    """The registered layout names, in registration order."""
    return tuple(_LAYOUTS)


class _LayoutNames(collections.abc.Sequence):
    """A live, read-only view of :func:`layout_names` (layouts registered later show up)."""

    def __getitem__(self, i):
        return layout_names()[i]

    def __len__(self):
        return len(_LAYOUTS)

    def __repr__(self):
        return repr(layout_names())


PATTERN_NAMES = _LayoutNames()


def get_layout(name: str) -> type:
    """The layout class registered as ``name``; ValueError naming the registered ones."""
    try:
        return _LAYOUTS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown pattern {name!r}; expected one of {layout_names()}") from None


register_layout("flat", FlatPattern)
register_layout("parallel", ParallelPattern)
register_layout("delay", DelayPattern)
register_layout("depth", DepthPattern)


# ------------------------------------------------------------------------- helpers


Pattern = Layout


def make_pattern(name: str, num_levels: int, vocab_size: Optional[int] = None,
                 num_streams: int = 1, **kw) -> Layout:
    """Layout by registered name (:func:`layout_names`): 'flat' (kw: level_offsets),
    'parallel', 'delay' (kw: delays), 'depth' (kw: acoustic_delay, num_semantic), ...;
    ``num_streams > 1`` wraps it in a :class:`MultiStreamPattern`."""
    pattern = get_layout(name)(num_levels, vocab_size, **kw)
    if num_streams != 1:
        pattern = MultiStreamPattern(pattern, num_streams)
    return pattern


def pattern_from_config(config: Any) -> Layout:
    """The layout an LM config names (``model.layout``) over its ``tokens`` (levels, codebook,
    streams), with the layout's own config keys (``config_kwargs``)."""
    m, t = config.model, config.tokens
    kw = get_layout(m.layout).config_kwargs(m, t)
    return make_pattern(m.layout, int(t.num_levels), int(t.codebook_size),
                        num_streams=int(t.num_streams), **kw)


def level_weights(weights: Optional[Sequence[float]], pattern: Pattern,
                  seq_len: Optional[int] = None) -> np.ndarray:
    """Expand per-level loss weights (e.g. ``[10] + [0.1] * 7``; None = all ones).

    Flat layouts: per-position ``[seq_len]`` (position i gets ``weights[i % K]``).
    Row layouts (parallel / delay / depth): per-level ``[K]`` (``[S*K]`` for
    multi-stream), to broadcast against a ``[B, K, L]`` loss as ``w[:, None]``.
    """
    return pattern.level_weights(weights, seq_len)
