"""Sampling from a :class:`~audiolm_jax.lm.transformer.Transformer` with its KV cache.

Two pieces:

* :func:`sample_logits` draws one token per row of ``[..., V]`` logits with temperature,
  top-k and nucleus (top-p) filtering; temperature 0 is greedy. It is jit-compatible
  (``temperature`` and ``top_p`` may be traced scalars, ``top_k`` is a static int);
  :func:`sample_with_noise` is the same draw with its Gumbel noise given.
* :func:`generate` prefills the cache with the prompt (one ``decode`` call on the whole
  prompt), then samples ``num_new`` tokens inside ``jax.lax.scan`` (chunks of steps whose
  sampling noise is drawn at once), feeding each token back through ``Transformer.decode``.
  The whole thing is one jitted function, compiled once per (model, shapes, num_new, top_k,
  max_length, allowed_vocab, forcing or not).

The loop itself -- output buffer and forcing, prefill, the KV cache grown segment by segment,
the scan over noise chunks -- is :func:`decode_loop`, which the depth transformer's sampler
(:mod:`audiolm_jax.lm.depth_sampling`) runs too; a sampler only supplies its per-step
``advance`` (here: sample the logits, force, one ``Transformer.decode``).

Layouts:

* single level (``num_levels == 1``): prompt ``[B, P]`` -> tokens ``[B, P + num_new]``. A flat
  multi-codebook layout is just this, with level ``q`` at positions ``i % K == q``.
* multi-level (parallel / delay / depth layouts): prompt ``[B, K, P]`` -> ``[B, K, P + num_new]``;
  each step samples all K levels at once from their heads.

Teacher forcing: ``forced`` (tokens, the output's shape or broadcastable to it) and
``forced_mask`` (bool, same) replace the sampled token wherever the mask is True, and the
forced token is what is fed back to the model. Forced positions inside the prompt overwrite
the prompt too. E.g. keep level 0 from a prompt file and resample the rest ("same words,
another voice"): for a flat layout force positions ``i % K == 0``; for row layouts force row 0.

Delay layouts: the empty slots of the first steps (and, for a fixed total length, of the last
ones) must hold the special token ``pattern.special_token``; :func:`delay_special_mask`
gives the ``(forced, forced_mask)`` for them, and :func:`combine_forced` merges it with other
forcing. ``allowed_vocab`` (static) restricts sampling to ids ``< allowed_vocab``, e.g.
``pattern.vocab_size`` so a model with ``vocab_size + 1`` outputs never samples the special
token in a real slot.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from audiolm_jax.lm.transformer import Transformer, init_cache
from audiolm_jax.runtime.xla_options import compiler_options

__all__ = ["sample_logits", "sample_token_traced", "sample_with_noise", "step_noise", "scan_steps_with_noise",
           "segment_plan", "grow_cache", "scan_growing_cache", "decode_loop",
           "generate", "generate_cache_size", "check_new_steps", "delay_special_mask",
           "combine_forced", "GREEDY_EPS"]

GREEDY_EPS = 1e-6  # temperature at or below this is greedy argmax


# ----------------------------------------------------------------------------- sampling


def _top_k_filter(logits: jax.Array, top_k: int) -> jax.Array:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]  # [..., 1]
    return jnp.where(logits < kth, -jnp.inf, logits)


def _top_p_filter(logits: jax.Array, top_p) -> jax.Array:
    """Keep the smallest set of largest-probability tokens whose mass is >= top_p (at least
    the top token); the rest get -inf. Ties at the threshold are all kept."""
    sorted_logits = -jnp.sort(-logits, axis=-1)  # descending
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly better tokens
    keep = mass_before < top_p
    keep = keep.at[..., 0].set(True)
    num_keep = jnp.sum(keep, axis=-1, keepdims=True)  # keep is a prefix, so a count suffices
    threshold = jnp.take_along_axis(sorted_logits, num_keep - 1, axis=-1)
    return jnp.where(logits < threshold, -jnp.inf, logits)


def sample_logits(logits: jax.Array, rng: jax.Array, *, temperature=1.0, top_k: int = 0,
                  top_p=1.0, allowed_vocab: Optional[int] = None) -> jax.Array:
    """One token id (int32) per row of ``logits [..., V]`` -> ``[...]``.

    ``temperature <= GREEDY_EPS`` is greedy argmax. Otherwise the logits are divided by the
    temperature, filtered by top-k (``top_k > 0``: keep the k largest; a static int) and top-p
    (keep the smallest set whose cumulative probability is >= ``top_p``, always at least the
    top token), and sampled. ``temperature`` / ``top_p`` may be traced scalars.
    ``allowed_vocab`` (static) forbids ids ``>= allowed_vocab``.
    """
    noise = jax.random.gumbel(rng, jnp.shape(logits), jnp.float32)
    return sample_with_noise(logits, noise, temperature=temperature, top_k=top_k, top_p=top_p,
                             allowed_vocab=allowed_vocab)


def sample_token_traced(key, logits, temperature, top_k):
    """Logits [..., V] -> int32 [...]: a draw from softmax(top-k logits / temperature) with
    ``temperature`` and ``top_k`` traced scalars (so per-conversation settings compile
    nothing). The top-k cut is a threshold at the k-th largest logit (a sort, since k is not
    static), so ties with it are kept. Greedy where ``temperature <= 0``; top_k 0 keeps all."""
    logits = logits.astype(jnp.float32)
    V = logits.shape[-1]
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    k = jnp.where((top_k > 0) & (top_k < V), top_k, V)
    kth = jnp.take(jnp.sort(logits, axis=-1), V - k, axis=-1)
    kept = jnp.where(logits >= kth[..., None], logits, -jnp.inf)
    drawn = jax.random.categorical(key, kept / jnp.maximum(temperature, 1e-6), axis=-1)
    return jnp.where(temperature > 0, drawn.astype(jnp.int32), greedy)


def sample_with_noise(logits: jax.Array, gumbel_noise: jax.Array, *, temperature=1.0,
                      top_k: int = 0, top_p=1.0, allowed_vocab: Optional[int] = None
                      ) -> jax.Array:
    """:func:`sample_logits` with its standard Gumbel noise given (``logits``' shape): the
    Gumbel-max draw ``argmax(filtered logits / temperature + noise)``, which is exactly what
    ``jax.random.categorical`` computes, so noise ``jax.random.gumbel(rng, logits.shape)``
    gives the same token as ``sample_logits(logits, rng)``."""
    logits = jnp.asarray(logits, jnp.float32)
    V = logits.shape[-1]
    if allowed_vocab is not None and allowed_vocab < V:
        logits = jnp.where(jnp.arange(V) < allowed_vocab, logits, -jnp.inf)

    top_k = int(top_k)
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    temperature = jnp.asarray(temperature, jnp.float32)
    greedy = temperature <= GREEDY_EPS
    scaled = logits / jnp.where(greedy, 1.0, temperature)
    if 0 < top_k < V:
        scaled = _top_k_filter(scaled, top_k)
    skip_top_p = isinstance(top_p, (int, float)) and top_p >= 1.0
    if not skip_top_p:
        scaled = _top_p_filter(scaled, jnp.asarray(top_p, jnp.float32))
    # Greedy is the same argmax without the noise: the filters keep the top token (and every
    # tie with it), so this equals argmax(logits), with one pass over the vocabulary a step.
    noise = jnp.where(greedy, jnp.zeros((), jnp.float32), gumbel_noise)
    return jnp.argmax(noise + scaled, axis=-1).astype(jnp.int32)


# Gumbel noise for this many bytes of sampling steps is drawn at once, before the steps run.
# On CPU, JAX's threefry generator is a small loop of its own, so drawing inside every step
# cost ~1 ms per token at batch 1 (a quarter of the step) in loop overhead and copies.
_NOISE_CHUNK_BYTES = 16 << 20


def step_noise(rng: jax.Array, steps: jax.Array, shape: Tuple[int, ...]) -> jax.Array:
    """Gumbel noise ``[len(steps), *shape]``: row j is what step ``steps[j]`` of
    :func:`generate` draws, ``jax.random.gumbel(jax.random.fold_in(rng, steps[j]), shape)``."""
    return jax.vmap(lambda i: jax.random.gumbel(jax.random.fold_in(rng, i), shape,
                                                jnp.float32))(steps)


def noise_chunk(num_steps: int, shape: Tuple[int, ...]) -> int:
    """Steps per noise draw: the largest divisor of ``num_steps`` whose noise fits in
    ``_NOISE_CHUNK_BYTES`` (a divisor, so one scan body serves every chunk)."""
    per_step = 4 * max(1, int(np.prod(shape)))
    limit = max(1, _NOISE_CHUNK_BYTES // per_step)
    if num_steps <= limit:
        return max(1, num_steps)
    return max(c for c in range(1, limit + 1) if num_steps % c == 0)


def scan_steps_with_noise(step, carry, num_steps: int, draw, shape: Tuple[int, ...],
                          first_step: int = 0):
    """Run ``carry = step(carry, i, noise_i)`` for i in ``first_step .. first_step +
    num_steps - 1`` inside ``lax.scan``s. ``draw(steps)`` returns the noise
    ``[len(steps), *shape]`` of a vector of step indices; it is called once per chunk of steps
    (:func:`noise_chunk`), not per step. Returns the final carry."""
    chunk = noise_chunk(num_steps, shape)

    def run_chunk(carry, c):
        steps = first_step + c * chunk + jnp.arange(chunk, dtype=jnp.int32)
        carry, _ = jax.lax.scan(lambda cr, x: (step(cr, *x), None), carry, (steps, draw(steps)))
        return carry, None

    carry, _ = jax.lax.scan(run_chunk, carry, jnp.arange(num_steps // chunk, dtype=jnp.int32))
    return carry


# ----------------------------------------------------------------------------- growing cache

# Decode attention reads every slot of the KV cache, live or not, and at batch 8 those reads
# are half of a step's memory traffic. So the sampling loop runs in segments whose cache holds
# only the slots the segment can reach, grown (zero-padded, once per segment) in between:
# 4 segments over a 64-token prompt + 256 new tokens read 70% of the fixed-size cache's bytes.
# Each segment is its own scan body, so short generations (every segment at least this many
# steps) stay one segment and compile nothing extra.
MAX_CACHE_SEGMENTS = 4
MIN_SEGMENT_STEPS = 64


def segment_plan(prompt_len: int, num_new: int, max_length: int,
                   segments: Optional[int] = None) -> Tuple[Tuple[int, int, int], ...]:
    """How the sampling loop's ``num_new`` steps split into segments: a tuple of
    ``(first_step, num_steps, cache_length)``. Step i feeds the token at position
    ``prompt_len + i``, so a segment whose last step is j - 1 gets ``prompt_len + j`` slots.
    ``segments`` (default: one per ``MIN_SEGMENT_STEPS`` steps, at most
    ``MAX_CACHE_SEGMENTS``) is clamped to ``1..num_new``; a single segment keeps the whole
    ``max_length`` cache."""
    if segments is None:
        segments = min(MAX_CACHE_SEGMENTS, num_new // MIN_SEGMENT_STEPS)
    segments = max(1, min(int(segments), num_new))
    plan, first = [], 0
    for j in range(segments):
        n = num_new // segments + (1 if j < num_new % segments else 0)
        need = prompt_len + first + n
        length = max_length if segments == 1 else need
        plan.append((first, n, length))
        first += n
    return tuple(plan)


def grow_cache(cache, length: int):
    """A KV cache (``{'k', 'v'}`` tuples of ``[N, S, D]``) zero-padded to ``length`` slots;
    the same object when it already has them. Slots past the live ones are masked anyway."""
    def grow(c):
        extra = length - c.shape[1]
        return c if extra == 0 else jnp.pad(c, ((0, 0), (0, extra), (0, 0)))
    return jax.tree.map(grow, cache)


def scan_growing_cache(step, carry, plan, draw, shape):
    """:func:`scan_steps_with_noise` over the segments of ``plan`` (:func:`segment_plan`),
    growing the cache (``carry[1]``) to each segment's length before it runs."""
    for first, num_steps, length in plan:
        carry = (carry[0], grow_cache(carry[1], length)) + tuple(carry[2:])
        carry = scan_steps_with_noise(step, carry, num_steps, draw, shape, first_step=first)
    return carry


# ----------------------------------------------------------------------------- generate


# (state, cache, position, noise, forced) -> (tokens, state, cache): one step of a sampler.
# ``forced`` is None or the step's (tokens, mask) column; the tokens returned are the step's
# output column (forcing applied), already fed back into the cache at ``position``.
Advance = Callable[[Any, Any, jax.Array, jax.Array, Optional[Tuple[jax.Array, jax.Array]]],
                   Tuple[jax.Array, Any, Any]]


def decode_loop(prompt, forced, forced_mask, *, num_new: int, max_length: int,
                segments: Optional[int], init_cache: Callable[[int], Any],
                prefill: Callable[[jax.Array, Any], Tuple[Any, Any]], advance: Advance,
                noise_shape: Callable[[Any], Tuple[int, ...]],
                draw: Callable[[jax.Array, Tuple[int, ...]], jax.Array]):
    """The sampling loop every sampler runs (traced inside its jitted function).

    prompt ``[..., P]`` int32 is continued by ``num_new`` steps into ``out [..., P + num_new]``
    (forced slots, the prompt's included, take the forced tokens). The KV cache
    (``init_cache(length)``) grows by :func:`segment_plan`'s segments; ``prefill(prompt,
    cache) -> (state, cache)`` reads the prompt; then, in ``lax.scan`` over chunks of steps
    whose noise ``draw(steps, shape) -> [len(steps), *shape]`` is drawn at once (``shape =
    noise_shape(state)``: one step's), step i runs
    ``advance(state, cache, P + i, noise_i, forced column or None)``, which samples (and
    forces) the tokens at position ``P + i`` and feeds them back. Returns ``out``.
    """
    P = prompt.shape[-1]
    total = P + num_new
    out = jnp.zeros(prompt.shape[:-1] + (total,), jnp.int32)
    out = jax.lax.dynamic_update_slice_in_dim(out, prompt.astype(jnp.int32), 0, axis=-1)
    if forced is not None:
        out = jnp.where(forced_mask, forced, out)  # forced prompt slots too

    plan = segment_plan(P, num_new, max_length, segments)
    state, cache = prefill(out[..., :P], init_cache(plan[0][2]))
    if num_new == 0:
        return out

    def step(carry, i, noise):
        out, cache, state = carry
        pos = P + i
        column = None
        if forced is not None:
            column = (jax.lax.dynamic_index_in_dim(forced, pos, axis=-1, keepdims=False),
                      jax.lax.dynamic_index_in_dim(forced_mask, pos, axis=-1, keepdims=False))
        # The tokens are always fed back, even the last ones (their slot exists): a lax.cond
        # here would make XLA copy the whole cache every step.
        tok, state, cache = advance(state, cache, pos, noise, column)
        out = jax.lax.dynamic_update_slice_in_dim(out, tok[..., None], pos, axis=-1)
        return out, cache, state

    shape = tuple(noise_shape(state))
    out, _, _ = scan_growing_cache(step, (out, cache, state), plan,
                                   lambda steps: draw(steps, shape), shape)
    return out


def _last(logits):
    """Logits of the last position: [B, T, V] -> [B, V]; [B, K, T, V] -> [B, K, V]."""
    return logits[..., -1, :]


def _generate_impl(model: Transformer, params, prompt, rng, temperature, top_p, forced,
                   forced_mask, *, num_new: int, top_k: int, max_length: int,
                   allowed_vocab: Optional[int], use_top_p: bool = True,
                   segments: Optional[int] = None):
    B = prompt.shape[0]

    def decode(tokens, cache, index):
        logits, cache = model.apply({"params": params}, tokens, cache, index,
                                    method=Transformer.decode)
        return _last(logits), cache

    def advance(logits, cache, pos, noise, column):  # one Transformer.decode per step
        # top_p >= 1 keeps everything: skip its per-step sort of the vocabulary (static).
        tok = sample_with_noise(logits, noise, temperature=temperature, top_k=top_k,
                                top_p=top_p if use_top_p else 1.0, allowed_vocab=allowed_vocab)
        if column is not None:
            tok = jnp.where(column[1], column[0], tok)
        logits, cache = decode(tok[..., None], cache, pos)
        return tok, logits, cache

    # A step's noise has its logits' shape: [B, V] or [B, K, V].
    return decode_loop(prompt, forced, forced_mask, num_new=num_new, max_length=max_length,
                       segments=segments, init_cache=lambda n: init_cache(model.config, B, n),
                       prefill=lambda tokens, cache: decode(tokens, cache, 0), advance=advance,
                       noise_shape=jnp.shape,
                       draw=lambda steps, shape: step_noise(rng, steps, shape))


@functools.cache
def _generate_jit():
    # Built on first use: the CPU kernel options query the backend, which must not happen at
    # import (a multi-process job initialises jax.distributed first).
    return jax.jit(
        _generate_impl,
        static_argnames=("model", "num_new", "top_k", "max_length", "allowed_vocab", "use_top_p",
                         "segments"),
        compiler_options=compiler_options("lm_sample"))


def generate_cache_size() -> int:
    """How many compiled versions of the generate function exist (for recompilation checks)."""
    return _generate_jit()._cache_size()


def generate(model: Transformer, params: Any, prompt, num_new: int, rng: jax.Array, *,
             temperature=1.0, top_k: int = 0, top_p=1.0, max_length: Optional[int] = None,
             forced=None, forced_mask=None, allowed_vocab: Optional[int] = None,
             cache_segments: Optional[int] = None) -> jax.Array:
    """Continue ``prompt`` by ``num_new`` sampled tokens with the KV cache.

    model: a :class:`Transformer` (hashable; static). params: its (unboxed) params.
    prompt: int ``[B, P]`` (``num_levels == 1``) or ``[B, K, P]`` (``num_levels == K``), P >= 1.
    rng: a PRNG key; step i uses ``fold_in(rng, i)``.
    temperature / top_p: floats (traced: changing them does not recompile, except switching
      top_p between 1, which skips the nucleus filter, and < 1); top_k: static int.
    max_length: cache length (static), default and minimum ``P + num_new``; at most
      ``config.context`` with learned positions.
    forced / forced_mask: optional tokens and bool mask, shaped like (or broadcastable to)
      the output ``[B, P + num_new]`` / ``[B, K, P + num_new]``: where the mask is True the
      output (and the token fed back) is the forced one, in the prompt as well.
    allowed_vocab: optional static int; ids >= it are never sampled (forcing may still write
      them, e.g. the delay layout's special token).
    cache_segments: optional static int: the sampling loop runs in this many segments, each
      with a KV cache just long enough for it (see :func:`segment_plan`); default one per
      ``MIN_SEGMENT_STEPS`` new tokens, at most ``MAX_CACHE_SEGMENTS``. 1 keeps the
      ``max_length`` cache throughout. Tokens are the same either way (up to float rounding).

    Returns int32 tokens ``[B, P + num_new]`` or ``[B, K, P + num_new]``; the first P are the
    prompt (with forcing applied). Greedy (temperature 0) output is deterministic.
    """
    cfg = model.config
    prompt = jnp.asarray(prompt, jnp.int32)
    want = 2 if cfg.num_levels == 1 else 3
    if prompt.ndim != want or (want == 3 and prompt.shape[1] != cfg.num_levels):
        raise ValueError(f"prompt must be {'[B, P]' if want == 2 else '[B, K, P]'} with "
                         f"K={cfg.num_levels}, got shape {prompt.shape}")
    num_new, total = check_new_steps(prompt, num_new)
    max_length = total if max_length is None else int(max_length)
    if max_length < total:
        raise ValueError(f"max_length {max_length} < prompt + num_new = {total}")
    if cfg.positions == "learned" and max_length > cfg.context:
        raise ValueError(f"prompt + num_new = {total} exceeds the learned context {cfg.context}"
                         if total > cfg.context else
                         f"max_length {max_length} exceeds the learned context {cfg.context}")
    forced, forced_mask = broadcast_forced(forced, forced_mask, prompt.shape[:-1] + (total,))
    return _generate_jit()(model, params, prompt, rng, jnp.asarray(temperature, jnp.float32),
                         jnp.asarray(top_p, jnp.float32), forced, forced_mask,
                         num_new=num_new, top_k=int(top_k), max_length=max_length,
                         allowed_vocab=None if allowed_vocab is None else int(allowed_vocab),
                         use_top_p=not _keeps_everything(top_p),
                         segments=None if cache_segments is None else int(cache_segments))


def check_new_steps(prompt, num_new, *, name: str = "num_new",
                    unit: str = "token") -> Tuple[int, int]:
    """``(num_new, prompt steps + num_new)`` for a sampler; ValueError (naming the argument
    ``name``) when the prompt holds no ``unit`` or ``num_new`` is negative."""
    if prompt.shape[-1] < 1:
        raise ValueError(f"prompt must hold at least one {unit}")
    num_new = int(num_new)
    if num_new < 0:
        raise ValueError(f"{name} must be >= 0, got {num_new}")
    return num_new, prompt.shape[-1] + num_new


def broadcast_forced(forced, forced_mask, out_shape):
    """``(forced, forced_mask)`` broadcast to the sampler's output shape (both or neither)."""
    if (forced is None) != (forced_mask is None):
        raise ValueError("forced and forced_mask go together")
    if forced is None:
        return None, None
    return (jnp.broadcast_to(jnp.asarray(forced, jnp.int32), out_shape),
            jnp.broadcast_to(jnp.asarray(forced_mask, bool), out_shape))


def _keeps_everything(top_p) -> bool:
    """A concrete top_p >= 1 (nucleus sampling off); traced values count as on."""
    try:
        return float(top_p) >= 1.0
    except (TypeError, jax.errors.ConcretizationTypeError):
        return False


# ----------------------------------------------------------------------------- forcing helpers


def delay_special_mask(pattern, total_length: int, *, include_tail: bool = True
                       ) -> Tuple[np.ndarray, np.ndarray]:
    """``(forced [K, L] int32, forced_mask [K, L] bool)`` for a layout (e.g. ``DelayPattern``
    / ``DepthPattern``) and a total sequence length ``L``: the mask is True on the slots that
    must hold ``pattern.special_token`` -- row q's first ``delays[q]`` steps and, when
    ``include_tail``, the slots past the last frame (``L - max_delay`` frames; the slots
    ``pattern.valid_mask`` marks False). Broadcasts against ``[B, K, L]`` in :func:`generate`.
    The layout's own :meth:`~audiolm_jax.lm.patterns.Layout.special_mask`.
    """
    return pattern.special_mask(total_length, include_tail=include_tail)


def combine_forced(*pairs) -> Tuple[jax.Array, jax.Array]:
    """Merge ``(forced, forced_mask)`` pairs (broadcastable to one shape); a later pair wins
    where masks overlap. ``None`` pairs are skipped."""
    pairs = [p for p in pairs if p is not None]
    if not pairs:
        raise ValueError("combine_forced needs at least one (forced, forced_mask) pair")
    shape = jnp.broadcast_shapes(*[jnp.shape(f) for f, _ in pairs],
                                 *[jnp.shape(m) for _, m in pairs])
    forced = jnp.zeros(shape, jnp.int32)
    mask = jnp.zeros(shape, bool)
    for f, m in pairs:
        m = jnp.broadcast_to(jnp.asarray(m, bool), shape)
        forced = jnp.where(m, jnp.asarray(f, jnp.int32), forced)
        mask = mask | m
    return forced, mask
