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
* ``cosine_distillation_loss``: semantic distillation (Mimi): mean over frames of
  ``1 - cos(student, teacher)``, frames whose teacher vector is all zero (padding) left out;
  ``feature_resampling_matrix`` brings teacher features to the codec frame rate.

All use a safe sqrt, so gradients are finite even where a magnitude or the error is zero.
T must exceed ``n_fft // 2`` for the reflect padding.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

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


def feature_resampling_matrix(src_frames: int, src_rate: float, dst_frames: int,
                              dst_rate: float) -> np.ndarray:
    """[dst_frames, src_frames] float32 map from teacher frames to codec frames (host numpy).

    Frame ``j`` at rate ``r`` covers ``[j / r, (j + 1) / r)`` seconds. A faster teacher is
    average-pooled: each codec frame averages the teacher frames it overlaps, weighted by the
    overlap (plain ``k``-frame averaging when the ratio is an integer ``k``). A slower (or
    equal-rate) teacher is linearly interpolated at the codec frames' centres. Codec frames
    past the teacher's last frame hold that last frame.
    """
    if min(src_frames, dst_frames) <= 0 or min(src_rate, dst_rate) <= 0:
        raise ValueError(f"frames and rates must be positive, got src {src_frames} @ {src_rate} "
                         f"Hz, dst {dst_frames} @ {dst_rate} Hz")
    out = np.zeros((dst_frames, src_frames), np.float64)
    dst_idx = np.arange(dst_frames)
    if src_rate > dst_rate:
        src_start = np.arange(src_frames) / src_rate
        lo = (dst_idx / dst_rate)[:, None]
        hi = ((dst_idx + 1) / dst_rate)[:, None]
        overlap = np.minimum(hi, src_start + 1 / src_rate) - np.maximum(lo, src_start)
        out = np.maximum(overlap, 0.0)
        empty = out.sum(axis=1) <= 0
        out[empty, -1] = 1.0
    else:
        pos = np.clip((dst_idx + 0.5) * src_rate / dst_rate - 0.5, 0, src_frames - 1)
        left = np.floor(pos).astype(int)
        right = np.minimum(left + 1, src_frames - 1)
        frac = pos - left
        np.add.at(out, (dst_idx, left), 1.0 - frac)
        np.add.at(out, (dst_idx, right), frac)
    return (out / out.sum(axis=1, keepdims=True)).astype(np.float32)


def cosine_distillation_loss(student: Array, teacher: Array,
                             eps: float = 1e-6) -> tuple[Array, Array]:
    """``(mean(1 - cos), mean(cos))`` over frames of ``student``/``teacher`` [B, N, D].

    Frames whose teacher vector is all zero (a crop padded past the end of its file) count
    for nothing. Norms use a safe sqrt, so the gradient is finite at a zero student frame.
    """
    student = student.astype(jnp.float32)
    teacher = teacher.astype(jnp.float32)
    dot = jnp.sum(student * teacher, axis=-1)
    s_norm = safe_sqrt(jnp.sum(jnp.square(student), axis=-1))
    t_norm = safe_sqrt(jnp.sum(jnp.square(teacher), axis=-1))
    cos = dot / (jnp.maximum(s_norm, eps) * jnp.maximum(t_norm, eps))
    valid = (t_norm > 0).astype(jnp.float32)
    count = jnp.maximum(jnp.sum(valid), 1.0)
    mean_cos = jnp.sum(cos * valid) / count
    return 1.0 - mean_cos, mean_cos
