"""GPT-2-style transformer: causality, KV-cache decoding, parameter count, sharding, bf16."""

import functools
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from audiolm_jax.lm.transformer import (
    Transformer, LMConfig, count_params, dummy_tokens, flops_per_token, init_cache,
    init_params, num_params)
from audiolm_jax.train import mesh as mesh_lib

TINY = dict(vocab_size=64, num_layers=2, num_heads=4, width=32, context=16)


def _setup(seed=0, **kw):
    cfg = LMConfig(**{**TINY, **kw})
    model = Transformer(cfg)
    params = nn.meta.unbox(init_params(model, jax.random.PRNGKey(seed)))
    return cfg, model, params


def _tokens(cfg, batch, length, seed=1):
    shape = dummy_tokens(cfg, batch, length).shape
    return jax.random.randint(jax.random.PRNGKey(seed), shape, 0, cfg.vocab_size)


def _perturb(tokens, t, vocab):
    """tokens with the token(s) at time t changed (every level)."""
    return tokens.at[..., t].set((tokens[..., t] + 1) % vocab)


def test_causal():
    # (the KV-cache tests below also cover rope and several levels: the cached path only
    # ever sees the past, and it matches the full forward pass)
    cfg, model, params = _setup()
    T = 12
    base = _tokens(cfg, 1, T)
    times = [0, 3, 7, T - 1]
    batch = jnp.concatenate([base] + [_perturb(base, t, cfg.vocab_size) for t in times])
    logits = np.asarray(jax.jit(model.apply)({"params": params}, batch))
    ref = logits[0]
    for row, t in enumerate(times, start=1):
        got = logits[row]
        # the time axis of the logits is the second to last
        np.testing.assert_array_equal(got[..., :t, :], ref[..., :t, :])
        assert np.abs(got[..., t:, :] - ref[..., t:, :]).max() > 1e-6


@functools.partial(jax.jit, static_argnums=(0, 3))
def _full_and_cached(model, params, tokens, prompt_len):
    """Full-forward logits and cached logits (prefill, then a scan of one-token steps)."""
    full = model.apply({"params": params}, tokens)
    T = tokens.shape[-1]
    cache = init_cache(model.config, tokens.shape[0], model.config.context)
    decode = functools.partial(model.apply, {"params": params}, method=Transformer.decode)
    prefill_logits, cache = decode(tokens[..., :prompt_len], cache, 0)

    def step(cache, index):
        tok = jax.lax.dynamic_slice_in_dim(tokens, index, 1, axis=tokens.ndim - 1)
        logits, cache = decode(tok, cache, index)
        return cache, logits[..., 0, :]

    _, step_logits = jax.lax.scan(step, cache, jnp.arange(prompt_len, T))
    step_logits = jnp.moveaxis(step_logits, 0, -2)  # [S, B, (K,) V] -> [B, (K,) S, V]
    return full, jnp.concatenate([prefill_logits, step_logits], axis=-2)


@pytest.mark.parametrize("kw", [dict(), dict(positions="rope"), dict(num_levels=3)],
                         ids=["learned", "rope", "3levels"])
def test_kv_cache_matches_full_forward(kw):
    cfg, model, params = _setup(**kw)
    tokens = _tokens(cfg, 2, 13)
    full, cached = _full_and_cached(model, params, tokens, 5)
    assert full.shape == cached.shape == tokens.shape + (cfg.vocab_size,)
    assert full.dtype == jnp.float32
    np.testing.assert_allclose(cached, full, atol=1e-5, rtol=1e-5)


def test_param_count_of_article_config():
    counts = {}
    for bias in (True, False):
        cfg = LMConfig(vocab_size=256, num_layers=12, num_heads=16, width=1024,
                                context=2048, positions="learned", tie_embeddings=True, bias=bias)
        abstract = jax.eval_shape(functools.partial(init_params, Transformer(cfg)),
                                  jax.random.PRNGKey(0))
        total = count_params(abstract)
        without_wpe = total - count_params(abstract["wpe"])
        assert total == num_params(cfg)
        assert without_wpe == num_params(cfg, include_position_embedding=False)
        counts[bias] = (total, without_wpe)
        print(f"bias={bias}: {total / 1e6:.2f}M with position embeddings, "
              f"{without_wpe / 1e6:.2f}M without (nanoGPT's get_num_params)")
    # 151.28M is nanoGPT's printout with bias=False (its default excludes wpe).
    assert abs(counts[False][1] / 1e6 - 151.28) < 0.01
    assert counts[False][0] == 153_379_840 and counts[True] == (153_516_032, 151_418_880)
    cfg = LMConfig(vocab_size=256, num_layers=12, num_heads=16, width=1024,
                            context=2048, bias=False)
    assert flops_per_token(cfg, 2048) == 6 * counts[False][1] + 12 * 12 * 2048 * 1024


# ----------------------------------------------------------------------------- sharding

_SHARD_CFG = dict(num_levels=1, tie_embeddings=True)
_LR = 1e-3


def _loss_fn(model, params, tokens):
    logits = model.apply({"params": params}, tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


def _make_step(model, opt):
    def step(params, tokens):  # the first step of a run: fresh optimizer state
        opt_state = opt.init(params)
        loss, grads = jax.value_and_grad(functools.partial(_loss_fn, model))(params, tokens)
        updates, _ = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), loss
    return step


