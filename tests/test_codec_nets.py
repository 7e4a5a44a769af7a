"""Conv layers, CNN / SEANet encoder-decoders: shapes, frame rates, causality, weight norm."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from audiolm_jax.codec.networks import make_encoder_decoder
from audiolm_jax.layers import (CausalConv1d, Conv1d, Conv2d, ConvTranspose1d, count_params,
                                get_extra_padding_for_conv1d)
from helpers import fast_params as _fast_params


def _init_apply(module, x, seed=0, fast=True):
    if fast:
        params = _fast_params(module, x, seed)
    else:
        params = jax.jit(module.init)(jax.random.PRNGKey(seed), x)
    return params, jax.jit(module.apply)


# --------------------------------------------------------------------------- conv layers


def _np_conv1d(x, w, b, stride, dilation, left, right):
    """x [T, Cin], w [K, Cin, Cout] → [T', Cout] (cross-correlation)."""
    x = np.pad(x, ((left, right), (0, 0)))
    k = w.shape[0]
    eff = (k - 1) * dilation + 1
    n = (x.shape[0] - eff) // stride + 1
    out = np.zeros((n, w.shape[2]))
    for t in range(n):
        for j in range(k):
            out[t] += x[t * stride + j * dilation] @ w[j]
    return out + b


@pytest.mark.parametrize("k,s,d,t", [(7, 1, 1, 50), (3, 1, 3, 50), (8, 4, 1, 50), (10, 5, 1, 37),
                                     (1, 1, 1, 20)])  # lax conv, im2col, strided, matmul
def test_causal_conv_matches_numpy(k, s, d, t):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, t, 3)).astype(np.float32)
    conv = CausalConv1d(5, k, stride=s, dilation=d)
    params, apply = _init_apply(conv, jnp.asarray(x))
    y = np.asarray(apply(params, jnp.asarray(x)))
    eff = (k - 1) * d + 1
    extra = get_extra_padding_for_conv1d(t, eff, s, eff - s)
    w = np.asarray(params["params"]["kernel"])
    ref = _np_conv1d(x[0], w, 0.0, s, d, eff - s, extra)
    assert y.shape == (2, int(np.ceil(t / s)), 5)
    np.testing.assert_allclose(y[0], ref, rtol=1e-5, atol=1e-5)


def test_same_and_int_padding_lengths():
    x = jnp.ones((1, 64, 2))
    for pad, expect in [("same", 64), ("reflect", 64), ("valid", 58), (3, 64)]:
        conv = Conv1d(4, 7, padding=pad)
        params, apply = _init_apply(conv, x)
        assert apply(params, x).shape == (1, expect, 4), pad
    conv = Conv1d(4, 4, stride=2, padding=1)  # the CNN codec's downsampling conv
    params, apply = _init_apply(conv, x)
    assert apply(params, x).shape == (1, 32, 4)


def test_weight_norm_parametrization():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 40, 3)).astype(np.float32))
    conv = Conv1d(6, 5, weight_norm=True, padding="causal")
    params, apply = _init_apply(conv, x, fast=False)
    p = params["params"]
    assert set(p) == {"v", "g", "bias"}
    assert p["v"].shape == (5, 3, 6) and p["g"].shape == (6,)
    # At init the kernel equals v: g == ||v|| over (K, Cin).
    np.testing.assert_allclose(p["g"], np.sqrt((np.asarray(p["v"]) ** 2).sum(axis=(0, 1))),
                               rtol=1e-6)
    y0 = apply(params, x)
    # Scaling v does not change the output; scaling g scales it (bias is zero at init).
    y_v = apply({"params": {**p, "v": p["v"] * 7.0}}, x)
    np.testing.assert_allclose(y_v, y0, rtol=1e-5, atol=1e-6)
    y_g = apply({"params": {**p, "g": p["g"] * 2.0}}, x)
    np.testing.assert_allclose(y_g, 2.0 * y0, rtol=1e-5, atol=1e-6)
    # Output equals the plain conv with kernel g * v / ||v||.
    g = np.asarray(p["g"]) * np.linspace(0.5, 2.0, 6)
    v = np.asarray(p["v"])
    kernel = g * v / np.sqrt((v ** 2).sum(axis=(0, 1)))
    plain = Conv1d(6, 5, padding="causal")
    y_plain = plain.apply({"params": {"kernel": kernel, "bias": p["bias"]}}, x)
    y_wn = apply({"params": {**p, "g": jnp.asarray(g)}}, x)
    np.testing.assert_allclose(y_wn, y_plain, rtol=1e-5, atol=1e-5)
    # Transposed and 2-D convs use the same parametrization.
    for mod, xin, vshape in [(ConvTranspose1d(4, 4, stride=2, weight_norm=True), x, (4, 3, 4)),
                             (Conv2d(4, (3, 5), weight_norm=True), jnp.ones((1, 8, 9, 2)),
                              (3, 5, 2, 4))]:
        pp = jax.eval_shape(mod.init, jax.random.PRNGKey(0), xin)["params"]
        assert pp["v"].shape == vshape and pp["g"].shape == (4,)


