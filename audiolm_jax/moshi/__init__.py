"""Moshi (Kyutai's speech-text foundation model) in JAX: the LM's config, its forward pass,
and Kyutai's checkpoint layout.

* :mod:`audiolm_jax.moshi.config`: :class:`MoshiConfig`, Kyutai's ``LMModel`` keywords.
* :mod:`audiolm_jax.moshi.model`: :class:`MoshiLM` (``LMModel.forward``: delays, temporal
  transformer, depformer, undelayed logits and masks).
* :mod:`audiolm_jax.moshi.kyutai_weights`: Kyutai's state dict <-> our params.
"""

from audiolm_jax.moshi.config import MoshiConfig
from audiolm_jax.moshi.kyutai_weights import from_kyutai, to_kyutai
from audiolm_jax.moshi.model import (MoshiLM, MoshiOutput, count_params, delay_sequence,
                                     logits, num_params, param_shapes, undelay_sequence)

__all__ = ["MoshiConfig", "MoshiLM", "MoshiOutput", "count_params", "delay_sequence",
           "from_kyutai", "logits", "num_params", "param_shapes", "to_kyutai",
           "undelay_sequence"]
