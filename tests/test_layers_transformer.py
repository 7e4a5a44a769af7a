"""The shared transformer (audiolm_jax/layers): attention kernels against a numpy reference,
KV caches (full and ring) against the whole-sequence call, both rotary conventions, RMSNorm,
the gated MLP, per-step weights, the parameter count and the old Mimi tree upgrade."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import fast_init

from audiolm_jax.layers import attention
from audiolm_jax.layers.rotary import apply_rope
from audiolm_jax.layers.transformer import (Block, RMSNorm, TransformerConfig, TransformerStack,
                                            block_num_params, legacy_renames)


def _rand(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _numpy_attention(q, k, v, window=0):
    B, T, H, D = q.shape
    scores = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(D)
    i = np.arange(T)
    delta = i[:, None] - i[None, :]
    ok = (delta >= 0) & ((delta < window) if window else True)
    scores = np.where(ok, scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhts,bshd->bthd", p, v)


@pytest.mark.parametrize("kind,block,window,T", [
    ("xla", 0, 0, 37), ("blocked", 8, 0, 37), ("blocked", 8, 0, 32), ("xla", 0, 5, 37),
    ("blocked", 8, 5, 37), ("blocked", 4, 11, 30)])
def test_causal_attention_matches_numpy(kind, block, window, T):
    q, k, v = (_rand(s, 2, T, 3, 8) for s in range(3))
    got = attention.causal_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                                     window=window, kind=kind, block=block)
    np.testing.assert_allclose(np.asarray(got), _numpy_attention(q, k, v, window), atol=2e-5)


def _stack(**kw):
    cfg = TransformerConfig(**{**dict(num_layers=2, num_heads=2, width=16, mlp_ratio=2,
                                      rope="half", attention_block=4), **kw})
    stack = TransformerStack(cfg)
    x = jnp.asarray(_rand(5, 2, 19, 16))
    # random weights of init's shapes, without compiling its PRNG ops (helpers.fast_init)
    params = fast_init(stack.init, x)["params"]
    params = jax.tree.map(lambda a: a * 2.0, params)  # away from identity
    return cfg, stack, params, x


@functools.lru_cache(maxsize=None)
def _compiled_stack(window):
    """``_stack(window=window)`` with jitted whole-sequence and decode calls, shared by the
    tests of one window: the decode step compiles once per chunk length (``index`` is traced,
    as in streaming), instead of op by op for every chunk position."""
    cfg, stack, params, x = _stack(window=window)
    whole = jax.jit(lambda p, x: stack.apply({"params": p}, x))
    decode = jax.jit(lambda p, x, cache, i: stack.apply({"params": p}, x, cache, i,
                                                         method="decode"))
    return cfg, stack, params, np.asarray(x), whole, decode


@pytest.mark.parametrize("window", [0, 6])
@pytest.mark.parametrize("chunks", [(19,), (1,) * 19, (3, 5, 1, 6, 4)])
def test_cached_decoding_equals_the_whole_sequence(window, chunks):
    """A full cache (window 0) or a ring of the window, fed chunk by chunk, gives the
    whole-sequence outputs."""
    if window and max(chunks) > window:
        chunks = tuple(c for c in chunks for c in ([1] * c))
    cfg, stack, params, x, whole, decode = _compiled_stack(window)
    want = whole(params, x)
    cache = stack.init_cache(2, max_length=19)
    assert cache["k"][0].shape == (2 * 2, window or 19, 8)
    outs, i = [], 0
    for n in chunks:
        y, cache = decode(params, x[:, i:i + n], cache, i)
        outs.append(y)
        i += n
    np.testing.assert_allclose(np.concatenate(outs, axis=1), want, atol=3e-5)


def test_ring_cache_forgets_what_leaves_the_window():
    """With window 4 and 2 layers, frame 10's output depends on frames 4..10 only."""
    cfg, stack, params, x, _, decode = _compiled_stack(4)

    def last_output(inputs):
        cache = stack.init_cache(2)
        for i in range(11):
            y, cache = decode(params, inputs[:, i:i + 1], cache, i)
        return np.asarray(y)

    want = last_output(x)
    zeroed = x.copy()
    zeroed[:, :4] = 0.0
    np.testing.assert_allclose(last_output(zeroed), want, atol=1e-6)
    zeroed = x.copy()
    zeroed[:, 4] = 0.0
    assert np.abs(last_output(zeroed) - want).max() > 1e-4