@functools.lru_cache(maxsize=1)
def _single_device_reference():
    cfg, model, params = _setup(**_SHARD_CFG)
    opt = optax.adamw(_LR, weight_decay=0.1)
    tokens = _tokens(cfg, 8, cfg.context + 1)
    new_params, loss = jax.jit(_make_step(model, opt))(params, tokens)
    return cfg, params, tokens, jax.device_get(new_params), float(loss)


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 2, 4)], ids=str)
def test_sharded_train_step_matches_single_device(shape):
    cfg, params, tokens, ref_params, ref_loss = _single_device_reference()
    model = Transformer(cfg)
    opt = optax.adamw(_LR, weight_decay=0.1)
    mesh = mesh_lib.make_mesh(types.SimpleNamespace(data=shape[0], fsdp=shape[1],
                                                    tensor=shape[2]))
    with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.LOGICAL_AXIS_RULES):
        boxed = jax.eval_shape(functools.partial(init_params, model), jax.random.PRNGKey(0))
        shardings = mesh_lib.tree_shardings(mesh, boxed)
        if shape == (1, 2, 4):  # the loop's jitted, sharded init gives the same weights
            init = jax.jit(lambda r: nn.meta.unbox(init_params(model, r)),
                           out_shardings=shardings)
            inited = jax.block_until_ready(init(jax.random.PRNGKey(0)))
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9),
                         jax.device_get(inited), jax.device_get(params))  # fused vs eager: 1 ulp
        # the step itself starts from exactly the reference params
        sharded = jax.block_until_ready(jax.device_put(params, shardings))

        batch = mesh_lib.global_batch(np.asarray(tokens), mesh_lib.batch_sharding(mesh, 2))
        step = jax.jit(_make_step(model, opt),
                       out_shardings=(shardings, mesh_lib.replicated(mesh)))
        new_params, loss = jax.block_until_ready(step(sharded, batch))

    specs = {jax.tree_util.keystr(path): leaf.sharding.spec
             for path, leaf in jax.tree_util.tree_leaves_with_path(new_params)}
    tensor_sharded = [k for k, s in specs.items() if any(
        a == "tensor" or (isinstance(a, tuple) and "tensor" in a) for a in s)]
    if shape[2] > 1:
        assert tensor_sharded, specs
        assert "tensor" in specs["['blocks_0']['mlp']['in_kernel']"]
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 jax.device_get(new_params), ref_params)


# ----------------------------------------------------------------------------- misc


def test_bf16_compute_close_to_float32():
    cfg, model, params = _setup()
    model16 = Transformer(LMConfig(**{**TINY, "dtype": jnp.bfloat16}))
    tokens = _tokens(cfg, 2, 16)
    ref = jax.jit(model.apply)({"params": params}, tokens)
    got = jax.jit(model16.apply)({"params": params}, tokens)
    assert got.dtype == jnp.float32 and np.all(np.isfinite(got))
    rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert rel < 3e-2, rel


def test_remat_matches_and_dropout_runs():
    cfg, model, params = _setup(dropout=0.1)
    remat = Transformer(LMConfig(**{**TINY, "dropout": 0.1, "remat": True}))
    tokens = _tokens(cfg, 2, 9)
    rngs = {"dropout": jax.random.PRNGKey(3)}

    def loss(m, p, train):
        logits = m.apply({"params": p}, tokens[:, :-1], train=train, rngs=rngs)
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    @jax.jit
    def both(p):
        return (jax.value_and_grad(functools.partial(loss, model))(p, True),
                jax.value_and_grad(functools.partial(loss, remat))(p, True),
                loss(model, p, False))

    (l1, g1), (l2, g2), l_eval = both(params)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g1, g2)
    assert abs(float(l1) - float(l_eval)) > 1e-6  # dropout was active in training
    assert count_params(params) == num_params(cfg)


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_blocked_causal_attention_equals_one_block(positions):
    """Query-blocked attention (training path) gives the full T x T result and gradients.

    T = 16 in blocks of 6: two whole blocks and a padded partial one. The tiny model's
    shapes (TINY) share their initialisation with the tests above; one jitted program
    replaces the op-by-op dispatch (and compilation) of the unrolled blocks and their grads."""
    import dataclasses

    cfg, blocked, params = _setup(attention_block=6, positions=positions)
    full = Transformer(dataclasses.replace(cfg, attention_block=0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (3, cfg.context), 0, cfg.vocab_size)

    def output_and_grad(model, params):
        """The logits and the gradient of sum(tanh(logits)) (its cotangent 1 - tanh^2),
        from one forward pass."""
        out, back = jax.vjp(lambda p: model.apply({"params": p}, tokens), params)
        return out, back(1 - jnp.tanh(out) ** 2)[0]

    both = jax.jit(lambda p: (output_and_grad(blocked, p), output_and_grad(full, p)))
    (out_blocked, grad_blocked), (out_full, grad_full) = both(params)
    np.testing.assert_allclose(out_blocked, out_full, atol=1e-5, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grad_blocked), jax.tree.leaves(grad_full)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
