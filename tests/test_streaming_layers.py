"""Streaming is a mode of the layers: a causal Conv1d, a causal ConvTranspose1d, a SEANet and the
transformer stack, fed a signal chunk by chunk with their state carried in the ``streaming``
collection, give what the offline layer gives on the whole signal. Each check also runs the
chunks without carrying the state, which must not match (so the comparison can fail)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import fast_params

from audiolm_jax.codec.seanet import SEANetDecoder, SEANetEncoder
from audiolm_jax.layers.conv import Conv1d, ConvTranspose1d
from audiolm_jax.layers.streaming import STREAMING, initial_state
from audiolm_jax.layers.transformer import TransformerConfig, TransformerStack


def _random_biases(variables, seed):
    """Non-zero biases (``fast_params`` zeroes them), so a wrongly placed bias shows."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        if getattr(path[-1], "key", "") == "bias":
            return jnp.asarray(rng.standard_normal(leaf.shape) * 0.5, leaf.dtype)
        return leaf

    return jax.tree_util.tree_map_with_path(fill, variables)


def _offline_and_streamed(module, x, lengths, seed=0, method=None):
    """(offline output, chunk-by-chunk output, chunk-by-chunk output without carried state)
    of ``module`` on ``x [B, T, ...]`` cut into chunks of ``lengths`` (summing to T): the
    streaming mode is ``__call__(x, streaming=True)``, or ``method`` when given."""
    assert sum(lengths) == x.shape[1]
    variables = _random_biases(fast_params(module, x, seed), seed + 1)
    offline = jax.jit(module.apply)(variables, x)
    streaming_kw = {} if method is not None else {"streaming": True}
    step = jax.jit(lambda v, s, x: module.apply({**v, STREAMING: s}, x, method=method,
                                                mutable=[STREAMING], **streaming_kw))
    start = initial_state(module, variables, x[:, :lengths[0]], method=method, **streaming_kw)
    state, carried, fresh = start, [], []
    t = 0
    for n in lengths:
        chunk = x[:, t:t + n]
        y, new = step(variables, state, chunk)
        state = new[STREAMING]
        carried.append(np.asarray(y))
        fresh.append(np.asarray(step(variables, start, chunk)[0]))
        t += n
    return np.asarray(offline), np.concatenate(carried, 1), np.concatenate(fresh, 1)


def _check(offline, streamed, fresh, rtol=1e-5):
    scale = np.abs(offline).max()
    assert streamed.shape == offline.shape
    np.testing.assert_allclose(streamed, offline, rtol=0, atol=rtol * scale)
    assert np.abs(fresh - offline).max() > 100 * rtol * scale  # the carried state matters


@pytest.mark.parametrize("k,s,d,pad_mode,lengths", [
    (7, 1, 1, "constant", (5, 1, 9, 3, 6)),    # few taps (broadcast products)
    (3, 1, 3, "constant", (4, 8, 2, 10)),       # dilated
    (4, 2, 1, "constant", (2, 6, 4, 12)),       # strided (Mimi's downsampling)
    (10, 5, 1, "constant", (5, 15, 10)),        # strided, kernel 2 x stride (SEANet)
    (4, 2, 1, "replicate", (2, 6, 4, 12)),      # replicate padding: the first chunk's sample
    (5, 1, 2, "replicate", (3, 7, 6, 8)),
])
def test_causal_conv1d_streams_like_offline(k, s, d, pad_mode, lengths):
    x = np.random.default_rng(k * 10 + s).standard_normal((2, sum(lengths), 3)).astype(np.float32)
    x[:, 0] += 3.0  # a first sample far from zero, so replicate and zero padding differ
    conv = Conv1d(5, k, stride=s, dilation=d, padding="causal", pad_mode=pad_mode)
    offline, streamed, fresh = _offline_and_streamed(conv, jnp.asarray(x), lengths)
    _check(offline, streamed, fresh)


def test_weight_norm_conv1d_streams_like_offline():
    x = jnp.asarray(np.random.default_rng(3).standard_normal((1, 24, 4)), jnp.float32)
    conv = Conv1d(6, 5, stride=1, padding="causal", weight_norm=True)
    _check(*_offline_and_streamed(conv, x, (8, 8, 8)))


