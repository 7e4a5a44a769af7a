"""Moshi (Kyutai's speech-text foundation model) in JAX: the LM's config, its forward pass,
and Kyutai's checkpoint layout.

* :mod:`audiolm_jax.moshi.config`: :class:`MoshiConfig`, Kyutai's ``LMModel`` keywords.
* :mod:`audiolm_jax.moshi.model`: :class:`MoshiLM` (``LMModel.forward``: delays, temporal
  transformer, depformer, undelayed logits and masks).
* :mod:`audiolm_jax.moshi.kyutai_weights`: Kyutai's state dict <-> our params.
* :mod:`audiolm_jax.moshi.task`, :mod:`~audiolm_jax.moshi.lora`: training, fine-tuning.
* :mod:`audiolm_jax.moshi.generate`: frame-by-frame generation (``LMGen.step``).
* :mod:`audiolm_jax.moshi.run`: :func:`load_moshi` and ``import-moshi``;
  :mod:`~audiolm_jax.moshi.converse`: ``audiolm-jax converse``.
"""

from audiolm_jax.moshi.config import MoshiConfig
from audiolm_jax.moshi.kyutai_weights import from_kyutai, to_kyutai
from audiolm_jax.moshi.model import (MoshiLM, MoshiOutput, count_params, delay_sequence,
                                     logits, num_params, param_shapes, undelay_sequence)

__all__ = ["load_moshi", "MoshiConfig", "MoshiLM", "MoshiOutput", "count_params", "delay_sequence",
           "from_kyutai", "logits", "num_params", "param_shapes", "to_kyutai",
           "undelay_sequence"]


def __getattr__(name):
    # load_moshi pulls in the checkpoint and codec code: imported when first asked for.
    if name == "load_moshi":
        from audiolm_jax.moshi.run import load_moshi

        return load_moshi
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
