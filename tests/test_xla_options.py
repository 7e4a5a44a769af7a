"""The per-program CPU kernel options (audiolm_jax/runtime/xla_options.py) change speed, not
results: the tuned sampler gives the tokens of an untuned compile, the tuned train step its loss.
The programs that get them are chosen by name, in the runtime's table, not by the tasks."""
import platform

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from audiolm_jax.lm import sampling
from audiolm_jax.lm.transformer import Transformer, LMConfig, init_params
from audiolm_jax.runtime import xla_options
from audiolm_jax.runtime.xla_options import compiler_options

TUNED = platform.machine().lower() in ("x86_64", "amd64")


def test_programs_and_opt_out(monkeypatch):
    with pytest.raises(ValueError, match="program"):
        compiler_options("encode")
    assert compiler_options(None) is None
    assert compiler_options("codec_train") is None and compiler_options("vqvae_train") is None
    if TUNED:
        assert compiler_options("lm_train") == xla_options.OPTION_SETS["xnnpack"]
        # the sampler keeps XLA's default on AVX-512 CPUs (faster there), else uses oneDNN
        assert (compiler_options("lm_sample") is None) == xla_options._has_avx512()
    monkeypatch.setenv("AUDIOLM_JAX_CPU_KERNELS", "default")
    assert compiler_options("lm_train") is None and compiler_options("lm_sample") is None


def test_tasks_name_their_programs_and_the_loop_asks_the_runtime(monkeypatch):
    """The train loop compiles a task's step with the options the runtime gives for the
    program the task names (a plain attribute), so the choice is made in one table."""
    from audiolm_jax.codec.task import CodecTask
    from audiolm_jax.lm.task import LMTask
    from audiolm_jax.train import loop
    from audiolm_jax.vqvae.task import VQVAETask

    assert (LMTask.program, CodecTask.program, VQVAETask.program) == (
        "lm_train", "codec_train", "vqvae_train")
    assert not hasattr(LMTask, "compiler_options")
    asked, jitted = [], []
    monkeypatch.setattr(xla_options, "compiler_options",
                        lambda program, target=None: asked.append((program, target))
                        or {"marker": program})
    monkeypatch.setattr(loop.jax, "jit", lambda f, **kw: jitted.append(kw) or f)
    task = type("T", (), {"program": "lm_train", "train_step": None})()
    monkeypatch.setattr(loop.mesh_lib, "batch_sharding", lambda mesh, n: None)
    monkeypatch.setattr(loop.mesh_lib, "replicated", lambda mesh: None)
    # The platform the step is compiled for is the mesh's (a TPU slice compiled for ahead of
    # time gets no CPU options).
    mesh = type("M", (), {"devices": np.array([jax.devices()[0]])})()
    loop.compile_step(task, None, mesh)
    assert asked == [("lm_train", "cpu")]
    assert jitted[0]["compiler_options"] == {"marker": "lm_train"}


def _tiny():
    cfg = LMConfig(vocab_size=64, num_layers=2, num_heads=2, width=32, context=48)
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
                    compiler_options=xla_options.OPTION_SETS["onednn_dot"])
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
    for options in (None, compiler_options("lm_train")):
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
    monkeypatch.setitem(xla_options.OPTION_SETS, "xnnpack",
                        {"xla_cpu_experimental_ynn_fusion_type": "NO_SUCH_FUSION_TYPE"})
    xla_options._accepted.cache_clear()
    try:
        assert xla_options.compiler_options("lm_train") is None
    finally:
        xla_options._accepted.cache_clear()
