"""Shared neural-network layers (channels-last convolutions, STFT helpers)."""

from audiolm_jax.layers.conv import (
    CausalConv1d,
    Conv1d,
    Conv2d,
    ConvTranspose1d,
    count_params,
    get_2d_padding,
    get_extra_padding_for_conv1d,
    pad1d,
    weight_norm_kernel,
)
from audiolm_jax.layers.spectral import (
    hann_window,
    magnitude,
    mel_filterbank,
    mel_spectrogram,
    stft,
    stft_magnitude,
)

__all__ = [
    "CausalConv1d", "Conv1d", "Conv2d", "ConvTranspose1d", "count_params", "get_2d_padding",
    "get_extra_padding_for_conv1d", "pad1d", "weight_norm_kernel", "hann_window", "magnitude",
    "mel_filterbank", "mel_spectrogram", "stft", "stft_magnitude",
]
