"""The shared training loop: mesh, sharded == unsharded, checkpoints and exact resume, NaN guard."""

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from audiolm_jax.codec.config import tiny_cnn_config, tiny_soundstream_config
from audiolm_jax.codec.task import CodecTask
from audiolm_jax.train import mesh as mesh_lib
from audiolm_jax.train.loop import (NonFiniteLossError, compile_init_step, compile_step,
                                    initial_state, train_loop)


def test_resolve_mesh_shape():
    assert mesh_lib.resolve_mesh_shape(-1, 1, 1, 8) == (8, 1, 1)
    assert mesh_lib.resolve_mesh_shape(2, -1, 2, 8) == (2, 2, 2)
    with pytest.raises(ValueError, match="mesh.data"):
        mesh_lib.resolve_mesh_shape(0, 1, 1, 8)
    with pytest.raises(ValueError, match="needs 6 devices"):
        mesh_lib.resolve_mesh_shape(3, 2, 1, 8)
    with pytest.raises(ValueError, match="only one"):
        mesh_lib.resolve_mesh_shape(-1, -1, 1, 8)


def _batches(n, batch, length, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(length) / 16000
    out = []
    for _ in range(n):
        f0 = rng.uniform(100, 300, size=(batch, 1))
        audio = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.02 * rng.standard_normal((batch, length))
        out.append({"audio": audio.astype(np.float32)})
    return out


def _run(config, devices, batches):
    mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(dict(data=len(devices), fsdp=1, tensor=1)),
                              devices)
    task = CodecTask(config)
    losses = []
    rng = jax.random.PRNGKey(0)  # made outside the mesh, as train_loop makes it: the same
    # compiled init as the loop's (test_nan_loss_stops_and_keeps_last_checkpoint's)
    with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.LOGICAL_AXIS_RULES):
        state, shardings, _ = initial_state(task, mesh, rng)
        step = compile_step(task, shardings, mesh)
        first = compile_init_step(task, shardings, mesh)
        for i, b in enumerate(batches):
            b = mesh_lib.global_batch(b, mesh_lib.batch_sharding(mesh, 1))
            if i == 0:
                state = first(state, b)
            state, metrics = step(state, b)
            losses.append(float(metrics["loss"]))
    return jax.device_get(state), losses


def test_sharded_step_equals_unsharded():
    """The adversarial codec step (SEANet generator, discriminators, EMA RVQ) on 8 devices
    equals 1. (The article's CNN codec runs the same loop and layers; its own sharded run
    was dropped for CI time, 37 s.)"""
    assert jax.device_count() == 8
    config = tiny_soundstream_config()
    batches = _batches(3, 8, config.data.crop_length)
    one, losses1 = _run(config, jax.devices()[:1], batches)
    eight, losses8 = _run(config, jax.devices(), batches)
    np.testing.assert_allclose(losses1, losses8, rtol=2e-4, atol=1e-6)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(eight.params)):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5)
    # EMA codebook statistics, including the k-means init and dead-code resets.
    for a, b in zip(jax.tree.leaves(one.vq_stats), jax.tree.leaves(eight.vq_stats)):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                   rtol=2e-3, atol=2e-4)


class Preempted(Exception):
    pass


class ListIterator:
    """A minimal resumable iterator standing in for the grain pipeline; ``kill_at`` simulates
    the job being killed when that batch is requested."""

    def __init__(self, batches, kill_at=None):
        self.batches, self.pos, self.kill_at = batches, 0, kill_at

    def __next__(self):
        if self.pos == self.kill_at:
            raise Preempted(f"killed before batch {self.pos}")
        b = self.batches[self.pos]
        self.pos += 1
        return b

    def get_state(self):
        return {"pos": self.pos}

    def set_state(self, state):
        self.pos = state["pos"]


def _loop_config():
    """tiny_cnn_config on all 8 devices, as the loop runs it. Its train.num_steps (20, which
    the learning-rate schedule is compiled with) is kept: the loop's programs (init, first
    step, step) are then those of test_sharded_step_equals_unsharded's 8-device run, which
    the persistent compilation cache (conftest.py) holds."""
    c = tiny_cnn_config()
    c.train.update(checkpoint_every=3, log_every=1, async_checkpoints=False, progress=False)
    c.mesh.update(data=-1, fsdp=1, tensor=1)
    return c


# Resume after an interruption (in-process preemption, SIGKILL, SIGKILL inside a save) is
# tested in tests/test_resume.py.


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
    batches = _batches(6, 8, 4096, seed=2)
    batches[4] = {"audio": np.full_like(batches[4]["audio"], np.nan)}
    c = _loop_config()  # 20 steps: the NaN at step 5 stops it (batch 7 would not exist)
    with pytest.raises(NonFiniteLossError, match="step 5.*step 3"):
        train_loop(CodecTask(c), c, str(tmp_path), ListIterator(batches))
    from audiolm_jax.train.checkpoint import Checkpointer

    assert Checkpointer(str(tmp_path / "checkpoints")).all_steps() == [3]
