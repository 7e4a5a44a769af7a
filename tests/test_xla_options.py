"""The LM's per-program CPU kernel options (audiolm_jax/xla_options.py) change speed, not
results: the tuned sampler gives the tokens of an untuned compile, the tuned train step its loss."""
import platform

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from audiolm_jax.lm import sampling
from audiolm_jax.lm.transformer import Transformer, TransformerConfig, init_params
from audiolm_jax import xla_options
from audiolm_jax.xla_options import lm_cpu_options

TUNED = platform.machine().lower() in ("x86_64", "amd64")


def test_kinds_and_opt_out(monkeypatch):
    with pytest.raises(ValueError, match="kind"):
        lm_cpu_options("encode")
    if TUNED:
        assert lm_cpu_options("train")
        # the sampler keeps XLA's default on AVX-512 CPUs (faster there), else uses oneDNN
        assert (lm_cpu_options("sample") is None) == xla_options._has_avx512()
    monkeypatch.setenv("AUDIOLM_JAX_CPU_KERNELS", "default")
    assert lm_cpu_options("train") is None and lm_cpu_options("sample") is None


def _tiny():
    cfg = TransformerConfig(vocab_size=64, num_layers=2, num_heads=2, width=32, context=48)
    model = Transformer(cfg)
    return model, nn.meta.unbox(init_params(model, jax.random.PRNGKey(0)))


@pytest.mark.skipif(not TUNED, reason="options only apply on x86-64")
def test_tuned_sampler_matches_default_compile():
    model, params = _tiny()
    prompt = jnp.asarray(np.random.default_rng(0).integers(0, 64, (3, 8)), jnp.int32)
    kw = dict(num_new=24, top_k=0, max_length=32, allowed_vocab=None, use_top_p=False)
    args = (model, params, prompt, jax.random.PRNGKey(3), jnp.float32(1.0), jnp.float32(1.0),
            None, None)
    plain = jax.jit(sampling._generate_impl, static_argnames=tuple(kw) + ("model",))
    want = plain(*args, **kw)
    # the oneDNN options themselves (generate() may not use them on this CPU)
    tuned = jax.jit(sampling._generate_impl, static_argnames=tuple(kw) + ("model",),
                    compiler_options=xla_options._OPTIONS["sample"])
    np.testing.assert_array_equal(np.asarray(tuned(*args, **kw)), np.asarray(want))
    got = sampling.generate(model, params, prompt, 24, jax.random.PRNGKey(3), temperature=1.0)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.skipif(not TUNED, reason="options only apply on x86-64")
def test_tuned_train_step_matches_default_compile():
    model, params = _tiny()
    tx = optax.adamw(1e-3)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 64, (4, 33)), jnp.int32)

    def step(p, o):
        def loss_fn(p):
            logits = model.apply({"params": p}, tokens[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o, loss

    results = []
    for options in (None, lm_cpu_options("train")):
        p, o = params, tx.init(params)
        f = jax.jit(step, compiler_options=options)
        losses = []
        for _ in range(3):
            p, o, loss = f(p, o)
            losses.append(float(loss))
        results.append(losses)
    np.testing.assert_allclose(results[1], results[0], rtol=1e-5)


def test_unknown_options_fall_back_to_defaults(monkeypatch):
    """A jaxlib that does not know an option must get XLA's defaults, not a failing compile."""
    from audiolm_jax import xla_options

    monkeypatch.setitem(xla_options._OPTIONS, "train",
                        {"xla_cpu_experimental_ynn_fusion_type": "NO_SUCH_FUSION_TYPE"})
    xla_options._accepted.cache_clear()
    try:
        assert xla_options.lm_cpu_options("train") is None
    finally:
        xla_options._accepted.cache_clear()
