"""Mimi's encoder and decoder, built from the project's SEANet, convolutions and the windowed
transformer, and the factory that reads their sizes from ``config.model`` (kind 'mimi').

Encoder: audio ``[B, T]`` -> SEANet (hop ``prod(ratios)``) -> transformer -> learned causal
conv (kernel ``2 * frame_downsample``, stride ``frame_downsample``, replicate left padding, no
bias) -> latents ``[B, ceil(T / hop), dimension]`` with hop = ``prod(ratios) * frame_downsample``.

Decoder: latents -> causal transposed conv (channel-wise, groups = dimension, when
``upsample_channelwise``; kept as in the release so its weights load) -> transformer -> SEANet
decoder -> audio ``[B, frames * hop]``.

Unlike the other codecs, lengths that are not a whole number of frames are not zero-padded at
the input: every causal conv adds its own right padding (as transformers' and Kyutai's Mimi
do), so codes of such inputs equal the reference's. An input padded further (to a length
bucket, ``LoadedCodec``) passes its valid ``length``: each strided conv's input is then
filled past its own valid length as that conv would pad it, so the codes are the same.

Streaming is a mode of the same networks (``streaming=True``): the SEANet and the two
learned resampling convs stream through their layers' buffers, the transformer through
``TransformerStack.stream`` (its ring KV cache and position), all in the ``streaming``
collection (:mod:`audiolm_jax.layers.streaming`); :mod:`audiolm_jax.codec.mimi.streaming`
drives them frame by frame.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax

from audiolm_jax.codec.registry import codec_config
from audiolm_jax.codec.seanet import SEANetDecoder, SEANetEncoder, fill_past
from audiolm_jax.layers.conv import Conv1d, ConvTranspose1d
from audiolm_jax.layers.transformer import TransformerConfig, TransformerStack

Array = jax.Array


# Each function below takes Mimi's typed config (``codec/networks.py:MimiConfig``, which holds
# the defaults: the release's) or a ``model`` section of kind 'mimi'.


def seanet_kwargs(mcfg: Any) -> dict:
    """SEANet keyword arguments of a Mimi config."""
    m = codec_config(mcfg)
    return dict(
        n_filters=m.n_filters, ratios=m.ratios, dimension=m.dimension,
        n_residual_layers=m.n_residual_layers, dilation_base=m.dilation_base,
        kernel_size=m.kernel_size, residual_kernel_size=m.residual_kernel_size,
        last_kernel_size=m.last_kernel_size, compress=m.compress,
        causal=True,  # streaming needs it; the release is causal (the config checks it)
        true_skip=m.true_skip, weight_norm=m.weight_norm, pad_mode=m.pad_mode,
        activation=m.activation,
    )


def transformer_config(mcfg: Any) -> TransformerConfig | None:
    """Mimi's transformer as options of the shared one (None without transformer layers):
    pre-norm LayerNorm blocks with biased norms and bias-free projections, exact GELU, layer
    scale, half-split rotary embedding, attention over the last ``transformer_context``
    frames (a ring KV cache when streaming), LeCun-normal initialisation, no final norm."""
    m = codec_config(mcfg)  # checks that the width splits into heads of even size
    if m.transformer_layers == 0:
        return None
    context = m.transformer_context
    return TransformerConfig(
        num_layers=m.transformer_layers, num_heads=m.transformer_heads, width=m.dimension,
        mlp="gelu", mlp_hidden=m.transformer_ffn_dim, norm="layer", norm_eps=m.norm_eps,
        norm_fast_variance=False,
        bias=False, norm_bias=True, rope="half", rope_base=m.rope_max_period,
        layer_scale=m.layer_scale, window=context, attention="blocked",
        attention_block=context, init="lecun")


def mimi_hop_length(mcfg: Any) -> int:
    """Audio samples per Mimi frame: ``prod(ratios) * frame_downsample``."""
    return codec_config(mcfg).hop_length


class MimiEncoder(nn.Module):
    seanet: dict
    transformer: TransformerConfig | None
    frame_downsample: int = 2

    @nn.compact
    def __call__(self, audio: Array, streaming: bool = False, length: Any = None) -> Array:
        """audio [B, T] -> latents; streaming: the next whole number of frames of audio.

        ``length`` (an int or traced int, scalar or ``[B]``): the valid length of ``audio``
        (of this chunk, when streaming) if it is zero-padded past it, e.g. to a length
        bucket. Every strided conv then sees, past its own input's valid length, the padding
        the reference's conv adds to an input of that length (zeros; the last valid step for
        the replicate-padded downsampling conv), so latents ``0 .. ceil(length / hop) - 1``
        (a last partial frame included) equal those of the unpadded audio. The transformer
        and the stride-1 convs are causal: the padded steps cannot reach valid ones.
        """
        x = SEANetEncoder(**self.seanet, name="seanet")(audio, streaming, length)
        if self.transformer is not None:
            stack = TransformerStack(self.transformer, name="transformer")
            x = stack.stream(x) if streaming else stack(x)
        if self.frame_downsample > 1:
            s = self.frame_downsample
            if length is not None:
                seanet_hop = math.prod(int(r) for r in self.seanet["ratios"])
                x = fill_past(x, -(-length // seanet_hop), "replicate")
            x = Conv1d(self.seanet["dimension"], 2 * s, stride=s, padding="causal",
                       pad_mode="replicate", use_bias=False, name="downsample")(x, streaming)
        return x


class MimiDecoder(nn.Module):
    seanet: dict
    transformer: TransformerConfig | None
    frame_downsample: int = 2
    upsample_channelwise: bool = True

    @nn.compact
    def __call__(self, latents: Array, streaming: bool = False) -> Array:
        """latents [B, frames, dimension] -> audio; streaming: the next frames."""
        x = latents
        dim = self.seanet["dimension"]
        if self.frame_downsample > 1:
            s = self.frame_downsample
            x = ConvTranspose1d(dim, 2 * s, stride=s, groups=dim if self.upsample_channelwise else 1,
                                causal=True, use_bias=False, name="upsample")(x, streaming)
        if self.transformer is not None:
            stack = TransformerStack(self.transformer, name="transformer")
            x = stack.stream(x) if streaming else stack(x)
        return SEANetDecoder(**self.seanet, name="seanet")(x, streaming)


def make_mimi_encoder_decoder(mcfg: Any):
    """``(encoder, decoder, hop_length, latent_dim)`` of a Mimi config."""
    m = codec_config(mcfg)
    seanet, transformer = seanet_kwargs(m), transformer_config(m)
    enc = MimiEncoder(seanet, transformer, m.frame_downsample)
    dec = MimiDecoder(seanet, transformer, m.frame_downsample, m.upsample_channelwise)
    return enc, dec, m.hop_length, m.latent_dim
