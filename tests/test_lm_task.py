"""LM training task: per-level loss weights, layouts, the shared loop, sharded == unsharded."""

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from audiolm_jax.lm.config import base_lm_config
from audiolm_jax.lm.task import LMTask
from audiolm_jax.train import mesh as mesh_lib
from audiolm_jax.train.loop import compile_step, initial_state, train_loop


def tiny_config(layout="flat", weights=()):
    c = base_lm_config()
    c.model.update(num_layers=2, num_heads=4, width=32, context=24, dropout=0.0, layout=layout)
    c.tokens.update(codebook_size=16, num_levels=3)
    c.loss.level_weights = weights
    c.optim.update(learning_rate=3e-3, warmup_steps=5, weight_decay=0.0)
    c.train.update(num_steps=40, batch_size=8, checkpoint_every=40, log_every=1, progress=False,
                   async_checkpoints=False)
    return c


def random_codes(task, batch=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 16, (batch, 1, task.num_levels, task.frames_per_example))


def numpy_cross_entropy(logits, targets):
    logits = np.asarray(logits, np.float64)
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    picked = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    return logz - picked


@pytest.mark.parametrize("layout", ["flat", "delay"])
def test_level_weights_change_the_loss_as_specified(layout):
    weights = (100.0, 1.0, 1.0)  # Moshi-style semantic x100
    task = LMTask(tiny_config(layout, weights))
    params = nn.meta.unbox(task.init_state(jax.random.PRNGKey(0))).params
    batch = task.prepare_batch({"codes": random_codes(task)})
    loss, aux = task.losses(params, batch, train=False)
    logits = task.model.apply({"params": params}, batch["inputs"])
    assert logits.shape[-1] == 128  # padded vocabulary; only the real ids take part
    ce = numpy_cross_entropy(logits[..., : task.vocab_size], batch["targets"])
    if layout == "flat":  # target position i holds level (i + 1) % K
        level = (np.arange(1, task.context + 1) % 3)
        w = np.asarray(weights)[level][None, :] * np.ones_like(ce)
    else:  # per-row weights, zero on the delay pattern's empty slots
        # Row q holds frame s - q at slot s; target j is slot j + 1.
        slot = np.arange(1, task.context + 1)[None, :]
        valid = (slot - np.arange(3)[:, None] >= 0) & (slot - np.arange(3)[:, None] < task.frames_per_example)
        w = np.asarray(weights)[None, :, None] * valid[None] * np.ones_like(ce)
    np.testing.assert_allclose(float(loss), (ce * w).sum() / w.sum(), rtol=1e-5)
    equal = LMTask(tiny_config(layout)).losses(params, {**batch, "weights": (w > 0) * 1.0}, False)[0]
    np.testing.assert_allclose(float(equal), (ce * (w > 0)).sum() / (w > 0).sum(), rtol=1e-5)
    assert aux["level_losses"].shape == (3,)


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 2, 4)])
def test_sharded_lm_step_equals_unsharded(shape):
    task = LMTask(tiny_config("delay"))
    batches = [task.prepare_batch({"codes": random_codes(task, seed=s)}) for s in range(2)]

    def run(devices, mesh_shape):
        mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(
            dict(data=mesh_shape[0], fsdp=mesh_shape[1], tensor=mesh_shape[2])), devices)
        with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.LOGICAL_AXIS_RULES):
            state, shardings, _ = initial_state(task, mesh, jax.random.PRNGKey(0))
            step = compile_step(task, shardings, mesh)
            losses = []
            for b in batches:
                state, m = step(state, mesh_lib.global_batch(b, mesh_lib.batch_sharding(mesh)))
                losses.append(float(m["loss"]))  # block each step (CPU collectives)
        return jax.device_get(state.params), losses

    p1, l1 = run(jax.devices()[:1], (1, 1, 1))
    p8, l8 = run(jax.devices(), shape)
    np.testing.assert_allclose(l1, l8, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


class Repeating:
    """A learnable token stream (each level counts up mod 16 from a per-example start drawn
    from 2 values) with get/set_state."""

    def __init__(self, task):
        self.task, self.n = task, 0

    def __next__(self):
        rng = np.random.default_rng(self.n)
        self.n += 1
        start = rng.integers(0, 2, (8, 1, 1, 1)) * 5 + np.arange(3)[:, None]
        return {"codes": (start + np.arange(self.task.frames_per_example)) % 16}

    def get_state(self):
        return {"n": self.n}

    def set_state(self, s):
        self.n = s["n"]


def test_lm_trains_on_the_shared_loop(tmp_path):
    config = tiny_config("flat")
    config.optim.update(learning_rate=1e-2)
    task = LMTask(config)
    _, history = train_loop(task, config, str(tmp_path), Repeating(task))
    first = np.mean([h["loss"] for h in history[:5]])
    last = np.mean([h["loss"] for h in history[-5:]])
    assert last < 0.75 * first, (first, last)
    assert "loss/level/2" in history[-1]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["40"]



@pytest.mark.parametrize("layout,chunk", [("flat", 7), ("parallel", 10), ("flat", 24)])
def test_chunked_cross_entropy_equals_the_whole(layout, chunk):
    """loss.logits_chunk: the head and loss in chunks (ragged last one) give the same loss,
    per-level losses and gradients as the whole [B, T, V] logits."""
    whole = LMTask(tiny_config(layout))
    config = tiny_config(layout)
    config.loss.logits_chunk = chunk
    chunked = LMTask(config)
    params = nn.meta.unbox(whole.init_state(jax.random.PRNGKey(0))).params
    batch = whole.prepare_batch({"codes": random_codes(whole)})

    def run(task):
        (loss, aux), grads = jax.jit(jax.value_and_grad(
            lambda p: task.losses(p, batch, False), has_aux=True))(params)
        return loss, aux["level_losses"], grads

    (l1, lv1, g1), (l2, lv2, g2) = run(whole), run(chunked)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    np.testing.assert_allclose(lv1, lv2, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def test_gradient_accumulation_equals_one_batch():
    """train.gradient_accumulation_steps: microbatches over a (2, 2, 2) mesh give the step of
    the whole batch on one device (loss, metrics and updated parameters)."""
    def run(devices, mesh_shape, steps):
        config = tiny_config("delay")
        config.train.gradient_accumulation_steps = steps
        task = LMTask(config)
        batch = task.prepare_batch({"codes": random_codes(task)})
        mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(
            dict(data=mesh_shape[0], fsdp=mesh_shape[1], tensor=mesh_shape[2])), devices)
        with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.LOGICAL_AXIS_RULES):
            state, shardings, _ = initial_state(task, mesh, jax.random.PRNGKey(0))
            state, m = compile_step(task, shardings, mesh)(
                state, mesh_lib.global_batch(batch, mesh_lib.batch_sharding(mesh)))
            return jax.device_get((state.params, m))

    (p1, m1), (p2, m2) = run(jax.devices()[:1], (1, 1, 1), 1), run(jax.devices(), (2, 2, 2), 2)
    for key in ("loss", "grad_norm", "loss/level"):
        np.testing.assert_allclose(m1[key], m2[key], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_loss_and_accumulation_settings_are_checked():
    from audiolm_jax.config_check import check_lm_config, check_lm_model
    from audiolm_jax.errors import ConfigError

    config = tiny_config("depth")
    config.loss.logits_chunk = 8
    with pytest.raises(ConfigError, match="loss.logits_chunk"):
        check_lm_model(config)
    config = tiny_config("flat")
    config.train.gradient_accumulation_steps = 3
    with pytest.raises(ConfigError, match="gradient_accumulation_steps.*divide"):
        check_lm_model(config)
    config.train.gradient_accumulation_steps = 2
    config.data.tokens = "."
    with pytest.raises(ConfigError, match="shards of train.batch_size"):
        check_lm_config(config, num_devices=8)  # 8 rows over 8 shards: 1 row each


import os  # noqa: E402
