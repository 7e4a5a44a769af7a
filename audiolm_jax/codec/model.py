"""A codec: encoder → residual quantizer → decoder, with pure ``encode``/``decode``.

Waveforms are [B, T] float32. ``encode`` pads T up to a whole number of frames (unless the
kind's encoder pads a partial frame itself) and returns integer codes [B, frames, levels];
``decode`` returns frames * hop_length samples. The encoder and decoder are those of the kind
``config.model`` names (``codec/registry.py``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from audiolm_jax.codec.registry import build_encoder_decoder, codec_config
from audiolm_jax.quantization import make_quantizer, quantizer_config


def _frozen(cfg: Any) -> ml_collections.FrozenConfigDict:
    return cfg if isinstance(cfg, ml_collections.FrozenConfigDict) else ml_collections.FrozenConfigDict(cfg)


class Codec(nn.Module):
    model_cfg: ml_collections.FrozenConfigDict
    quantizer_cfg: ml_collections.FrozenConfigDict

    def setup(self):
        kind = codec_config(self.model_cfg)
        self.encoder, self.decoder = build_encoder_decoder(kind)
        self.hop_length, self.latent_dim = kind.hop_length, kind.latent_dim
        self.pads_partial_frames = kind.pads_partial_frames
        self.quantizer = make_quantizer(self.quantizer_cfg, self.latent_dim)

    def _pad(self, audio: jnp.ndarray) -> jnp.ndarray:
        if self.pads_partial_frames:
            return audio  # e.g. Mimi: its causal convs pad the last partial frame themselves
        hop = self.hop_length
        extra = (-audio.shape[-1]) % hop
        return jnp.pad(audio, ((0, 0), (0, extra))) if extra else audio

    def __call__(self, audio: jnp.ndarray, train: bool = False, n_levels: int | None = None,
                 init_codebooks: bool | None = None):
        length = audio.shape[-1]
        latents = self.encoder(self._pad(audio))
        q = self.quantizer(latents, train=train, n_levels=n_levels, init_codebooks=init_codebooks)
        recon = self.decoder(q["quantized"])[..., :length]
        return {"recon": recon, "latents": latents, **q}

    def encode(self, audio: jnp.ndarray, n_levels: int | None = None) -> jnp.ndarray:
        latents = self.encoder(self._pad(audio))
        return self.quantizer.encode(latents, n_levels=n_levels)

    def decode(self, codes: jnp.ndarray) -> jnp.ndarray:
        return self.decoder(self.quantizer.decode(codes))


def build_codec(config: Any) -> Codec:
    return Codec(model_cfg=_frozen(config.model), quantizer_cfg=_frozen(config.quantizer))


def hop_length(config: Any) -> int:
    """Samples per codec frame, from the model config alone."""
    return int(codec_config(config.model).hop_length)


def frame_rate(config: Any) -> float:
    return config.data.sample_rate / hop_length(config)


def bitrate_bps(config: Any, num_levels: int | None = None) -> float:
    import math

    quantizer = quantizer_config(config.quantizer)  # FSQ: prod(fsq_levels) codes per level
    levels = int(num_levels or quantizer.num_levels)
    return frame_rate(config) * levels * math.log2(int(quantizer.codebook_size))
