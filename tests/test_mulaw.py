"""μ-law tokens: bit-exact against librosa (the reference), numpy and jax paths."""
import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest

from audiolm_jax.tokenizers import mulaw_decode, mulaw_encode, mulaw_vocab_size
from audiolm_jax.tokenizers.mulaw import _thresholds


def article_encode(x, mu=255):
    """The article's tokens, as int (before the uint8 cast, which would wrap 256 to 0)."""
    return librosa.mu_compress(np.asarray(x).clip(-1, 1), mu=mu) + (mu + 1) // 2


def reference(x, mu=255):
    # float32/float16 1.0 gives c(1) > 1 in librosa (log1p in low precision) -> 256; we clamp.
    return np.minimum(article_encode(x, mu), mu)


def boundary_values(dtype):
    """Values exactly on / next to every quantization boundary, in `dtype`."""
    edges = np.linspace(-1, 1, 256)
    on_edges = (np.sign(edges) / 255 * (np.power(256.0, np.abs(edges)) - 1)).astype(dtype)
    t = _thresholds(np.dtype(dtype).str, 255)
    t = t[np.isfinite(t)]
    vals = np.concatenate([on_edges, t, np.nextafter(t, dtype(2)), np.nextafter(t, dtype(-2))])
    return vals.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_encode_matches_librosa(dtype):
    rng = np.random.default_rng(0)
    cases = {
        "random": rng.uniform(-1, 1, size=(4, 4000)),
        "speechlike": np.clip(rng.laplace(scale=0.05, size=20000), -1, 1),
        "linspace": np.linspace(-1, 1, 100_001),
        "edges": np.array([-1.0, -0.0, 0.0, 1.0, 1e-12, -1e-12, 0.5, -0.5]),
        "out_of_range": np.array([-3.0, -1.0000001, 1.0000001, 2.5, 1e9, -np.inf, np.inf]),
        "boundaries": boundary_values(dtype),
    }
    for name, x in cases.items():
        x = x.astype(dtype)
        tok = mulaw_encode(x)
        assert tok.dtype == np.uint8 and tok.shape == x.shape, name
        np.testing.assert_array_equal(tok, reference(x), err_msg=name)


def test_edge_values_and_article_overflow():
    x = np.array([-1.0, 0.0, 1.0])
    np.testing.assert_array_equal(mulaw_encode(x), [0, 128, 255])
    np.testing.assert_array_equal(mulaw_encode(x.astype(np.float32)), [0, 128, 255])
    # librosa's float32 result at exactly 1.0 is one past the top token; we clamp it.
    assert article_encode(np.float32([1.0]))[0] == 256
    np.testing.assert_array_equal(mulaw_encode(np.array([-5.0, 5.0])), [0, 255])
    assert mulaw_vocab_size() == 256


def test_decode_matches_librosa():
    k = np.arange(256)
    ref = librosa.mu_expand(k - 128, mu=255)
    out = mulaw_decode(k.astype(np.uint8))
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, ref, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(out, ref)  # in fact bit-exact
    np.testing.assert_allclose(np.asarray(mulaw_decode(jnp.asarray(k))), ref, atol=1e-6, rtol=0)
    # round trip on a token grid
    np.testing.assert_array_equal(mulaw_encode(out), k)
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        mulaw_decode(np.array([0, 256]))
    with pytest.raises(ValueError, match="integers"):
        mulaw_decode(np.array([0.5]))


@pytest.mark.parametrize("mu", [15, 255])
def test_other_mu(mu):
    x = np.concatenate([np.linspace(-1, 1, 5001), [-1.0, 0.0, 1.0]])
    np.testing.assert_array_equal(mulaw_encode(x, mu=mu), reference(x, mu))
    k = np.arange(mu + 1)
    np.testing.assert_array_equal(mulaw_decode(k, mu=mu),
                                  librosa.mu_expand(k - (mu + 1) // 2, mu=mu))


def test_jax_equals_numpy():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.uniform(-1.2, 1.2, 20000), np.linspace(-1, 1, 20001),
                        boundary_values(np.float32), [-1.0, 0.0, 1.0]]).astype(np.float32)
    x = x.reshape(1, -1)
    enc = jax.jit(mulaw_encode)
    tok = enc(jnp.asarray(x))
    assert tok.dtype == jnp.int32 and tok.shape == x.shape
    np.testing.assert_array_equal(np.asarray(tok), mulaw_encode(x))
    np.testing.assert_array_equal(np.asarray(tok), reference(x))
    dec = jax.jit(mulaw_decode)(tok)
    assert dec.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(dec), mulaw_decode(np.asarray(tok)), atol=1e-6, rtol=0)
