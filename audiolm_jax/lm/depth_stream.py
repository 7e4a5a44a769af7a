"""Streaming, frame-by-frame generation with this library's two-stream depth LMs
(``configs/lm/duplex.py``): the model speaks stream 0 while the user's codes arrive one frame at
a time and are forced into stream 1, as a live conversation runs.

The layout (:class:`~audiolm_jax.lm.patterns.DepthPattern` inside a two-stream
:class:`~audiolm_jax.lm.patterns.MultiStreamPattern`) has one column per step with R = 2K rows
(the model's K levels, then the user's), row r holding frame ``step - delays[r]`` (the acoustic
levels one step late). Per step ``o`` (the user's frame ``o`` just arrived)::

    column o, depth transformer from hidden[o - 1], row by row:
        model rows    sampled (ids < codebook_size); at o = 0 forced: the codec's silence
                      on undelayed rows (there is no hidden yet), the special id on delayed ones
        user rows     forced: user frame o - delays[r], or the special id while o < delays[r]
    hidden[o] = temporal transformer(column o)          one position, KV cache of ``context``
    output    = the model's frame o - max(delays), un-delayed (valid once o >= max(delays))

The model's rows come first in the depth order, so they are sampled from the past columns only
(the user's row of the same column is seen by the next column), as the offline duplex
generation (``generate --input_stream``, :func:`~audiolm_jax.lm.depth_sampling.generate_depth`
with forcing) samples them. The step is one pure function of a batch-1 state, vmapped over a
server's slots as :mod:`audiolm_jax.moshi.slots` does for Moshi; sampling settings are traced,
so sessions with other settings share one program. The temporal transformer has no sliding
window: a conversation holds at most ``context`` frames.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from audiolm_jax.lm.depth import DepthTransformerLM
from audiolm_jax.lm.sampling import sample_token_traced
from audiolm_jax.lm.transformer import init_cache


@dataclasses.dataclass(frozen=True)
class DepthStream:
    """What a streaming step needs of a two-stream depth LM (hashable: a static argument)."""

    model: DepthTransformerLM
    levels: int  # K: levels per stream
    delays: tuple  # per row (R = 2K, the model's rows first)
    special: int  # the layout's id for empty delayed slots
    codebook_size: int  # sampled ids are < this

    @classmethod
    def of_task(cls, task) -> "DepthStream":
        """From an :class:`~audiolm_jax.lm.task.LMTask` of a two-stream depth-layout LM;
        ValueError for any other LM."""
        pattern = task.pattern
        if pattern.model_kind != "depth" or task.num_streams != 2:
            raise ValueError(f"streaming needs a two-stream depth-layout LM (configs/lm/"
                             f"duplex.py); this LM is {task.num_streams} stream(s) in the "
                             f"{pattern.model_kind!r} layout")
        inner = pattern.inner
        return cls(task.model, int(task.num_levels), tuple(int(d) for d in inner.level_delays),
                   int(inner.special_token), int(pattern.sample_vocab_size))

    @property
    def max_delay(self) -> int:
        return max(self.delays)

    @property
    def context(self) -> int:
        """Frames one conversation can hold (the temporal transformer's context)."""
        return int(self.model.config.temporal.context)


class StreamSampling(NamedTuple):
    """Sampling settings as traced values (``[S]`` arrays when stacked over slots).
    Temperature 0 is greedy; top_k 0 keeps every id."""

    temperature: Any
    top_k: Any


class DepthStreamState(NamedTuple):
    """A conversation's state between steps (a pytree: a step is one compiled call)."""

    kv: Any  # the temporal transformer's KV cache (``context`` positions)
    hidden: jax.Array  # [B, W]: the temporal output at the last column
    user: jax.Array  # int32 [B, K, D + 1]: the user's last frames, frame f at f % (D + 1)
    model: jax.Array  # int32 [B, K, D + 1]: the model's rows of the last columns, by column
    offset: jax.Array  # int32 [B]: steps taken
    key: jax.Array  # PRNG key


def init_stream_state(spec: DepthStream, batch_size: int, seed=0) -> DepthStreamState:
    """A fresh conversation: empty caches, offset 0, the PRNG from ``seed`` (may be traced)."""
    t = spec.model.config.temporal
    ring = (batch_size, spec.levels, spec.max_delay + 1)
    return DepthStreamState(
        init_cache(t, batch_size, spec.context), jnp.zeros((batch_size, t.width), t.dtype),
        jnp.zeros(ring, jnp.int32), jnp.zeros(ring, jnp.int32),
        jnp.zeros((batch_size,), jnp.int32), jax.random.PRNGKey(seed))


def stream_step(spec: DepthStream, params, state: DepthStreamState, user_codes, silence,
                sampling: StreamSampling):
    """One step, a pure function: user codes int ``[B, K]`` (frame ``offset``), ``silence``
    int ``[K]`` (the codec's codes of silence) -> (state, the model's codes int32 ``[B, K]``
    of frame ``offset - max(delays)``, valid bool ``[B]``). See the module docstring."""
    K, D = spec.levels, spec.max_delay
    ring = D + 1
    delays = np.asarray(spec.delays, np.int32)
    B = state.offset.shape[0]
    b = jnp.arange(B)[:, None]
    o = state.offset
    run = functools.partial(spec.model.apply, {"params": params})

    user = state.user.at[b, jnp.arange(K)[None], (o % ring)[:, None]].set(
        jnp.asarray(user_codes, jnp.int32))
    frames = o[:, None] - delays[None, K:]  # [B, K]: the user frame each user row holds
    user_col = jnp.take_along_axis(user, (frames % ring)[..., None], axis=2)[..., 0]
    user_col = jnp.where(frames >= 0, user_col, spec.special)
    first = o[:, None] == 0
    model_col = jnp.where(o[:, None] < delays[None, :K], spec.special,
                          jnp.asarray(silence, jnp.int32)[None])
    forced = jnp.concatenate([model_col, user_col], axis=1)  # [B, R]
    forced_mask = jnp.concatenate([first | (o[:, None] < delays[None, :K]),
                                   jnp.ones((B, K), bool)], axis=1)

    key, sub = jax.random.split(state.key)
    level_keys = jax.random.split(sub, 2 * K)

    def choose(k, logits):  # level k of the column: sampled, or forced
        drawn = sample_token_traced(level_keys[k], logits[:, :spec.codebook_size],
                                    sampling.temperature, sampling.top_k)
        return jnp.where(forced_mask[:, k], forced[:, k], drawn)

    column, _ = run(state.hidden, choose, method=DepthTransformerLM.decode_frame)  # [B, R]
    hidden, kv = run(column[..., None], state.kv, o[0],
                     method=DepthTransformerLM.temporal_decode)
    model = state.model.at[b, jnp.arange(K)[None], (o % ring)[:, None]].set(column[:, :K])
    cols = o[:, None] - D + delays[None, :K]  # the column holding each level of frame o - D
    out = jnp.take_along_axis(model, (cols % ring)[..., None], axis=2)[..., 0]
    new = DepthStreamState(kv, hidden[:, -1].astype(state.hidden.dtype), user, model, o + 1, key)
    return new, out, o >= D


def one_slot_step(spec: DepthStream, params, state, user_codes, silence, sampling, active):
    """One slot's step (vmapped over slots): an inactive slot's state does not move. Its KV
    cache and rings are written at its offset, but its next real step rewrites those cells
    before reading them."""
    new, out, valid = stream_step(spec, params, state, user_codes, silence, sampling)
    keep = lambda n, o_: jnp.where(active, n, o_)
    new = new._replace(hidden=keep(new.hidden, state.hidden), offset=keep(new.offset, state.offset),
                       key=keep(new.key, state.key))
    return new, out, valid[0] & active


def slots_step(spec: DepthStream, params, states, user_codes, silence, sampling, active):
    """Every slot's step: ``states`` stacked ``[S, ...]`` over batch-1 states, ``user_codes``
    int ``[S, K]``, ``sampling`` a :class:`StreamSampling` of ``[S]`` arrays, ``active`` bool
    ``[S]`` -> (states, the model's codes int32 ``[S, K]``, valid bool ``[S]``)."""
    step = jax.vmap(functools.partial(one_slot_step, spec),
                    in_axes=(None, 0, 0, None, 0, 0))
    states, out, valid = step(params, states, user_codes[:, None], silence, sampling, active)
    return states, out[:, 0], valid


@functools.lru_cache(maxsize=8)
def _compiled_step(spec: DepthStream):
    """The jitted :func:`stream_step` of a model, shared by every call for it."""
    return jax.jit(functools.partial(stream_step, spec))


def generate_stream(spec: DepthStream, params, user_codes, silence, *, temperature=0.0,
                    top_k: int = 0, seed: int = 0) -> np.ndarray:
    """:func:`stream_step` over the user's codes ``[B, K, T]`` -> the model's codes int32
    ``[B, K, T - max(delays)]`` (a reference loop: a server steps one frame at a time)."""
    user_codes = np.asarray(user_codes)
    B, _, T = user_codes.shape
    if T > spec.context:
        raise ValueError(f"{T} frames exceed the model's context of {spec.context} frames")
    state = init_stream_state(spec, B, seed)
    sampling = StreamSampling(jnp.float32(temperature), jnp.int32(top_k))
    step = _compiled_step(spec)
    outs = []
    for t in range(T):
        state, out, valid = step(params, state, user_codes[:, :, t], silence, sampling)
        if bool(np.asarray(valid).all()):
            outs.append(np.asarray(out))
    return np.stack(outs, axis=-1) if outs else np.zeros((B, spec.levels, 0), np.int32)