def test_rope_conventions_are_a_permutation_of_each_other():
    x = jnp.asarray(_rand(1, 2, 7, 3, 8))
    pos = jnp.broadcast_to(jnp.arange(7) * 3, (2, 7))
    half = apply_rope(x, pos, 10000.0, "half")
    # interleaved pairs (2i, 2i+1) are the half-split pairs (i, i + D/2) after a permutation
    perm = np.stack([np.arange(4), np.arange(4) + 4], axis=1).reshape(-1)
    inter = apply_rope(x[..., perm], pos, 10000.0, "interleaved")
    np.testing.assert_allclose(inter, half[..., perm], atol=1e-6)
    # the rotation keeps norms and rotates position 0 not at all
    np.testing.assert_allclose(jnp.linalg.norm(half, axis=-1), jnp.linalg.norm(x, axis=-1),
                               rtol=1e-5)
    np.testing.assert_allclose(half[:, 0], x[:, 0], atol=1e-6)
    assert np.abs(np.asarray(half[:, 1:] - x[:, 1:])).max() > 1e-2


def test_rms_norm_matches_numpy():
    x = _rand(2, 3, 5, 16) * 3
    norm = RMSNorm(epsilon=1e-8)
    params = {"scale": jnp.asarray(_rand(3, 16))}
    got = norm.apply({"params": params}, jnp.asarray(x))
    want = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-8) * params["scale"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_moshi_style_block_matches_numpy():
    """RMSNorm, SiLU-gated MLP, interleaved rope, no biases: one block against numpy."""
    cfg = TransformerConfig(num_layers=1, num_heads=2, width=8, mlp="silu_gated",
                            mlp_ratio=4.125, norm="rms", norm_eps=1e-8, bias=False,
                            rope="interleaved", attention="xla")
    assert cfg.mlp_width == int(2 * 4.125 * 8 / 3)
    x = _rand(4, 1, 5, 8)
    block = Block(cfg)
    params = fast_init(block.init, jnp.asarray(x), jnp.arange(5)[None], seed=1)["params"]
    assert set(params) == {"ln_1", "ln_2", "attn", "mlp"}
    assert params["mlp"]["in_kernel"].shape == (8, 2, cfg.mlp_width)
    got, _ = block.apply({"params": params}, jnp.asarray(x), jnp.arange(5)[None])

    def rms(a, s):
        return a / np.sqrt((a ** 2).mean(-1, keepdims=True) + 1e-8) * s

    p = jax.tree.map(np.asarray, params)
    h = rms(x, p["ln_1"]["scale"])
    qkv = np.einsum("btw,wshd->btshd", h, p["attn"]["qkv_kernel"])
    pos = np.arange(5)
    freqs = 1.0 / 10000.0 ** (np.arange(0, 4, 2) / 4)
    ang = pos[:, None] * freqs  # [T, 2]

    def rope(a):  # interleaved pairs
        a1, a2 = a[..., 0::2], a[..., 1::2]
        c, s = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]
        out = np.empty_like(a)
        out[..., 0::2], out[..., 1::2] = a1 * c - a2 * s, a2 * c + a1 * s
        return out

    att = _numpy_attention(rope(qkv[:, :, 0]), rope(qkv[:, :, 1]), qkv[:, :, 2])
    x1 = x + np.einsum("bthd,hdw->btw", att, p["attn"]["out_kernel"])
    g = np.einsum("btw,wgm->btgm", rms(x1, p["ln_2"]["scale"]), p["mlp"]["in_kernel"])
    silu = g[:, :, 0] / (1 + np.exp(-g[:, :, 0]))
    want = x1 + (silu * g[:, :, 1]) @ p["mlp"]["out_kernel"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_per_step_weights_and_schedule():
    """Position p uses weight set schedule[p]: a schedule sharing sets equals per-position
    sets that hold the shared weights; changing one set changes only its positions."""
    base = dict(num_layers=1, num_heads=2, width=8, rope="none", attention="xla")
    shared = TransformerConfig(**base, weights_per_step=2, weights_per_step_schedule=(0, 1, 1, 1))
    own = TransformerConfig(**base, weights_per_step=4)
    x = jnp.asarray(_rand(6, 2, 4, 8))
    pos = jnp.broadcast_to(jnp.arange(4), (2, 4))
    p_shared = fast_init(Block(shared).init, x, pos)["params"]
    assert p_shared["attn"]["qkv_kernel"].shape == (2, 8, 3, 2, 4)
    take = np.array([0, 1, 1, 1])
    p_own = jax.tree.map(lambda a: a[take] if a.ndim > 1 or a.shape[0] == 2 else a, p_shared)
    p_own = {k: (v if k.startswith("ln") else jax.tree.map(lambda a: a[take], p_shared[k]))
             for k, v in p_shared.items()}
    a, _ = Block(shared).apply({"params": p_shared}, x, pos)
    b, _ = Block(own).apply({"params": p_own}, x, pos)
    np.testing.assert_allclose(a, b, atol=1e-6)
    changed = jax.tree.map(lambda v: v, p_shared)
    changed["mlp"]["out_kernel"] = changed["mlp"]["out_kernel"].at[0].mul(3.0)
    c, _ = Block(shared).apply({"params": changed}, x, pos)
    diff = np.abs(np.asarray(c - a)).max(axis=(0, 2))
    assert diff[0] > 1e-3 and np.all(diff[1:] < 1e-6)
    # decoding one position at a time picks the same weights
    cache = {"k": jnp.zeros((4, 4, 4)), "v": jnp.zeros((4, 4, 4))}
    outs = []
    for i in range(4):
        y, cache = Block(shared).apply({"params": p_shared}, x[:, i:i + 1], pos[:, i:i + 1],
                                       cache, i)
        outs.append(y)
    np.testing.assert_allclose(np.concatenate(outs, 1), a, atol=1e-5)


@pytest.mark.parametrize("kw", [
    dict(), dict(bias=False), dict(norm="rms", mlp="silu_gated", bias=False),
    dict(layer_scale=0.1, bias=False, norm_bias=True, mlp="gelu", mlp_hidden=24),
    dict(weights_per_step=3, mlp="silu_gated")])
def test_block_num_params(kw):
    cfg = TransformerConfig(num_layers=1, num_heads=2, width=8, **kw)
    # the shapes of what init makes (eval_shape: nothing to compile or run)
    params = jax.eval_shape(Block(cfg).init, jax.random.PRNGKey(0), jnp.zeros((1, 3, 8)),
                            jnp.arange(3)[None])["params"]
    count = sum(np.prod(a.shape, dtype=int) for a in jax.tree.leaves(nn.meta.unbox(params)))
    assert block_num_params(cfg) == count


def test_config_errors_name_the_option():
    with pytest.raises(ValueError, match="mlp"):
        TransformerConfig(num_layers=1, num_heads=2, width=8, mlp="relu")
    with pytest.raises(ValueError, match="rope"):
        TransformerConfig(num_layers=1, num_heads=2, width=8, rope="complex")
    with pytest.raises(ValueError, match="divisible"):
        TransformerConfig(num_layers=1, num_heads=3, width=8)
    with pytest.raises(ValueError, match="weights_per_step_schedule"):
        TransformerConfig(num_layers=1, num_heads=2, width=8, weights_per_step=2,
                          weights_per_step_schedule=(0, 2))
    cfg = TransformerConfig(num_layers=1, num_heads=2, width=8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.width = 4


def test_legacy_mimi_layer_names():
    """The old per-layer names map onto the new tree; the fused qkv kernel stacks the old
    q/k/v matrices (heads folded back in by a reshape onto the model's shape)."""
    old = ["params.encoder.transformer.layers_0." + n for n in (
        "attn.q", "attn.k", "attn.v", "attn.o", "fc1", "fc2", "attn_norm.scale",
        "attn_norm.bias", "mlp_norm.scale", "mlp_norm.bias", "attn_scale", "mlp_scale")]
    old.append("params.encoder.seanet.conv_in.kernel")
    renames = legacy_renames(old)
    new = "params.encoder.transformer.blocks_0."
    assert renames[new + "attn.qkv_kernel"] == tuple(
        "params.encoder.transformer.layers_0.attn." + n for n in "qkv")
    assert renames[new + "mlp.in_kernel"] == ("params.encoder.transformer.layers_0.fc1",)
    assert renames[new + "ln_2.bias"] == ("params.encoder.transformer.layers_0.mlp_norm.bias",)
    assert len(renames) == 10 and not any("seanet" in n for n in renames)
    assert legacy_renames(list(renames)) == {}  # nothing left to rename
    # a tree that merely has a 'layers_0' of another kind is left alone
    assert legacy_renames(["model.layers_0.fc1", "model.layers_0.kernel"]) == {}
