"""Scanned layers and rematerialisation change how the LM runs, never what it computes."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from audiolm_jax.layers.transformer import REMAT_POLICIES, stack_layers, unstack_layers
from audiolm_jax.lm.transformer import LMConfig, Transformer, init_params

CFG = LMConfig(vocab_size=64, num_layers=3, num_heads=2, width=16, context=32, bias=True)


def _params(cfg):
    return nn.meta.unbox(init_params(Transformer(cfg), jax.random.PRNGKey(0)))


def test_scanned_tree_has_a_layer_axis_named_layers():
    boxed = init_params(Transformer(dataclasses.replace(CFG, scan_layers=True)),
                        jax.random.PRNGKey(0))
    kernel = boxed["blocks"]["attn"]["qkv_kernel"]
    assert isinstance(kernel, nn.LogicallyPartitioned)
    assert kernel.names[0] == "layers" and kernel.value.shape[0] == CFG.num_layers
    assert not any(k.startswith("blocks_") for k in boxed)


def test_scanned_equals_unrolled_forward_grad_and_decode():
    plain = (_params(CFG))
    scan_cfg = dataclasses.replace(CFG, scan_layers=True)
    scanned = stack_layers(plain, CFG.num_layers)
    assert jax.tree.structure(unstack_layers(scanned)) == jax.tree.structure(plain)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 12), 0, CFG.vocab_size)

    def loss(cfg, p):
        logits = Transformer(cfg).apply({"params": p}, tokens)
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1],
                                                               tokens[:, 1:]).mean()

    # Jitted: one compiled program each (op-by-op dispatch compiled every op: 3x slower).
    l0, g0 = jax.jit(jax.value_and_grad(lambda p: loss(CFG, p)))(plain)
    l1, g1 = jax.jit(jax.value_and_grad(lambda p: loss(scan_cfg, p)))(scanned)
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(stack_layers(g0, CFG.num_layers)), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

    outs = []
    for cfg, p in ((CFG, plain), (scan_cfg, scanned)):
        model = Transformer(cfg)
        cache = model.init_cache(2, 16)
        decode = jax.jit(lambda p, t, c, i, m=model: m.apply({"params": p}, t, c, i,
                                                              method=Transformer.decode),
                         static_argnums=3)
        logits, cache = decode(p, tokens[:, :8], cache, 0)
        step, cache = decode(p, tokens[:, 8:9], cache, 8)
        outs.append((logits, step))
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("policy,scan", [("full", False), ("dots_saveable", True),
                                         ("minimal", True), ("attention_mlp", False)])
def test_remat_policies_keep_loss_and_grads(policy, scan):
    base = dataclasses.replace(CFG, scan_layers=scan, dropout=0.1)
    params = (_params(base))
    tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 12), 0, CFG.vocab_size)

    def loss(cfg, p):
        logits = Transformer(cfg).apply({"params": p}, tokens, train=True,
                                        rngs={"dropout": jax.random.PRNGKey(3)})
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens).mean()

    l0, g0 = jax.jit(jax.value_and_grad(lambda p: loss(base, p)))(params)
    cfg = dataclasses.replace(base, remat=policy)
    l1, g1 = jax.jit(jax.value_and_grad(lambda p: loss(cfg, p)))(params)
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_remat_accepts_the_old_booleans_and_rejects_unknown_policies():
    assert set(REMAT_POLICIES) == {"none", "full", "dots_saveable", "minimal",
                                   "attention_mlp"}
    assert dataclasses.replace(CFG, remat=True).remat == "full"
    assert dataclasses.replace(CFG, remat=False).remat == "none"
    with pytest.raises(ValueError, match="remat"):
        dataclasses.replace(CFG, remat="everything")
