"""Sampling from a :class:`~audiolm_jax.lm.depth.DepthTransformerLM`, frame by frame.

:func:`generate_depth` is one jitted function around the sampling loop every sampler shares
(:func:`audiolm_jax.lm.sampling.decode_loop`): a prefill of the temporal transformer's KV cache
with the prompt steps, then ``jax.lax.scan`` over the new steps (in chunks whose sampling noise
is drawn at once, with a cache grown segment by segment). Each step samples the
frame's R levels with the depth transformer (``decode_frame``: level k's token feeds level
k+1) and feeds the finished frame back through the temporal transformer. Compiled once per
(model, shapes, num_new_frames, top_k, forcing or not); temperature and top_p are traced.

Forcing: ``forced`` / ``forced_mask`` (shaped like the output ``[B, R, P + N]``) replace the
sampled token wherever the mask is True, inside the frame loop, so a forced token is what the
next level and the next frame see: level 0 kept from a prompt file ("same words, another
voice"), the user's stream in duplex, the layout's special slots. Forced slots inside the
prompt overwrite the prompt too.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp

from audiolm_jax.lm.depth import DepthTransformerLM
from audiolm_jax.lm.sampling import (
    broadcast_forced,
    check_new_steps,
    decode_loop,
    sample_with_noise,
)
from audiolm_jax.lm.transformer import init_cache
from audiolm_jax.runtime.xla_options import compiler_options

__all__ = ["generate_depth", "generate_depth_cache_size"]


def _generate_depth_impl(model: DepthTransformerLM, params, prompt, rng, temperature, top_p,
                         forced, forced_mask, *, num_new: int, top_k: int, allowed_vocab: int,
                         segments: Optional[int] = None):
    B, R, P = prompt.shape
    apply = functools.partial(model.apply, {"params": params})

    def temporal(tokens, cache, index):  # -> (hidden of the last step [B, W], cache)
        hidden, cache = apply(tokens, cache, index, method=DepthTransformerLM.temporal_decode)
        return hidden[:, -1], cache

    def advance(hidden, cache, pos, noise, column):  # noise [R, B, V]: level k's Gumbel noise
        def choose(k, logits):
            tok = sample_with_noise(logits, noise[k], temperature=temperature, top_k=top_k,
                                    top_p=top_p, allowed_vocab=allowed_vocab)
            return tok if column is None else jnp.where(column[1][:, k], column[0][:, k], tok)

        # The frame's levels, level by level (level k's token feeds level k+1), then the
        # finished frame through the temporal transformer.
        frame, _ = apply(hidden, choose, method=DepthTransformerLM.decode_frame)  # [B, R]
        hidden, cache = temporal(frame[..., None], cache, pos)
        return frame, hidden, cache

    # Frame i, level k draws with fold_in(fold_in(rng, i), k): drawn for a chunk of frames at
    # once (see sampling.scan_steps_with_noise), the same numbers as drawing inside the step.
    V = model.config.depth.vocab_size

    def draw(steps, shape):
        frame_noise = lambda i: jax.vmap(lambda k: jax.random.gumbel(
            jax.random.fold_in(jax.random.fold_in(rng, i), k), shape[1:], jnp.float32))(
                jnp.arange(R, dtype=jnp.int32))
        return jax.vmap(frame_noise)(steps)

    # The temporal cache grows segment by segment, as in sampling.generate.
    return decode_loop(prompt, forced, forced_mask, num_new=num_new, max_length=P + num_new,
                       segments=segments,
                       init_cache=lambda n: init_cache(model.config.temporal, B, n),
                       prefill=lambda tokens, cache: temporal(tokens, cache, 0), advance=advance,
                       noise_shape=lambda hidden: (R, B, V), draw=draw)


@functools.cache
def _generate_depth_jit():
    # Built on first use, like sampling._generate_jit (the options query the backend).
    return jax.jit(_generate_depth_impl,
                   static_argnames=("model", "num_new", "top_k", "allowed_vocab", "segments"),
                   compiler_options=compiler_options("lm_sample"))


def generate_depth_cache_size() -> int:
    """How many compiled versions of the depth sampler exist (for recompilation checks)."""
    return _generate_depth_jit()._cache_size()


def generate_depth(model: DepthTransformerLM, params: Any, prompt_codes_layout,
                   num_new_frames: int, rng: jax.Array, *, temperature=1.0, top_k: int = 0,
                   top_p=1.0, forced=None, forced_mask=None,
                   allowed_vocab: Optional[int] = None,
                   cache_segments: Optional[int] = None) -> jax.Array:
    """Continue a laid-out prompt by ``num_new_frames`` steps of R sampled levels each.

    model: a :class:`DepthTransformerLM` (hashable; static). params: its (unboxed) params.
    prompt_codes_layout: int ``[B, R, P]`` in the depth layout (R = streams x levels), P >= 1.
    rng: a PRNG key; step i, level k draws with ``fold_in(fold_in(rng, i), k)``.
    temperature / top_p: floats (traced); top_k: static int; temperature 0 is greedy.
    forced / forced_mask: optional int tokens and bool mask, shaped like (or broadcastable to)
      the output ``[B, R, P + num_new_frames]``; True slots take the forced token (prompt
      included), which then conditions every later level and frame.
    allowed_vocab: ids ``>= allowed_vocab`` are never sampled (forcing may still write them);
      default the model's ``codebook_size``, so the layout's special token and the vocabulary
      padding are never drawn.
    cache_segments: as in :func:`audiolm_jax.lm.sampling.generate` (the temporal KV cache
      grows segment by segment; static).

    Returns int32 ``[B, R, P + num_new_frames]``. Raises ValueError when the prompt plus the
    new steps exceed the model's context (a sliding window is the caller's business).
    """
    cfg = model.config
    R, context = cfg.num_levels, cfg.temporal.context
    prompt = jnp.asarray(prompt_codes_layout, jnp.int32)
    if prompt.ndim != 3 or prompt.shape[1] != R:
        raise ValueError(f"prompt must be [B, R={R}, P] in the depth layout, got shape "
                         f"{prompt.shape}")
    num_new, total = check_new_steps(prompt, num_new_frames, name="num_new_frames", unit="step")
    if total > context:
        raise ValueError(f"prompt ({prompt.shape[-1]} steps) + num_new_frames ({num_new}) = "
                         f"{total} exceeds the model's context of {context} steps")
    forced, forced_mask = broadcast_forced(forced, forced_mask, prompt.shape[:-1] + (total,))
    allowed = cfg.codebook_size if allowed_vocab is None else int(allowed_vocab)
    return _generate_depth_jit()(model, params, prompt, rng, jnp.asarray(temperature, jnp.float32),
                               jnp.asarray(top_p, jnp.float32), forced, forced_mask,
                               num_new=num_new, top_k=int(top_k), allowed_vocab=allowed,
                               segments=None if cache_segments is None else int(cache_segments))
