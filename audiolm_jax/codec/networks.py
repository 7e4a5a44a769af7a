"""The built-in codec kinds: one typed config and one builder each, registered by name in
``codec/__init__.py`` (see ``codec/registry.py`` for what a kind provides).

* ``'cnn'`` (:class:`CNNConfig`): the article's CNN (``codec/cnn.py``); hop ``2**num_blocks``.
* ``'seanet'`` (:class:`SEANetConfig`): SoundStream / EnCodec's SEANet (``codec/seanet.py``);
  hop ``prod(ratios)``.
* ``'mimi'`` (:class:`MimiConfig`): Kyutai's Mimi (``codec/mimi/networks.py``): SEANet, a
  windowed causal transformer and learned 2x down/upsampling; hop
  ``prod(ratios) * frame_downsample``. Its defaults are the release's.

Each config's defaults are the only copy of them: ``codec/config.py`` builds the experiment
configs' ``model`` sections from them, and the builders read nothing else.

Encoder: ``[B, T]`` -> ``[B, T // hop, latent_dim]`` (T a multiple of hop, or any T for a kind
that ``pads_partial_frames``). Decoder: ``[B, frames, latent_dim]`` -> ``[B, frames * hop]``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Tuple

from audiolm_jax.codec.cnn import CNNDecoder, CNNEncoder
from audiolm_jax.codec.mimi.networks import make_mimi_encoder_decoder
from audiolm_jax.codec.registry import (  # make_encoder_decoder: re-exported for callers
    CodecConfig,
    choice,
    invalid,
    make_encoder_decoder,
    positive,
)
from audiolm_jax.codec.seanet import SEANetDecoder, SEANetEncoder

__all__ = ["CNNConfig", "SEANetConfig", "MimiConfig", "build_cnn", "build_seanet",
           "build_mimi", "make_encoder_decoder"]

ACTIVATIONS = ("elu", "relu", "gelu", "tanh")
PAD_MODES = ("constant", "reflect", "replicate")


# ----------------------------------------------------------------------------- 'cnn'
@dataclasses.dataclass(frozen=True)
class CNNConfig(CodecConfig):
    """The article's CNN codec (``codec/cnn.py``).

    Attributes:
      channels: width of every block.
      latent_dim: width of the latents.
      num_blocks: stride-2 blocks; the hop is ``2**num_blocks`` (7: 128, 125 Hz at 16 kHz).
      res_blocks: residual blocks per stage.
      double_residual_quirk: the reference decoder's ``x + (x + f(x))``.
      dilation_growth: residual block i has dilation ``dilation_growth**(i + 1)``.
      second_kernel: kernel of each residual block's second conv.
    """

    channels: int = 32
    latent_dim: int = 32
    num_blocks: int = 7
    res_blocks: int = 4
    double_residual_quirk: bool = False
    dilation_growth: int = 3
    second_kernel: int = 3

    def validate(self) -> None:
        positive(self, "channels", "latent_dim", "num_blocks", "dilation_growth",
                 "second_kernel")
        positive(self, "res_blocks", allow_zero=True)

    @property
    def hop_length(self) -> int:
        return 2 ** self.num_blocks


def build_cnn(cfg: CNNConfig):
    kw = dict(channels=cfg.channels, latent_dim=cfg.latent_dim, num_blocks=cfg.num_blocks,
              res_blocks=cfg.res_blocks, dilation_growth=cfg.dilation_growth,
              second_kernel=cfg.second_kernel)
    return CNNEncoder(**kw), CNNDecoder(**kw, double_residual_quirk=cfg.double_residual_quirk)


# ----------------------------------------------------------------------------- 'seanet'
@dataclasses.dataclass(frozen=True)
class _SEANetSettings(CodecConfig):
    """The SEANet settings 'seanet' and 'mimi' share (their defaults: 'seanet''s; 'mimi'
    overrides some); see :class:`SEANetConfig`."""

    n_filters: int = 32
    ratios: Tuple[int, ...] = (8, 5, 4, 2)
    dimension: int = 128
    n_residual_layers: int = 1
    dilation_base: int = 2
    kernel_size: int = 7
    residual_kernel_size: int = 3
    last_kernel_size: int = 7
    compress: int = 2
    causal: bool = True
    true_skip: bool = True
    weight_norm: bool = True
    pad_mode: str = "constant"
    activation: str = "elu"

    def validate(self) -> None:
        positive(self, "n_filters", "dimension", "dilation_base", "kernel_size",
                 "residual_kernel_size", "last_kernel_size", "compress")
        positive(self, "n_residual_layers", allow_zero=True)
        if not self.ratios or min(self.ratios) < 1:
            raise invalid("ratios", "a non-empty tuple of integers >= 1", self.ratios)
        choice(self, "pad_mode", PAD_MODES)
        choice(self, "activation", ACTIVATIONS)

    @property
    def latent_dim(self) -> int:
        return self.dimension


@dataclasses.dataclass(frozen=True)
class SEANetConfig(_SEANetSettings):
    """SEANet encoder / decoder (``codec/seanet.py``; its docstring draws the blocks).

    Attributes:
      n_filters: channels of the first conv (doubled at each downsampling).
      ratios: decoder upsampling ratios (the encoder downsamples in reverse order); the hop
        is their product.
      dimension: width of the latents.
      n_residual_layers: residual blocks per stage (dilations ``dilation_base**j``).
      kernel_size, residual_kernel_size, last_kernel_size: kernels of the first conv, the
        residual blocks' first conv, and the last conv.
      compress: residual blocks' hidden width is ``dim // compress``.
      causal: causal padding (streamable) rather than 'same'.
      true_skip: identity shortcuts (else a 1x1 conv).
      weight_norm: weight-normalised convolutions.
      pad_mode: 'constant', 'reflect' or 'replicate'.
      activation: 'elu', 'relu', 'gelu' or 'tanh'.
      final_activation: applied to the decoder's output (None: none).
    """

    final_activation: Optional[str] = None

    def validate(self) -> None:
        super().validate()
        choice(self, "final_activation", (None, "none") + ACTIVATIONS)

    @property
    def hop_length(self) -> int:
        return math.prod(self.ratios)


def build_seanet(cfg: SEANetConfig):
    kw = dict(n_filters=cfg.n_filters, ratios=cfg.ratios, dimension=cfg.dimension,
              n_residual_layers=cfg.n_residual_layers, dilation_base=cfg.dilation_base,
              kernel_size=cfg.kernel_size, residual_kernel_size=cfg.residual_kernel_size,
              last_kernel_size=cfg.last_kernel_size, compress=cfg.compress, causal=cfg.causal,
              true_skip=cfg.true_skip, weight_norm=cfg.weight_norm, pad_mode=cfg.pad_mode,
              activation=cfg.activation)
    return SEANetEncoder(**kw), SEANetDecoder(**kw, final_activation=cfg.final_activation)


# ----------------------------------------------------------------------------- 'mimi'
@dataclasses.dataclass(frozen=True)
class MimiConfig(_SEANetSettings):
    """Kyutai's Mimi (``codec/mimi/networks.py``); defaults are the release's (24 kHz,
    12.5 Hz). The SEANet settings are as for :class:`SEANetConfig` (always causal), plus:

    Attributes:
      trim_right_ratio: the transposed convs' trim (1.0, the only value implemented).
      transformer_layers: layers of each of the two transformers (0: none).
      transformer_heads, transformer_ffn_dim: their heads and MLP width (width = dimension).
      transformer_context: frames each position attends to, itself included.
      rope_max_period, layer_scale (initial value), norm_eps: as named.
      frame_downsample: stride of the learned conv after the encoder transformer (1: none).
      upsample_channelwise: the decoder's transposed conv has groups = dimension (the
        release).

    The encoder's causal convs pad a last partial frame themselves, and the networks stream.
    """

    pads_partial_frames = True
    streams = True

    # The SEANet settings whose defaults differ from 'seanet''s (the others are inherited).
    n_filters: int = 64
    ratios: Tuple[int, ...] = (8, 6, 5, 4)
    dimension: int = 512
    last_kernel_size: int = 3
    weight_norm: bool = False
    trim_right_ratio: float = 1.0
    transformer_layers: int = 8
    transformer_heads: int = 8
    transformer_ffn_dim: int = 2048
    transformer_context: int = 250
    rope_max_period: float = 10000.0
    layer_scale: float = 0.01
    norm_eps: float = 1e-5
    frame_downsample: int = 2
    upsample_channelwise: bool = True

    def validate(self) -> None:
        super().validate()
        if not self.causal:
            raise invalid("causal", "True for kind 'mimi' (its networks stream)", self.causal)
        if self.trim_right_ratio != 1.0:
            raise invalid("trim_right_ratio", "1.0 (the only value implemented)",
                          self.trim_right_ratio)
        positive(self, "transformer_layers", allow_zero=True)
        positive(self, "transformer_heads", "transformer_ffn_dim", "transformer_context",
                 "rope_max_period", "norm_eps", "frame_downsample")
        if self.transformer_layers and (self.dimension % self.transformer_heads
                                        or (self.dimension // self.transformer_heads) % 2):
            raise invalid("transformer_heads", f"a divisor of model.dimension "
                          f"({self.dimension}) into heads of even size",
                          self.transformer_heads)

    @property
    def hop_length(self) -> int:
        return math.prod(self.ratios) * self.frame_downsample

    @property
    def max_stream_frames(self) -> Optional[int]:
        """Most frames one streaming call may take: the transformer's ring KV cache holds
        ``transformer_context`` of its (pre-downsampling) positions; None without one."""
        if not self.transformer_layers:
            return None
        return max(1, self.transformer_context // self.frame_downsample)


def build_mimi(cfg: MimiConfig):
    encoder, decoder, _, _ = make_mimi_encoder_decoder(cfg)
    return encoder, decoder
