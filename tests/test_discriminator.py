"""MS-STFT discriminator, adversarial losses and the gradient balancer."""

import jax
import jax.numpy as jnp
import numpy as np

from audiolm_jax.codec.balancer import balance_gradients, init_balancer_state, per_sample_grad_norm
from audiolm_jax.codec.discriminator import (MultiScaleSTFTDiscriminator, feature_matching_loss,
                                             hinge_discriminator_loss, hinge_generator_loss)
from audiolm_jax.layers import count_params
from helpers import fast_params as _fast_params


def test_discriminator_structure_and_grad():
    disc = MultiScaleSTFTDiscriminator(filters=8)
    t = 4096
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, t)) * 0.1, jnp.float32)
    params = _fast_params(disc, x)
    # Default filters=32 parameter count (shapes only).
    full = jax.eval_shape(MultiScaleSTFTDiscriminator().init, jax.random.PRNGKey(0), x)
    print("MS-STFT discriminator (filters=32) params:", count_params(full))
    assert set(params["params"]) == {"disc_0", "disc_1", "disc_2"}
    assert "v" in params["params"]["disc_0"]["conv_0"]

    def gen_loss(p, audio):
        logits, fmaps = disc.apply(p, audio)
        return hinge_generator_loss(logits), (logits, fmaps)

    (loss, (logits, fmaps)), g = jax.jit(jax.value_and_grad(gen_loss, argnums=1,
                                                            has_aux=True))(params, x)
    assert len(logits) == 3 and len(fmaps) == 3
    for (n_fft, hop), lg, fm in zip([(1024, 256), (2048, 512), (512, 128)], logits, fmaps):
        frames = 1 + (t - n_fft) // hop
        freq = n_fft // 2 + 1
        for _ in range(3):
            freq = (freq - 1) // 2 + 1  # stride 2, kernel 9, padding 4
        assert lg.shape == (2, frames, freq)
        assert len(fm) == 5
        assert fm[0].shape == (2, frames, n_fft // 2 + 1, 8)
        assert fm[-1].shape == (2, frames, freq, 8)
    assert np.isfinite(float(loss))
    assert g.shape == x.shape and np.all(np.isfinite(np.asarray(g)))


def test_hinge_losses_hand_computed():
    real = [jnp.array([[2.0, 0.5, -1.0]]), jnp.array([0.0, 1.5])]
    fake = [jnp.array([[-2.0, 0.0, 0.5]]), jnp.array([1.0, -0.5])]
    # scale 0: relu(1-real) = [0, .5, 2] → 2.5/3; relu(1+fake) = [0, 1, 1.5] → 2.5/3
    # scale 1: relu(1-real) = [1, 0] → .5;       relu(1+fake) = [2, .5] → 1.25
    d0 = 2.5 / 3 + 2.5 / 3
    d1 = 0.5 + 1.25
    np.testing.assert_allclose(float(hinge_discriminator_loss(real, fake)), (d0 + d1) / 2,
                               rtol=1e-6)
    # generator: -mean(fake): scale 0 → -(-1.5/3) = 0.5; scale 1 → -(0.25)
    np.testing.assert_allclose(float(hinge_generator_loss(fake)), (0.5 - 0.25) / 2, rtol=1e-6)


def test_feature_matching_value():
    real = [[jnp.array([1.0, -1.0, 2.0, 0.0]), jnp.array([[3.0, 1.0]])],
            [jnp.array([0.5, -0.5])]]
    fake = [[jnp.array([0.0, -1.0, 1.0, 1.0]), jnp.array([[1.0, 1.0]])],
            [jnp.array([0.5, 0.5])]]
    # layer a: mean|r-f| = 3/4, mean|r| = 1 → 0.75
    # layer b: mean|r-f| = 1, mean|r| = 2 → 0.5
    # layer c: mean|r-f| = 0.5, mean|r| = 0.5 → 1.0
    np.testing.assert_allclose(float(feature_matching_loss(real, fake)), (0.75 + 0.5 + 1.0) / 3,
                               rtol=1e-6)
    assert float(feature_matching_loss(real, real)) == 0.0


def _two_grads(seed=0):
    rng = np.random.default_rng(seed)
    big = jnp.asarray(rng.standard_normal((4, 1000)) * 1e3, jnp.float32)
    small = jnp.asarray(rng.standard_normal((4, 1000)) * 1e-4, jnp.float32)
    return {"big": big, "small": small}


def test_per_sample_grad_norm():
    g = jnp.asarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    ref = np.mean(np.linalg.norm(np.arange(12).reshape(3, 4), axis=1))
    np.testing.assert_allclose(float(per_sample_grad_norm(g)), ref, rtol=1e-6)


def test_balancer_decay_zero_gives_weight_ratio():
    grads = _two_grads()
    weights = {"big": 1.0, "small": 3.0}
    combined, ema, metrics = jax.jit(
        lambda g, e: balance_gradients(g, weights, e, ema_decay=0.0, total_norm=2.0)
    )(grads, init_balancer_state(["big", "small"]))
    part_big = metrics["scale/big"] * grads["big"]
    part_small = metrics["scale/small"] * grads["small"]
    np.testing.assert_allclose(combined, part_big + part_small, rtol=1e-5, atol=1e-7)
    n_big, n_small = per_sample_grad_norm(part_big), per_sample_grad_norm(part_small)
    np.testing.assert_allclose(float(n_small / n_big), 3.0, rtol=1e-4)
    # Parts' norms are the weight shares of total_norm.
    np.testing.assert_allclose(float(n_big), 2.0 * 0.25, rtol=1e-4)
    np.testing.assert_allclose(float(n_small), 2.0 * 0.75, rtol=1e-4)
    np.testing.assert_allclose(float(ema["big"]), float(per_sample_grad_norm(grads["big"])),
                               rtol=1e-6)


def test_balancer_ema_warmup():
    weights = {"big": 2.0, "small": 1.0}
    step = jax.jit(lambda g, e: balance_gradients(g, weights, e, ema_decay=0.9))
    ema = init_balancer_state(["big", "small"])
    for i in range(60):
        # Norms fluctuate ±10% around a fixed scale per loss.
        grads = {k: v * (1.0 + 0.1 * np.sin(i + j))
                 for j, (k, v) in enumerate(_two_grads(seed=i).items())}
        combined, ema, metrics = step(grads, ema)
    grads = _two_grads(seed=100)
    combined, ema, metrics = step(grads, ema)
    n_big = per_sample_grad_norm(metrics["scale/big"] * grads["big"])
    n_small = per_sample_grad_norm(metrics["scale/small"] * grads["small"])
    np.testing.assert_allclose(float(n_big / n_small), 2.0, rtol=0.15)
    assert np.all(np.isfinite(np.asarray(combined)))
    # The raw gradients differ by ~1e7 in scale; after balancing they are comparable.
    assert 0.3 < float(n_big) < 1.0 and 0.15 < float(n_small) < 0.5


def test_balancer_traced_weights():
    """Weights may be traced JAX scalars (e.g. an adversarial weight switched on by step)."""
    grads = _two_grads()

    @jax.jit
    def step(g, e, on):
        return balance_gradients(g, {"big": jnp.float32(1.0), "small": on * 1.0}, e)

    ema = init_balancer_state(["big", "small"])
    c_off, _, m_off = step(grads, ema, jnp.float32(0.0))
    assert float(m_off["scale/small"]) == 0.0
    np.testing.assert_allclose(float(per_sample_grad_norm(c_off)), 1.0, rtol=1e-4)
    c_on, _, m_on = step(grads, ema, jnp.float32(1.0))
    n_small = per_sample_grad_norm(m_on["scale/small"] * grads["small"])
    np.testing.assert_allclose(float(n_small), 0.5, rtol=1e-4)
