"""The models a token layout asks for (``layout.model_kind``), each as what the LM task and the
generation code need of it: build from the LM config, initialise, teacher-forced logits, and
sampling a continuation of a laid-out prompt.

* ``'transformer'``: one :class:`~audiolm_jax.lm.transformer.Transformer` over the layout's
  sequence, with ``layout.model_levels`` input rows summed per step and as many output heads
  (1: a flat sequence ``[B, L]``; R: ``[B, R, L]``, all rows of a step predicted at once).
  Sampled by :func:`audiolm_jax.lm.sampling.generate`.
* ``'depth'``: Moshi's :class:`~audiolm_jax.lm.depth.DepthTransformerLM`, a temporal
  transformer over steps and a depth transformer over the rows of a step, whose depth half is
  teacher forced with the targets of the lower rows. Sampled level by level by
  :func:`audiolm_jax.lm.depth_sampling.generate_depth`. Its sizes are the ``depth`` section.

Both samplers run the same loop (:func:`audiolm_jax.lm.sampling.decode_loop`). A layout picks
a kind by name, so a new layout needs nothing here; a new kind is one class and one registry
line in this module.
"""

from __future__ import annotations

from typing import Any

import jax

from audiolm_jax.layers.params import FLOAT32_READ, cast_for_inference
from audiolm_jax.lm.cross_entropy import chunked_cross_entropy, cross_entropy
from audiolm_jax.lm.depth import DepthTransformerLM, init_depth_params, make_depth_lm_config
from audiolm_jax.lm.depth_sampling import generate_depth
from audiolm_jax.lm.sampling import generate
from audiolm_jax.lm.transformer import LMConfig, Transformer, init_params

__all__ = ["TransformerKind", "DepthKind", "MODEL_KINDS", "make_model_kind"]


class TransformerKind:
    """One Transformer over the sequence (``model_config.num_levels`` rows per step)."""

    def __init__(self, model_config: LMConfig, config: Any, codebook_size: int):
        del config, codebook_size
        self.model_config = model_config  # the transformer over the steps
        self.model = Transformer(model_config)

    def init_params(self, rng: jax.Array) -> Any:
        return init_params(self.model, rng)

    def logits(self, params, batch: dict, train: bool, rngs=None) -> jax.Array:
        return self.model.apply({"params": params}, batch["inputs"], train=train, rngs=rngs)

    def cross_entropy(self, params, batch: dict, train: bool, rngs, vocab_size: int,
                      chunk: int = 0) -> jax.Array:
        """Per-position cross-entropy of ``batch['targets']``; ``chunk > 0``: the head and
        the loss run that many positions at a time (:mod:`audiolm_jax.lm.cross_entropy`)."""
        apply = lambda *a, **kw: self.model.apply({"params": params}, *a, **kw)
        x = apply(batch["inputs"], train=train, rngs=rngs, method=Transformer.features)
        return chunked_cross_entropy(lambda h: apply(h, method=Transformer.head), x,
                                     batch["targets"], vocab_size, chunk)

    def generate(self, params, prompt, num_new: int, rng: jax.Array, **kw) -> jax.Array:
        return generate(self.model, params, prompt, num_new, rng, **kw)

    def inference_params(self, params):
        """Weights for sampling: the matrices in the compute dtype, once (the embedding
        tables stay float32: the input embedding is summed before its cast)."""
        return cast_for_inference(params, self.model_config.dtype,
                                  FLOAT32_READ + ("wte", "wpe"))


class DepthKind:
    """Temporal transformer (``model_config``) + depth transformer (config section ``depth``)."""

    def __init__(self, model_config: LMConfig, config: Any, codebook_size: int):
        d = config.depth
        if int(d.width) % int(d.num_heads):
            raise ValueError(f"config key 'depth.width' ({d.width}) must be divisible by "
                             f"'depth.num_heads' ({d.num_heads})")
        depth_config = make_depth_lm_config(
            model_config, num_layers=int(d.num_layers), num_heads=int(d.num_heads),
            width=int(d.width), codebook_size=codebook_size)
        self.model_config = depth_config.temporal  # the transformer over the steps
        self.model = DepthTransformerLM(depth_config)

    def init_params(self, rng: jax.Array) -> Any:
        return init_depth_params(self.model, rng)

    def logits(self, params, batch: dict, train: bool, rngs=None) -> jax.Array:
        # The depth half reads the lower levels' targets of the same step (teacher forcing).
        return self.model.apply({"params": params}, batch["inputs"], batch["targets"],
                                train=train, rngs=rngs)

    def cross_entropy(self, params, batch: dict, train: bool, rngs, vocab_size: int,
                      chunk: int = 0) -> jax.Array:
        """Per-position cross-entropy; ``chunk`` is not used: the depth transformer's logits
        are per level over the small codebook vocabulary."""
        del chunk
        return cross_entropy(self.logits(params, batch, train, rngs), batch["targets"],
                             vocab_size)

    def generate(self, params, prompt, num_new: int, rng: jax.Array, **kw) -> jax.Array:
        return generate_depth(self.model, params, prompt, num_new, rng, **kw)

    def inference_params(self, params):
        """As :meth:`TransformerKind.inference_params`; the depth embeddings stay float32 too."""
        return cast_for_inference(params, self.model_config.dtype,
                                  FLOAT32_READ + ("wte", "wpe", "depth_wte"))


MODEL_KINDS = {"transformer": TransformerKind, "depth": DepthKind}


def make_model_kind(kind: str, model_config: LMConfig, config: Any, codebook_size: int):
    """The model of kind ``kind`` (a layout's ``model_kind``) for an LM config."""
    try:
        cls = MODEL_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}; expected one of "
                         f"{tuple(MODEL_KINDS)}") from None
    return cls(model_config, config, codebook_size)
