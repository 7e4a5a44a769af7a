"""Mimi (Kyutai's streaming codec) from the project's modules: architecture, weight import
from the transformers and Kyutai layouts, and frame-by-frame streaming."""

from audiolm_jax.codec.mimi.networks import (MimiDecoder, MimiEncoder, make_mimi_encoder_decoder,
                                             mimi_hop_length, transformer_config)

__all__ = ["MimiEncoder", "MimiDecoder", "make_mimi_encoder_decoder", "mimi_hop_length",
           "transformer_config"]