def _np_conv_transpose(x, w, stride, groups):
    """x [T, Cin], w [K, Cin/groups, Cout]; y[t*s + j, o] += x[t, i] w[j, i_local, o]."""
    t_in, cin = x.shape
    k, cin_g, cout = w.shape
    cout_g = cout // groups
    y = np.zeros(((t_in - 1) * stride + k, cout))
    for t in range(t_in):
        for j in range(k):
            for o in range(cout):
                g = o // cout_g
                xi = x[t, g * cin_g:(g + 1) * cin_g]
                y[t * stride + j, o] += xi @ w[j, :, o]
    return y


@pytest.mark.parametrize("groups,causal,padding", [(1, True, None), (1, False, None),
                                                   (4, True, None), (2, True, 1)])
def test_conv_transpose_matches_numpy(groups, causal, padding):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 9, 4)).astype(np.float32)
    k, s = 5, 2
    conv = ConvTranspose1d(4, k, stride=s, groups=groups, causal=causal, padding=padding)
    params, apply = _init_apply(conv, jnp.asarray(x))
    w = np.asarray(params["params"]["kernel"])
    assert w.shape == (k, 4 // groups, 4)
    y = np.asarray(apply(params, jnp.asarray(x)))[0]
    full = _np_conv_transpose(x[0], w, s, groups)
    if padding is not None:
        ref = full[padding:full.shape[0] - padding]
    elif causal:
        ref = full[:full.shape[0] - (k - s)]
    else:
        right = (k - s) // 2
        ref = full[(k - s) - right:full.shape[0] - right]
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_conv_transpose_channelwise_groups():
    """groups == channels: Mimi-style channel-wise upsampling, no cross-channel mixing."""
    c = 6
    x = np.zeros((1, 10, c), np.float32)
    x[0, :, 2] = np.arange(10)
    conv = ConvTranspose1d(c, 4, stride=2, groups=c, use_bias=False)
    params, apply = _init_apply(conv, jnp.asarray(x))
    assert params["params"]["kernel"].shape == (4, 1, c)
    y = np.asarray(apply(params, jnp.asarray(x)))
    assert y.shape == (1, 20, c)
    assert np.all(y[..., [0, 1, 3, 4, 5]] == 0) and np.any(y[..., 2] != 0)
    # Torch-style padding=1 with k4 s2 doubles the length exactly (CNN codec decoder).
    conv = ConvTranspose1d(c, 4, stride=2, padding=1)
    params, apply = _init_apply(conv, jnp.asarray(x))
    assert apply(params, jnp.asarray(x)).shape == (1, 20, c)


# --------------------------------------------------------------------------- CNN codec


def test_cnn_codec_shapes_and_param_count():
    mcfg = ml_collections.ConfigDict({"kind": "cnn"})
    enc, dec, hop, latent = make_encoder_decoder(mcfg)
    assert hop == 128 and latent == 32
    assert 16000 / hop == 125.0
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 128 * 25)), jnp.float32)
    pe, enc_apply = _init_apply(enc, x)
    z = enc_apply(pe, x)
    assert z.shape == (2, 25, 32)
    pd, dec_apply = _init_apply(dec, z)
    y = dec_apply(pd, z)
    assert y.shape == (2, 128 * 25)
    n_enc, n_dec = count_params(pe), count_params(pd)
    print(f"CNN codec params: encoder {n_enc}, decoder {n_dec}, total {n_enc + n_dec}")
    assert n_enc == 201_856 and n_dec == 205_921
    assert 0.38e6 < n_enc + n_dec < 0.42e6
    # The quirk x + (x + f(x)) keeps the parameters but changes the output.
    small = {"kind": "cnn", "num_blocks": 2, "res_blocks": 2}
    _, dec_s, hop_s, _ = make_encoder_decoder(ml_collections.ConfigDict(small))
    _, dec_q, _, _ = make_encoder_decoder(
        ml_collections.ConfigDict({**small, "double_residual_quirk": True}))
    assert hop_s == 4
    zs = z[:, :8]
    ps = _fast_params(dec_s, zs)
    assert count_params(_fast_params(dec_q, zs)) == count_params(ps)
    ys, yq = dec_s.apply(ps, zs), dec_q.apply(ps, zs)
    assert yq.shape == ys.shape == (2, 32) and not np.allclose(yq, ys)