@pytest.mark.parametrize("k,s,groups,lengths", [
    (4, 2, 1, (1, 3, 2, 4)),    # SEANet / Mimi (kernel 2 x stride)
    (5, 3, 1, (2, 1, 4)),       # overlap not a multiple of the stride
    (4, 2, 4, (3, 1, 2, 2)),    # channel-wise (Mimi's upsampling)
    (6, 2, 2, (2, 2, 3)),       # grouped, three overlapping pieces
])
def test_causal_conv_transpose1d_streams_like_offline(k, s, groups, lengths):
    x = np.random.default_rng(k + s).standard_normal((2, sum(lengths), 4)).astype(np.float32)
    conv = ConvTranspose1d(4, k, stride=s, groups=groups, causal=True)
    offline, streamed, fresh = _offline_and_streamed(conv, jnp.asarray(x), lengths)
    _check(offline, streamed, fresh)


def test_kernel_equal_to_stride_carries_nothing():
    x = jnp.ones((1, 6, 2))
    for conv in (ConvTranspose1d(3, 2, stride=2), Conv1d(3, 2, stride=2, padding="causal")):
        variables = fast_params(conv, x)
        assert initial_state(conv, variables, x, streaming=True) == {}


def test_streaming_refuses_what_cannot_stream():
    x = jnp.ones((1, 8, 2))
    for conv, chunk in [(Conv1d(3, 3, padding="same"), x),
                        (Conv1d(3, 4, stride=2, padding="causal"), x[:, :3]),  # part of a stride
                        (Conv1d(3, 3, padding="causal", pad_mode="reflect"), x),
                        (ConvTranspose1d(3, 4, stride=2, causal=False), x),
                        (ConvTranspose1d(3, 4, stride=2, trim_right_ratio=0.5), x)]:
        variables = fast_params(conv, x)
        with pytest.raises(ValueError):
            conv.apply(variables, chunk, streaming=True, mutable=[STREAMING])


_SEANET = dict(n_filters=4, ratios=(4, 2), dimension=8, n_residual_layers=1, dilation_base=2,
               kernel_size=7, last_kernel_size=3, weight_norm=False)


@pytest.mark.parametrize("pad_mode", ["constant", "replicate"])
def test_seanet_encoder_streams_like_offline(pad_mode):
    enc = SEANetEncoder(**_SEANET, pad_mode=pad_mode)
    hop = enc.hop_length
    audio = np.random.default_rng(4).standard_normal((2, 7 * hop)).astype(np.float32) * 0.5
    audio[:, 0] += 2.0
    offline, streamed, fresh = _offline_and_streamed(enc, jnp.asarray(audio),
                                                     (hop, 2 * hop, hop, 3 * hop))
    assert offline.shape == (2, 7, 8)
    _check(offline, streamed, fresh)


def test_seanet_decoder_streams_like_offline():
    dec = SEANetDecoder(**_SEANET)
    z = np.random.default_rng(5).standard_normal((2, 7, 8)).astype(np.float32)
    offline, streamed, fresh = _offline_and_streamed(dec, jnp.asarray(z), (1, 2, 1, 3))
    assert offline.shape == (2, 7 * dec.hop_length)
    _check(offline, streamed, fresh)


@pytest.mark.parametrize("window", [0, 4])
def test_transformer_stack_streams_like_offline(window):
    cfg = TransformerConfig(num_layers=2, num_heads=2, width=8, mlp="gelu", norm="layer",
                            rope="half", window=window, attention="xla")
    stack = TransformerStack(cfg)
    x = jnp.asarray(np.random.default_rng(6).standard_normal((2, 11, 8)), jnp.float32)
    lengths = (3, 1, 4, 2, 1)
    if window:
        offline, streamed, fresh = _offline_and_streamed(stack, x, lengths, method="stream")
    else:  # a full-length cache needs its length
        variables = fast_params(stack, x)
        offline = np.asarray(stack.apply(variables, x))
        state = initial_state(stack, variables, x[:, :3], 16, method="stream")
        assert state["index"] == 0 and state["cache"]["k"][0].shape == (4, 16, 4)
        streamed, t = [], 0
        for n in lengths:
            y, new = stack.apply({**variables, STREAMING: state}, x[:, t:t + n], 16,
                                 method="stream", mutable=[STREAMING])
            state, t = new[STREAMING], t + n
            streamed.append(np.asarray(y))
        streamed = np.concatenate(streamed, 1)
        assert state["index"] == 11
        fresh = None
    np.testing.assert_allclose(streamed, offline, rtol=0, atol=1e-5 * np.abs(offline).max())
    if fresh is not None:
        assert np.abs(fresh - offline).max() > 1e-3 * np.abs(offline).max()
