"""The one-time k-means codebook initialisation a trainer runs on its first batch."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from audiolm_jax.quantization.base import RNG, STATS


def kmeans_init_stats(model: nn.Module, params: Any, vq_stats: Any, inputs: Any,
                      rng: jax.Array, **call_kwargs) -> Any:
    """Returns ``vq_stats`` after k-means on ``inputs`` for every quantizer level of ``model``.

    ``model`` must forward ``init_codebooks`` to its quantizer. Trainers call this once, in its
    own compiled step, and pass ``init_codebooks=False`` in the hot step (see ``vq.py``); they
    skip it for a quantizer without statistics (its config's ``has_stats`` is False).
    """
    _, mutated = model.apply({"params": params, STATS: vq_stats}, inputs, train=True,
                             init_codebooks=True, rngs={RNG: rng}, mutable=[STATS],
                             **call_kwargs)
    return mutated[STATS]


def kmeans_init_state(model: nn.Module, state: Any, inputs: Any) -> Any:
    """A train state (``params``, ``vq_stats``, ``rng``) with its ``vq_stats`` after
    :func:`kmeans_init_stats` on ``inputs`` (the first batch), with the rng
    ``fold_in(state.rng, 1)``; the state's own rng is left as it is."""
    return state.replace(vq_stats=kmeans_init_stats(
        model, state.params, state.vq_stats, inputs, jax.random.fold_in(state.rng, 1)))
