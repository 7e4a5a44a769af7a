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
do), so codes of such inputs equal the reference's.

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

from audiolm_jax.codec.seanet import SEANetDecoder, SEANetEncoder
from audiolm_jax.layers.conv import Conv1d, ConvTranspose1d
from audiolm_jax.layers.transformer import TransformerConfig, TransformerStack

Array = jax.Array


def _get(mcfg: Any, key: str, default: Any) -> Any:
    if hasattr(mcfg, "get"):
        return mcfg.get(key, default)
    return getattr(mcfg, key, default)


def seanet_kwargs(mcfg: Any) -> dict:
    """SEANet keyword arguments from a Mimi model config (release values as defaults)."""
    return dict(
        n_filters=int(_get(mcfg, "n_filters", 64)),
        ratios=tuple(int(r) for r in _get(mcfg, "ratios", (8, 6, 5, 4))),
        dimension=int(_get(mcfg, "dimension", 512)),
        n_residual_layers=int(_get(mcfg, "n_residual_layers", 1)),
        dilation_base=int(_get(mcfg, "dilation_base", 2)),
        kernel_size=int(_get(mcfg, "kernel_size", 7)),
        residual_kernel_size=int(_get(mcfg, "residual_kernel_size", 3)),
        last_kernel_size=int(_get(mcfg, "last_kernel_size", 3)),
        compress=int(_get(mcfg, "compress", 2)),
        causal=True,  # streaming needs it; the release is causal
        true_skip=bool(_get(mcfg, "true_skip", True)),
        weight_norm=bool(_get(mcfg, "weight_norm", False)),
        pad_mode=str(_get(mcfg, "pad_mode", "constant")),
        activation=str(_get(mcfg, "activation", "elu")),
    )


def transformer_config(mcfg: Any) -> TransformerConfig | None:
    """Mimi's transformer as options of the shared one (None without transformer layers):
    pre-norm LayerNorm blocks with biased norms and bias-free projections, exact GELU, layer
    scale, half-split rotary embedding, attention over the last ``transformer_context``
    frames (a ring KV cache when streaming), LeCun-normal initialisation, no final norm."""
    layers = int(_get(mcfg, "transformer_layers", 8))
    if layers == 0:
        return None
    dim, heads = int(_get(mcfg, "dimension", 512)), int(_get(mcfg, "transformer_heads", 8))
    if dim % heads or (dim // heads) % 2:
        raise ValueError(f"transformer width {dim} must split into {heads} heads of even size")
    context = int(_get(mcfg, "transformer_context", 250))
    return TransformerConfig(
        num_layers=layers, num_heads=heads, width=dim, mlp="gelu",
        mlp_hidden=int(_get(mcfg, "transformer_ffn_dim", 2048)), norm="layer",
        norm_eps=float(_get(mcfg, "norm_eps", 1e-5)), bias=False, norm_bias=True, rope="half",
        rope_base=float(_get(mcfg, "rope_max_period", 10000.0)),
        layer_scale=float(_get(mcfg, "layer_scale", 0.01)), window=context,
        attention="blocked", attention_block=context, init="lecun")


def mimi_hop_length(mcfg: Any) -> int:
    """Audio samples per Mimi frame: ``prod(ratios) * frame_downsample``."""
    return math.prod(seanet_kwargs(mcfg)["ratios"]) * max(1, int(_get(mcfg, "frame_downsample", 2)))


class MimiEncoder(nn.Module):
    seanet: dict
    transformer: TransformerConfig | None
    frame_downsample: int = 2

    @nn.compact
    def __call__(self, audio: Array, streaming: bool = False) -> Array:
        """audio [B, T] -> latents; streaming: the next whole number of frames of audio."""
        x = SEANetEncoder(**self.seanet, name="seanet")(audio, streaming)
        if self.transformer is not None:
            stack = TransformerStack(self.transformer, name="transformer")
            x = stack.stream(x) if streaming else stack(x)
        if self.frame_downsample > 1:
            s = self.frame_downsample
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
    """``(encoder, decoder, hop_length, latent_dim)`` for ``model.kind == 'mimi'``."""
    seanet, transformer = seanet_kwargs(mcfg), transformer_config(mcfg)
    down = max(1, int(_get(mcfg, "frame_downsample", 2)))
    enc = MimiEncoder(seanet, transformer, down)
    dec = MimiDecoder(seanet, transformer, down, bool(_get(mcfg, "upsample_channelwise", True)))
    return enc, dec, mimi_hop_length(mcfg), seanet["dimension"]
