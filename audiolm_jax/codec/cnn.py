"""The small Jukebox-style CNN codec of the nanoGPTaudio article.

Encoder: ``num_blocks`` × [Conv1d(k4, s2, p1) → ``res_blocks`` × ResBlock], then a k3
projection to ``latent_dim``. Each block halves the time axis, so 7 blocks give a hop of 128
(16 kHz → 125 Hz). Decoder: k3 projection from ``latent_dim`` → ``num_blocks`` ×
[``res_blocks`` × ResBlock (dilations reversed, as Jukebox's ``reverse_decoder_dilation``) →
ConvTranspose1d(k4, s2, p1)] → k3 conv to 1 channel.

ResBlock i (0-based): ReLU → Conv(k3, dilation 3**(i+1), 'same') → ReLU →
Conv(``second_kernel`` (default 3), 'same') → + skip.

The reference decoder adds the residual twice (``x + (x + f(x))``); that is reproduced only when
``double_residual_quirk=True`` (default False: a standard residual ``x + f(x)``).

With defaults (channels 32, latent 32, 7 blocks, 4 res blocks, second kernel 3) the encoder has
201,856 parameters and the decoder 205,921 (407,777 total ≈ the reference's 0.40M).
"""

from __future__ import annotations

import flax.linen as nn
import jax

from audiolm_jax.layers.conv import Conv1d, ConvTranspose1d

Array = jax.Array


class CNNResBlock(nn.Module):
    channels: int
    dilation: int
    second_kernel: int = 3
    double_residual: bool = False  # x + (x + f(x)) (reference decoder quirk)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = nn.relu(x)
        h = Conv1d(self.channels, 3, dilation=self.dilation, padding="same", name="conv1")(h)
        h = nn.relu(h)
        h = Conv1d(self.channels, self.second_kernel, padding="same", name="conv2")(h)
        out = x + h
        if self.double_residual:
            out = x + out
        return out


class CNNSettings(nn.Module):
    """The settings the encoder and the decoder share (see the module docstring)."""

    channels: int = 32
    latent_dim: int = 32
    num_blocks: int = 7
    res_blocks: int = 4
    dilation_growth: int = 3
    second_kernel: int = 3


class CNNEncoder(CNNSettings):
    """``[B, T]`` (T a multiple of 2**num_blocks) → ``[B, T / 2**num_blocks, latent_dim]``."""

    @nn.compact
    def __call__(self, audio: Array) -> Array:
        x = audio[..., None] if audio.ndim == 2 else audio
        for b in range(self.num_blocks):
            x = Conv1d(self.channels, 4, stride=2, padding=1, name=f"down_{b}")(x)
            for i in range(self.res_blocks):
                x = CNNResBlock(self.channels, self.dilation_growth ** (i + 1),
                                self.second_kernel, name=f"res_{b}_{i}")(x)
        return Conv1d(self.latent_dim, 3, padding="same", name="proj")(x)


class CNNDecoder(CNNSettings):
    """``[B, frames, latent_dim]`` → ``[B, frames * 2**num_blocks]``."""

    double_residual_quirk: bool = False

    @nn.compact
    def __call__(self, z: Array) -> Array:
        x = Conv1d(self.channels, 3, padding="same", name="proj")(z)
        for b in range(self.num_blocks):
            for i in reversed(range(self.res_blocks)):
                x = CNNResBlock(self.channels, self.dilation_growth ** (i + 1),
                                self.second_kernel, self.double_residual_quirk,
                                name=f"res_{b}_{i}")(x)
            x = ConvTranspose1d(self.channels, 4, stride=2, padding=1, name=f"up_{b}")(x)
        x = Conv1d(1, 3, padding="same", name="out")(x)
        return x[..., 0]
