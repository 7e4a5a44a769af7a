"""STFT, spectral / mel losses and metrics against numpy + librosa references."""

import warnings

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest

from audiolm_jax.codec import losses, metrics
from audiolm_jax.layers import spectral


def _signals(b=2, t=4000, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, t)).astype(np.float32) * 0.3
    y = x + 0.1 * rng.standard_normal((b, t)).astype(np.float32)
    return x, y


def _lib_mag(x, n_fft, hop, win):
    # librosa: [freq, frames]; ours: [frames, freq].
    return np.abs(librosa.stft(x, n_fft=n_fft, hop_length=hop, win_length=win, window="hann",
                               center=True, pad_mode="reflect")).T


@pytest.mark.parametrize("n_fft,hop,win", [(512, 50, 240), (1024, 120, 600), (256, 64, 256)])
def test_stft_magnitude_matches_librosa(n_fft, hop, win):
    x, _ = _signals(b=1, t=3001)
    ours = np.asarray(spectral.stft_magnitude(jnp.asarray(x), n_fft, hop, win))[0]
    ref = _lib_mag(x[0], n_fft, hop, win)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_complex_stft_matches_librosa_uncentered():
    x, _ = _signals(b=1, t=2048)
    ours = np.asarray(spectral.stft(jnp.asarray(x), 512, 128, center=False))[0]
    ref = librosa.stft(x[0], n_fft=512, hop_length=128, window="hann", center=False).T
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def _np_spectral_loss(x, y, settings, log=False, eps=1e-5):
    vals = []
    for n_fft, hop, win in settings:
        mx = np.stack([_lib_mag(a, n_fft, hop, win) for a in x]).astype(np.float64)
        my = np.stack([_lib_mag(a, n_fft, hop, win) for a in y]).astype(np.float64)
        if log:
            mx, my = np.log(mx + eps), np.log(my + eps)
        vals.append(np.sqrt(np.mean((mx - my) ** 2)))
    return float(np.mean(vals))


@pytest.mark.parametrize("log", [False, True])
def test_spectral_loss_matches_numpy(log):
    x, y = _signals()
    settings = losses.DEFAULT_STFT_SETTINGS
    ours = float(losses.multiscale_spectral_loss(jnp.asarray(x), jnp.asarray(y), settings, log=log))
    ref = _np_spectral_loss(x, y, settings, log=log)
    np.testing.assert_allclose(ours, ref, rtol=2e-4)
    assert float(losses.multiscale_spectral_loss(jnp.asarray(x), jnp.asarray(x))) == 0.0


def test_mel_loss_matches_librosa():
    x, y = _signals(t=4000)
    sr = 16000
    n_ffts = (512, 1024, 2048)
    ours = float(losses.multiscale_mel_loss(jnp.asarray(x), jnp.asarray(y), sr, n_ffts=n_ffts,
                                            n_mels=64))
    vals = []
    for n_fft in n_ffts:
        def mel(a):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return librosa.feature.melspectrogram(
                    y=a, sr=sr, n_fft=n_fft, hop_length=n_fft // 4, win_length=n_fft,
                    window="hann", center=True, pad_mode="reflect", power=1.0, n_mels=64)
        mx = np.stack([mel(a) for a in x]).astype(np.float64)
        my = np.stack([mel(a) for a in y]).astype(np.float64)
        vals.append(np.mean(np.abs(np.log(mx + 1e-5) - np.log(my + 1e-5))))
    np.testing.assert_allclose(ours, np.mean(vals), rtol=1e-3)


def test_mel_filterbank_clips_empty_filters():
    fb = spectral.mel_filterbank(8000, 128, 128)
    assert fb.shape[0] < 128
    assert np.all(fb.max(axis=1) > 0)
    fb = spectral.mel_filterbank(16000, 512, 64)
    assert fb.shape == (64, 257)


def test_spectral_loss_gradient_finite():
    x, y = _signals(b=2, t=3000)
    x = jnp.asarray(x).at[:, :600].set(0.0)  # silent region: zero magnitudes
    y = jnp.asarray(y)

    @jax.jit
    def grads(a, b):
        g1 = jax.grad(lambda u: losses.multiscale_spectral_loss(u, b))(a)
        g2 = jax.grad(lambda u: losses.multiscale_spectral_loss(u, a))(a)  # zero error
        g3 = jax.grad(lambda u: losses.multiscale_mel_loss(u, b, 16000))(a)
        g4 = jax.grad(lambda u: losses.multiscale_spectral_loss(u, b, log=True))(a)
        return g1, g2, g3, g4

    gs = grads(x, y)
    for g in gs:
        assert np.all(np.isfinite(np.asarray(g)))
    assert float(jnp.abs(gs[0]).sum()) > 0


def test_waveform_losses():
    x, y = _signals()
    np.testing.assert_allclose(float(losses.waveform_l1(x, y)), np.mean(np.abs(x - y)), rtol=1e-5)
    np.testing.assert_allclose(float(losses.waveform_mse(x, y)), np.mean((x - y) ** 2), rtol=1e-5)


def _np_si_snr(ref, est):
    out = []
    for r, e in zip(ref.astype(np.float64), est.astype(np.float64)):
        r, e = r - r.mean(), e - e.mean()
        s = (e @ r) / (r @ r) * r
        out.append(10 * np.log10((s @ s) / ((e - s) @ (e - s))))
    return np.mean(out)


def test_si_snr():
    x, y = _signals()
    ref = _np_si_snr(x, y)
    np.testing.assert_allclose(metrics.si_snr_db(x, y), ref, rtol=1e-4)
    np.testing.assert_allclose(float(metrics.si_snr_db(jnp.asarray(x), jnp.asarray(y))), ref,
                               rtol=1e-4)
    assert isinstance(metrics.si_snr_db(x, y), (np.floating, float))
    # Scale and offset invariance.
    np.testing.assert_allclose(metrics.si_snr_db(x, 3.0 * y + 0.5), ref, rtol=1e-4)


def test_metric_distances():
    x, y = _signals()
    d = metrics.spectral_distance(x, y)
    assert isinstance(d, np.ndarray) and d > 0
    m = metrics.mel_distance(x, y, 16000)
    assert m > 0
    assert float(metrics.mel_distance(x, x, 16000)) == 0.0