# --------------------------------------------------------------------------- SEANet


@pytest.mark.parametrize("ratios,hop,rate", [((8, 5, 4, 2), 320, 75), ((8, 6, 5, 4), 960, 25)])
def test_seanet_shapes_and_frame_rate(ratios, hop, rate):
    mcfg = ml_collections.FrozenConfigDict({"kind": "seanet", "ratios": ratios,
                                            "n_filters": 8, "dimension": 32})
    enc, dec, hop_, latent = make_encoder_decoder(mcfg)
    assert hop_ == hop and latent == 32
    sr = 24000
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, sr)) * 0.1, jnp.float32)
    pe, enc_apply = _init_apply(enc, x)
    z = enc_apply(pe, x)
    assert z.shape == (2, rate, 32)
    pd, dec_apply = _init_apply(dec, z)
    assert dec_apply(pd, z).shape == (2, sr)
    # Weight norm is on by default.
    assert "v" in pe["params"]["conv_in"] and "g" in pe["params"]["conv_in"]


def test_seanet_default_param_count():
    enc, dec, hop, latent = make_encoder_decoder(ml_collections.ConfigDict({"kind": "seanet"}))
    x = jnp.zeros((1, hop * 2))
    pe = jax.eval_shape(enc.init, jax.random.PRNGKey(0), x)
    z = jax.ShapeDtypeStruct((1, 2, latent), jnp.float32)
    pd = jax.eval_shape(dec.init, jax.random.PRNGKey(0), z)
    n_enc, n_dec = count_params(pe), count_params(pd)
    print(f"SEANet (32 filters, [8,5,4,2], dim 128) params: encoder {n_enc}, decoder {n_dec}")
    assert n_enc == 3_135_296 and n_dec == 3_135_042


def _small_seanet(causal=True):
    return make_encoder_decoder(ml_collections.ConfigDict({
        "kind": "seanet", "ratios": (4, 2, 2), "n_filters": 4, "dimension": 8,
        "n_residual_layers": 2, "causal": causal}))


def test_seanet_encoder_is_causal():
    enc, _, hop, _ = _small_seanet()
    rng = np.random.default_rng(3)
    n_frames = 12
    x = rng.standard_normal((1, hop * n_frames)).astype(np.float32)
    pe, apply = _init_apply(enc, jnp.asarray(x))
    z = np.asarray(apply(pe, jnp.asarray(x)))
    for t in [0, 5, hop * 3, hop * 5 + 7, hop * n_frames - 1]:
        x2 = x.copy()
        x2[:, t:] = rng.standard_normal(x2[:, t:].shape)
        z2 = np.asarray(apply(pe, jnp.asarray(x2)))
        done = t // hop  # frames 0..done-1 end (at sample (f+1)*hop - 1) before t
        np.testing.assert_array_equal(z2[:, :done], z[:, :done])
        assert not np.allclose(z2[:, done:], z[:, done:])
    # The non-causal variant does look ahead (so the check above is meaningful).
    enc_nc, _, _, _ = _small_seanet(causal=False)
    pe, apply = _init_apply(enc_nc, jnp.asarray(x))
    x2 = x.copy()
    x2[:, hop * 6:] = 0.0
    z, z2 = apply(pe, jnp.asarray(x)), apply(pe, jnp.asarray(x2))
    assert not np.allclose(z[:, 5], z2[:, 5])


def test_seanet_decoder_is_causal():
    _, dec, hop, latent = _small_seanet()
    rng = np.random.default_rng(4)
    n_frames = 10
    z = rng.standard_normal((1, n_frames, latent)).astype(np.float32)
    pd, apply = _init_apply(dec, jnp.asarray(z))
    y = np.asarray(apply(pd, jnp.asarray(z)))
    assert y.shape == (1, n_frames * hop)
    for f in [1, 4, 9]:
        z2 = z.copy()
        z2[:, f:] = rng.standard_normal(z2[:, f:].shape)
        y2 = np.asarray(apply(pd, jnp.asarray(z2)))
        np.testing.assert_array_equal(y2[:, :f * hop], y[:, :f * hop])
        assert not np.allclose(y2[:, f * hop:], y[:, f * hop:])
