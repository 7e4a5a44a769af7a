"""STFT / mel helpers in JAX (framing + window + ``jnp.fft.rfft``).

``stft`` matches ``librosa.stft(x, n_fft, hop_length, win_length, window='hann', center=...,
pad_mode='reflect')`` (and ``torch.stft`` with a periodic Hann window and ``center=True``),
except that the output is laid out time-major: ``[..., frames, n_fft // 2 + 1]``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@functools.lru_cache(maxsize=64)
def hann_window(win_length: int, n_fft: int | None = None, periodic: bool = True) -> np.ndarray:
    """Hann window (periodic = ``scipy.signal.get_window('hann', N, fftbins=True)``),
    zero-padded symmetrically to ``n_fft`` like ``librosa.util.pad_center``."""
    n_fft = win_length if n_fft is None else n_fft
    if win_length > n_fft:
        raise ValueError("win_length must be <= n_fft")
    denom = win_length if periodic else max(win_length - 1, 1)
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(win_length) / denom)
    lpad = (n_fft - win_length) // 2
    out = np.zeros(n_fft, dtype=np.float64)
    out[lpad:lpad + win_length] = w
    return out.astype(np.float32)


def frame(x: Array, frame_length: int, hop_length: int) -> Array:
    """``[..., T]`` → ``[..., n_frames, frame_length]`` with n_frames = 1 + (T - L) // hop."""
    length = x.shape[-1]
    if length < frame_length:
        raise ValueError(f"signal of length {length} shorter than frame {frame_length}")
    n_frames = 1 + (length - frame_length) // hop_length
    idx = (np.arange(n_frames)[:, None] * hop_length + np.arange(frame_length)[None, :])
    return x[..., idx]


def stft(x: Array, n_fft: int, hop_length: int, win_length: int | None = None,
         center: bool = True, pad_mode: str = "reflect", normalized: bool = False) -> Array:
    """Complex one-sided STFT of ``[..., T]`` → ``[..., frames, n_fft // 2 + 1]``.

    ``center=True`` pads ``n_fft // 2`` on both sides with ``pad_mode`` ('reflect' or
    'constant'). ``normalized=True`` divides by ``sqrt(sum(window ** 2))`` (torchaudio's
    ``Spectrogram(normalized=True)``, as used by EnCodec's STFT discriminator).
    """
    win_length = n_fft if win_length is None else win_length
    x = jnp.asarray(x)
    if center:
        p = n_fft // 2
        widths = [(0, 0)] * (x.ndim - 1) + [(p, p)]
        x = jnp.pad(x, widths, mode=pad_mode)
    window = hann_window(win_length, n_fft)
    frames = frame(x, n_fft, hop_length) * window
    spec = jnp.fft.rfft(frames, n=n_fft, axis=-1)
    if normalized:
        spec = spec / np.float32(np.sqrt(np.sum(window.astype(np.float64) ** 2)))
    return spec


def safe_sqrt(x: Array) -> Array:
    """``sqrt`` whose gradient at 0 is 0 instead of inf/NaN."""
    pos = x > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)


def magnitude(spec: Array) -> Array:
    """``|spec|`` with a finite gradient everywhere (0 at spec == 0)."""
    return safe_sqrt(jnp.square(spec.real) + jnp.square(spec.imag))


def stft_magnitude(x: Array, n_fft: int, hop_length: int, win_length: int | None = None,
                   center: bool = True, pad_mode: str = "reflect") -> Array:
    return magnitude(stft(x, n_fft, hop_length, win_length, center=center, pad_mode=pad_mode))


@functools.lru_cache(maxsize=64)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None, clip_empty: bool = True) -> np.ndarray:
    """``librosa.filters.mel`` (slaney scale + norm), ``[n_mels, n_fft // 2 + 1]`` float32.

    ``clip_empty``: lower ``n_mels`` until no filter is empty (at low rates / small FFTs the
    requested number of mel bands can exceed what the frequency resolution supports).
    """
    import warnings

    import librosa

    n = int(n_mels)
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fb = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n, fmin=fmin, fmax=fmax)
        if not clip_empty or n <= 1 or np.all(fb.max(axis=1) > 0):
            return fb.astype(np.float32)
        n -= 1


def mel_spectrogram(x: Array, sample_rate: int, n_fft: int, hop_length: int | None = None,
                    win_length: int | None = None, n_mels: int = 64, fmin: float = 0.0,
                    fmax: float | None = None, power: float = 1.0, center: bool = True,
                    pad_mode: str = "reflect") -> Array:
    """``[..., T]`` → ``[..., frames, n_mels']`` (``librosa.feature.melspectrogram`` layout
    transposed)."""
    hop_length = n_fft // 4 if hop_length is None else hop_length
    mag = stft_magnitude(x, n_fft, hop_length, win_length, center=center, pad_mode=pad_mode)
    if power != 1.0:
        mag = mag ** power
    fb = mel_filterbank(int(sample_rate), int(n_fft), int(n_mels), float(fmin),
                        None if fmax is None else float(fmax))
    return jnp.einsum("...tf,mf->...tm", mag, jnp.asarray(fb))
