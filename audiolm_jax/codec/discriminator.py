"""EnCodec-style multi-scale STFT discriminator (MS-STFTD) and adversarial losses.

Per scale (``DiscriminatorSTFT``): complex STFT (``center=False``, periodic Hann window,
normalised by the window's L2 norm like torchaudio ``Spectrogram(normalized=True)``), stacked as
2 channels → ``[B, frames, freq, 2]``; then, with LeakyReLU(0.2) and weight norm everywhere:

  Conv2d(filters, (3, 9))
  3 × Conv2d(filters, (3, 9), stride (1, 2), dilation (d, 1)) for d in (1, 2, 4)
  Conv2d(filters, (3, 3))
  Conv2d(1, (3, 3))   ← logits (no activation)

Axes: (time, frequency), i.e. dilation over time and stride 2 over frequency. The five
activations after each LeakyReLU are the feature maps. Channel counts follow EnCodec
(``min(filters_scale**(i+1) * filters, max_filters)``; with ``filters_scale=1`` all are
``filters``).

Losses (all averaged, not summed, over scales):
* ``hinge_discriminator_loss``: ``mean_k [mean(relu(1 - D_k(x))) + mean(relu(1 + D_k(x̂)))]``.
* ``hinge_generator_loss``: ``mean_k [-mean(D_k(x̂))]`` (EnCodec / audiocraft generator hinge).
* ``feature_matching_loss``: mean over all (scale, layer) pairs of
  ``mean|f_real - f_fake| / (mean|f_real| + eps)`` (EnCodec's normalised L1).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from audiolm_jax.layers.conv import Conv2d, get_2d_padding
from audiolm_jax.layers.spectral import stft

Array = jax.Array


class DiscriminatorSTFT(nn.Module):
    """One scale. ``[B, T]`` (T >= n_fft) → (logits ``[B, frames, freq']``, 5 feature maps
    ``[B, frames, freq_i, C]``)."""

    filters: int = 32
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int = 1024
    max_filters: int = 1024
    filters_scale: int = 1
    kernel_size: tuple[int, int] = (3, 9)
    dilations: Sequence[int] = (1, 2, 4)
    stride: tuple[int, int] = (1, 2)
    normalized: bool = True
    weight_norm: bool = True
    negative_slope: float = 0.2

    @nn.compact
    def __call__(self, x: Array):
        spec = stft(x, self.n_fft, self.hop_length, self.win_length, center=False,
                    normalized=self.normalized)  # [B, frames, F]
        z = jnp.stack([spec.real, spec.imag], axis=-1).astype(jnp.float32)
        act = lambda h: nn.leaky_relu(h, self.negative_slope)
        ks = tuple(self.kernel_size)
        fmap = []
        z = act(Conv2d(self.filters, ks, weight_norm=self.weight_norm, name="conv_0")(z))
        fmap.append(z)
        for i, d in enumerate(self.dilations):
            out = min(self.filters_scale ** (i + 1) * self.filters, self.max_filters)
            z = Conv2d(out, ks, strides=tuple(self.stride), dilation=(d, 1),
                       padding=get_2d_padding(ks, (d, 1)), weight_norm=self.weight_norm,
                       name=f"conv_{i + 1}")(z)
            z = act(z)
            fmap.append(z)
        out = min(self.filters_scale ** (len(self.dilations) + 1) * self.filters,
                  self.max_filters)
        sq = (ks[0], ks[0])
        z = act(Conv2d(out, sq, weight_norm=self.weight_norm,
                       name=f"conv_{len(self.dilations) + 1}")(z))
        fmap.append(z)
        logits = Conv2d(1, sq, weight_norm=self.weight_norm, name="conv_post")(z)
        return logits[..., 0], fmap


class MultiScaleSTFTDiscriminator(nn.Module):
    """``[B, T]`` → (list of logits per scale, list of lists of feature maps per scale)."""

    filters: int = 32
    n_ffts: Sequence[int] = (1024, 2048, 512)
    hop_lengths: Sequence[int] = (256, 512, 128)
    win_lengths: Sequence[int] | None = None  # None → n_ffts
    max_filters: int = 1024
    filters_scale: int = 1
    kernel_size: tuple[int, int] = (3, 9)
    dilations: Sequence[int] = (1, 2, 4)
    weight_norm: bool = True

    @nn.compact
    def __call__(self, x: Array):
        wins = self.n_ffts if self.win_lengths is None else self.win_lengths
        assert len(self.n_ffts) == len(self.hop_lengths) == len(wins)
        logits, fmaps = [], []
        for i, (n_fft, hop, win) in enumerate(zip(self.n_ffts, self.hop_lengths, wins)):
            lg, fm = DiscriminatorSTFT(
                filters=self.filters, n_fft=int(n_fft), hop_length=int(hop),
                win_length=int(win), max_filters=self.max_filters,
                filters_scale=self.filters_scale, kernel_size=tuple(self.kernel_size),
                dilations=tuple(self.dilations), weight_norm=self.weight_norm,
                name=f"disc_{i}")(x)
            logits.append(lg)
            fmaps.append(fm)
        return logits, fmaps


def hinge_discriminator_loss(real_logits: Sequence[Array], fake_logits: Sequence[Array]) -> Array:
    """Mean over scales of ``mean(relu(1 - real)) + mean(relu(1 + fake))``."""
    total = 0.0
    for r, f in zip(real_logits, fake_logits):
        total = total + jnp.mean(nn.relu(1.0 - r)) + jnp.mean(nn.relu(1.0 + f))
    return total / len(real_logits)


def hinge_generator_loss(fake_logits: Sequence[Array]) -> Array:
    """Mean over scales of ``-mean(fake)``."""
    total = 0.0
    for f in fake_logits:
        total = total - jnp.mean(f)
    return total / len(fake_logits)


def feature_matching_loss(real_feats: Sequence[Sequence[Array]],
                          fake_feats: Sequence[Sequence[Array]], eps: float = 1e-8) -> Array:
    """Mean over (scale, layer) of ``mean|real - fake| / (mean|real| + eps)``.

    Real features are used as given (wrap them in ``jax.lax.stop_gradient`` if desired).
    """
    total, count = 0.0, 0
    for rs, fs in zip(real_feats, fake_feats):
        for r, f in zip(rs, fs):
            total = total + jnp.mean(jnp.abs(r - f)) / (jnp.mean(jnp.abs(r)) + eps)
            count += 1
    return total / max(count, 1)
