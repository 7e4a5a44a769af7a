"""Evaluation metrics for codecs. Inputs ``[B, T]`` or ``[T]``; numpy in → numpy out,
JAX in → JAX out."""

from __future__ import annotations

import numpy as np

from audiolm_jax.codec.losses import multiscale_mel_loss, multiscale_spectral_loss


def _xp(*arrays):
    if all(isinstance(a, (np.ndarray, np.generic, float, int, list)) for a in arrays):
        return np
    import jax.numpy as jnp

    return jnp


def si_snr_db(ref, est, eps: float = 1e-8):
    """Scale-invariant SNR in dB, per item after removing each item's mean, averaged over
    the batch: ``s = <est, ref> ref / ||ref||^2``, ``10 log10(||s||^2 / ||est - s||^2)``."""
    xp = _xp(ref, est)
    ref = xp.asarray(ref, dtype=xp.float32)
    est = xp.asarray(est, dtype=xp.float32)
    if ref.ndim == 1:
        ref, est = ref[None], est[None]
    ref = ref - ref.mean(axis=-1, keepdims=True)
    est = est - est.mean(axis=-1, keepdims=True)
    dot = xp.sum(ref * est, axis=-1, keepdims=True)
    energy = xp.sum(ref * ref, axis=-1, keepdims=True) + eps
    target = dot / energy * ref
    noise = est - target
    ratio = (xp.sum(target * target, axis=-1) + eps) / (xp.sum(noise * noise, axis=-1) + eps)
    return xp.mean(10.0 * xp.log10(ratio))


def _maybe_numpy(value, like):
    return np.asarray(value) if _xp(*like) is np else value


def mel_distance(ref, est, sample_rate: int, **kwargs):
    """``multiscale_mel_loss`` (L1 of log-mel, averaged over scales)."""
    return _maybe_numpy(multiscale_mel_loss(ref, est, sample_rate, **kwargs), (ref, est))


def spectral_distance(ref, est, **kwargs):
    """``multiscale_spectral_loss`` (RMSE of STFT magnitudes, averaged over scales)."""
    return _maybe_numpy(multiscale_spectral_loss(ref, est, **kwargs), (ref, est))
