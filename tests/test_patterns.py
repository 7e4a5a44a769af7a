"""Token layouts: round trips, worked examples, jax == numpy, input validation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiolm_jax.lm.patterns import (DelayPattern, DepthPattern, FlatPattern,
                                     MultiStreamPattern, ParallelPattern, level_weights,
                                     make_pattern)

V = 16
SHAPES = [(1, 1, 1), (2, 3, 5), (3, 8, 7), (2, 4, 1)]  # (B, K, T)


def all_patterns(k):
    return [
        FlatPattern(k, V), FlatPattern(k, V, level_offsets=True), ParallelPattern(k, V),
        DelayPattern(k, V), DelayPattern(k, V, delays=tuple(reversed(range(k)))),
        DepthPattern(k, V), DepthPattern(k, V, acoustic_delay=2, num_semantic=min(2, k)),
        DepthPattern(k, V, acoustic_delay=0),
    ]


@pytest.mark.parametrize("b,k,t", SHAPES)
def test_round_trip_single_and_two_streams(b, k, t):
    rng = np.random.default_rng(k * 100 + t)
    x = rng.integers(0, V, size=(b, k, t)).astype(np.int32)
    x2 = rng.integers(0, V, size=(b, 2, k, t)).astype(np.int32)
    for p in all_patterns(k):
        seq = p.build(x)
        assert seq.shape[1:] == p.seq_shape(t), p
        np.testing.assert_array_equal(p.revert(seq), x, err_msg=repr(p))
        assert p.valid_mask(t).shape == p.seq_shape(t)
        ms = MultiStreamPattern(p, 2)
        seq2 = ms.build(x2)
        assert seq2.shape[1:] == ms.seq_shape(t)
        np.testing.assert_array_equal(ms.revert(seq2), x2, err_msg=repr(ms))


def test_flat_matches_rearrange_and_level_ids():
    rng = np.random.default_rng(0)
    x = rng.integers(0, V, size=(2, 3, 5))
    p = FlatPattern(3, V)
    seq = p.build(x)
    # b q t -> b (t q)
    np.testing.assert_array_equal(seq, x.transpose(0, 2, 1).reshape(2, 15))
    np.testing.assert_array_equal(seq[:, :6], [[x[i, 0, 0], x[i, 1, 0], x[i, 2, 0], x[i, 0, 1],
                                                 x[i, 1, 1], x[i, 2, 1]] for i in range(2)])
    np.testing.assert_array_equal(p.level_ids(7), [0, 1, 2, 0, 1, 2, 0])
    np.testing.assert_array_equal(p.frame_ids(7), [0, 0, 0, 1, 1, 1, 2])
    for i in range(15):
        assert seq[0, i] == x[0, p.level_ids(15)[i], i // 3]
    assert p.embed_vocab_size == V
    with pytest.raises(ValueError, match="multiple of the number of levels K=3"):
        p.revert(seq[:, :7])


def test_flat_level_offsets():
    x = np.array([[[1, 2], [3, 4], [5, 6]]])  # K=3, T=2
    p = FlatPattern(3, 10, level_offsets=True)
    np.testing.assert_array_equal(p.build(x), [[1, 13, 25, 2, 14, 26]])
    np.testing.assert_array_equal(p.revert(p.build(x)), x)
    assert p.embed_vocab_size == 30
    # small dtypes are widened so offsets cannot wrap
    xb = np.full((1, 3, 2), 255, np.uint8)
    pb = FlatPattern(3, 256, level_offsets=True)
    assert pb.build(xb).max() == 2 * 256 + 255
    np.testing.assert_array_equal(pb.revert(pb.build(xb)), xb)
    with pytest.raises(ValueError, match="needs vocab_size"):
        FlatPattern(3, level_offsets=True)


def test_delay_worked_example():
    S = 100
    codes = np.array([[[10 * q + t for t in range(4)] for q in range(3)]])  # K=3, T=4
    p = DelayPattern(3, vocab_size=100)
    expected = np.array([[
        [0, 1, 2, 3, S, S],
        [S, 10, 11, 12, 13, S],
        [S, S, 20, 21, 22, 23],
    ]])
    np.testing.assert_array_equal(p.build(codes), expected)
    np.testing.assert_array_equal(p.revert(expected), codes)
    np.testing.assert_array_equal(p.valid_mask(4), expected[0] != S)
    assert p.delays == (0, 1, 2) and p.special_token == 100 and p.embed_vocab_size == 101
    assert p.seq_shape(4) == (3, 6)
    # the special slots are ignored by revert
    noisy = expected.copy()
    noisy[expected == S] = 7
    np.testing.assert_array_equal(p.revert(noisy), codes)


def test_depth_worked_example():
    S = 50
    codes = np.array([[[1, 2, 3], [4, 5, 6], [7, 8, 9]]])  # K=3, T=3
    p = DepthPattern(3, vocab_size=50, acoustic_delay=1)
    expected = np.array([[
        [1, 2, 3, S],   # semantic: delay 0
        [S, 4, 5, 6],   # acoustic: delay 1
        [S, 7, 8, 9],
    ]])
    np.testing.assert_array_equal(p.build(codes), expected)
    np.testing.assert_array_equal(p.revert(expected), codes)
    np.testing.assert_array_equal(p.valid_mask(3), expected[0] != S)
    assert p.level_delays == (0, 1, 1) and p.embed_vocab_size == 51


def test_two_stream_layouts():
    # stream s, level q, frame t -> 100*s + 10*q + t
    x = np.array([[[[100 * s + 10 * q + t for t in range(2)] for q in range(2)]
                   for s in range(2)]])  # [1, S=2, K=2, T=2]
    flat = MultiStreamPattern(FlatPattern(2, 1000))
    np.testing.assert_array_equal(flat.build(x), [[0, 10, 100, 110, 1, 11, 101, 111]])
    np.testing.assert_array_equal(flat.level_ids(8), [0, 1, 0, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(flat.stream_ids(8), [0, 0, 1, 1, 0, 0, 1, 1])
    S = 1000
    depth = MultiStreamPattern(DepthPattern(2, 1000))
    np.testing.assert_array_equal(depth.build(x), [[
        [0, 1, S], [S, 10, 11], [100, 101, S], [S, 110, 111]]])
    delay = make_pattern("delay", 2, 1000, num_streams=2)
    assert delay.inner.delays == (0, 1, 0, 1)
    np.testing.assert_array_equal(delay.revert(delay.build(x)), x)
    with pytest.raises(ValueError, match=r"\[B, S=2, K=2, T\]"):
        flat.build(x[:, :1])


def test_level_weights():
    w = [10] + [0.1] * 7
    flat = make_pattern("flat", 8, 1024)
    pw = level_weights(w, flat, seq_len=20)
    assert pw.shape == (20,) and pw[0] == 10 and pw[8] == 10 and pw[16] == 10
    np.testing.assert_allclose(pw[1:8], 0.1)
    for name in ("parallel", "delay", "depth"):
        np.testing.assert_allclose(level_weights(w, make_pattern(name, 8, 1024)), w)
    np.testing.assert_array_equal(level_weights(None, flat, seq_len=3), [1, 1, 1])
    two = make_pattern("flat", 8, 1024, num_streams=2)
    pw2 = level_weights(w, two, seq_len=32)
    np.testing.assert_allclose(pw2[:16], w + w)
    with pytest.raises(ValueError, match="expected 8 per-level weights"):
        level_weights([1.0, 2.0], flat, seq_len=4)


def test_jit_matches_numpy():
    rng = np.random.default_rng(3)
    x = rng.integers(0, V, size=(2, 4, 6)).astype(np.int32)
    x2 = rng.integers(0, V, size=(2, 2, 4, 6)).astype(np.int32)
    pats = [(p, x) for p in all_patterns(4)[:6]]
    pats += [(MultiStreamPattern(p), x2) for p in (FlatPattern(4, V), DelayPattern(4, V),
                                                    DepthPattern(4, V))]
    for p, c in pats:
        seq_np = p.build(c)
        seq_j = jax.jit(p.build)(jnp.asarray(c))
        assert isinstance(seq_j, jax.Array)
        np.testing.assert_array_equal(np.asarray(seq_j), seq_np, err_msg=repr(p))
        back = jax.jit(p.revert)(seq_j)
        np.testing.assert_array_equal(np.asarray(back), c, err_msg=repr(p))


def test_bad_inputs():
    x = np.zeros((2, 3, 4), np.int32)
    for name in ("flat", "parallel", "delay", "depth"):
        p = make_pattern(name, 4, V)
        with pytest.raises(ValueError, match=r"K=4"):
            p.build(x)
        with pytest.raises(ValueError, match="integer"):
            p.build(x[:, :1].astype(np.float32).repeat(4, 1))
    with pytest.raises(ValueError, match=r"K=4"):
        DelayPattern(4, V).revert(np.zeros((2, 3, 9), np.int32))
    with pytest.raises(ValueError, match="shorter than the maximum delay 3"):
        DelayPattern(4, V).revert(np.zeros((2, 4, 2), np.int32))
    with pytest.raises(ValueError, match="expected 4 delays"):
        DelayPattern(4, V, delays=(0, 1))
    with pytest.raises(ValueError, match="num_semantic"):
        DepthPattern(4, V, num_semantic=5)
    with pytest.raises(ValueError, match="unknown pattern"):
        make_pattern("zigzag", 4, V)
    with pytest.raises(ValueError, match="needs vocab_size"):
        make_pattern("delay", 4)
