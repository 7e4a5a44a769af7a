"""Reconstruction losses for codec training. Inputs are waveforms ``[B, T]`` (or ``[T]``).

* ``multiscale_spectral_loss``: per (n_fft, hop, win_length), RMSE between STFT magnitudes
  (power 1, periodic Hann window of ``win_length`` zero-padded to ``n_fft``, ``center=True``
  with reflect padding, as ``torch.stft`` / ``librosa.stft(pad_mode='reflect')``), averaged
  over the settings. ``log=True`` uses ``log(|X| + log_eps)`` (``log_eps=1e-5``) instead of
  ``|X|``. The RMSE is over every element (batch, frames, bins) of that scale.
* ``multiscale_mel_loss``: per n_fft (hop n_fft // 4, window n_fft), L1 between
  ``log(mel + log_eps)`` with a librosa (slaney) mel filterbank on the magnitude spectrum
  (power 1), averaged over scales. ``n_mels`` is lowered per scale until no filter is empty.
* ``waveform_l1``, ``waveform_mse``.

All use a safe sqrt, so gradients are finite even where a magnitude or the error is zero.
T must exceed ``n_fft // 2`` for the reflect padding.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from audiolm_jax.layers.spectral import mel_spectrogram, safe_sqrt, stft_magnitude

Array = jax.Array

DEFAULT_STFT_SETTINGS = ((2048, 240, 1200), (1024, 120, 600), (512, 50, 240))


def multiscale_spectral_loss(x: Array, y: Array,
                             settings: Sequence[Sequence[int]] = DEFAULT_STFT_SETTINGS,
                             log: bool = False, log_eps: float = 1e-5) -> Array:
    """Mean over settings of ``sqrt(mean((|X| - |Y|) ** 2))``; scalar."""
    total = 0.0
    for n_fft, hop, win in settings:
        mx = stft_magnitude(x, int(n_fft), int(hop), int(win))
        my = stft_magnitude(y, int(n_fft), int(hop), int(win))
        if log:
            mx = jnp.log(mx + log_eps)
            my = jnp.log(my + log_eps)
        total = total + safe_sqrt(jnp.mean(jnp.square(mx - my)))
    return total / len(settings)


def multiscale_mel_loss(x: Array, y: Array, sample_rate: int,
                        n_ffts: Sequence[int] = (512, 1024, 2048), n_mels: int = 64,
                        hop_ratio: float = 0.25, fmin: float = 0.0, fmax: float | None = None,
                        power: float = 1.0, log_eps: float = 1e-5) -> Array:
    """Mean over n_ffts of ``mean(|log(mel_x + eps) - log(mel_y + eps)|)``; scalar."""
    total = 0.0
    for n_fft in n_ffts:
        hop = max(1, int(n_fft * hop_ratio))
        kw = dict(sample_rate=sample_rate, n_fft=int(n_fft), hop_length=hop, n_mels=n_mels,
                  fmin=fmin, fmax=fmax, power=power)
        mx = mel_spectrogram(x, **kw)
        my = mel_spectrogram(y, **kw)
        total = total + jnp.mean(jnp.abs(jnp.log(mx + log_eps) - jnp.log(my + log_eps)))
    return total / len(n_ffts)


def waveform_l1(x: Array, y: Array) -> Array:
    return jnp.mean(jnp.abs(x - y))


def waveform_mse(x: Array, y: Array) -> Array:
    return jnp.mean(jnp.square(x - y))
