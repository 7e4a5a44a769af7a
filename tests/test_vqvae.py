"""The Fashion-MNIST VQ-VAE experiment: data, model, task, plots and the train_vqvae entry."""

import importlib.util
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiolm_jax.vqvae.data import (ImageBatchIterator, filter_classes, load_fashion_mnist,
                                    synthetic_images)
from audiolm_jax.vqvae.run import check_vqvae_config, train_vqvae
from audiolm_jax.vqvae.task import VQVAETask

CONFIG_PATH = os.path.join(os.path.dirname(__file__), "..", "configs", "vqvae_fashion_mnist.py")


def _base_config():
    spec = importlib.util.spec_from_file_location("vqvae_fashion_mnist_cfg", CONFIG_PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def _tiny_config(num_steps=4, num_levels=2, quantize=True):
    c = _base_config()
    c.model.update(hidden=(64, 32, 16), quantize=quantize)
    c.quantizer.update(num_levels=num_levels, codebook_size=8, kmeans_iters=5,
                       dead_code_threshold=0.5)
    c.optim.update(learning_rate=3e-3, end_learning_rate=3e-4, warmup_steps=2)
    c.data.update(num_eval=48, num_show=4, synthetic_examples=96)
    # log_every=1 keeps at most one step in flight: 8 fake CPU devices on a small host can
    # otherwise starve XLA's in-process all-reduce rendezvous.
    c.train.update(num_steps=num_steps, batch_size=16, checkpoint_every=2, sample_every=2,
                   log_every=1, async_checkpoints=False, progress=False)
    c.mesh.update(data=-1, fsdp=1, tensor=1)
    return c


def test_config_keys():
    c = _base_config()
    assert c.task == "vqvae"
    assert c.model.latent_dim == 2 and c.model.quantize is True and len(c.model.hidden) == 3
    for key in ("kind", "num_levels", "codebook_size", "decay", "epsilon", "kmeans_iters",
                "dead_code_threshold", "dead_code_mode", "dead_code_interval", "dropout"):
        assert key in c.quantizer, key
    assert c.quantizer.kind == "rvq" and c.quantizer.num_levels == 2 and not c.quantizer.dropout
    assert tuple(c.data.classes) == (0, 1, 2) and c.data.dataset == "fashion_mnist"
    for key in ("learning_rate", "warmup_steps", "end_learning_rate", "weight_decay", "clip_norm"):
        assert key in c.optim, key
    for key in ("num_steps", "batch_size", "seed", "checkpoint_every", "log_every",
                "sample_every", "keep_checkpoints", "async_checkpoints", "progress", "name"):
        assert key in c.train, key
    assert (c.mesh.data, c.mesh.fsdp, c.mesh.tensor) == (-1, 1, 1)
    check_vqvae_config(c, 8)
    c.train.batch_size = 12
    with pytest.raises(ValueError, match="train.batch_size"):
        check_vqvae_config(c, 8)


def test_iterator_deterministic_and_resumable():
    images, labels = synthetic_images(50, seed=3)
    a = ImageBatchIterator(images, labels, 16, seed=7)
    b = ImageBatchIterator(images, labels, 16, seed=7)
    first = [next(a) for _ in range(5)]  # crosses epoch boundaries (50 rows, 80 drawn)
    for x, y in zip(first, [next(b) for _ in range(5)]):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    assert first[0]["image"].shape == (16, 28, 28) and first[0]["image"].dtype == np.float32
    # Every row appears once per epoch.
    epoch0 = np.concatenate([a.indices(i) for i in range(4)])[:50]
    assert sorted(epoch0.tolist()) == list(range(50))
    c = ImageBatchIterator(images, labels, 16, seed=7)
    c.set_state(json.loads(json.dumps(a.get_state())))
    np.testing.assert_array_equal(next(c)["image"], next(a)["image"])
    other = ImageBatchIterator(images, labels, 16, seed=8)
    assert not np.array_equal(other.indices(0), a.indices(0))
    # Two processes split each global batch into contiguous halves.
    p0 = ImageBatchIterator(images, labels, 16, seed=7, shard_index=0, shard_count=2)
    p1 = ImageBatchIterator(images, labels, 16, seed=7, shard_index=1, shard_count=2)
    np.testing.assert_array_equal(np.concatenate([p0.indices(3), p1.indices(3)]), a.indices(3))


def test_filter_classes_and_missing_tfds_hint(monkeypatch):
    images = np.zeros((6, 28, 28), np.float32)
    labels = np.array([0, 5, 2, 9, 1, 2])
    _, kept = filter_classes(images, labels, (0, 1, 2))
    assert kept.tolist() == [0, 2, 1, 2]
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match=r"audiolm_jax\[tfds\]"):
        load_fashion_mnist("train")


def _trained_task(config, steps, data):
    task = VQVAETask(config)
    state = jax.jit(task.init_state)(jax.random.PRNGKey(0))
    step = jax.jit(task.train_step)
    it = ImageBatchIterator(*data, int(config.train.batch_size), seed=0)
    losses = []
    for _ in range(steps):
        state, metrics = step(state, task.prepare_batch(next(it)))
        losses.append(float(metrics["loss"]))
    return task, state, losses


def _check_quantized_latents(config, task, state, data, num_levels):
    out = task.forward(state, data[0][:32])
    cbs = task.codebooks(state)
    assert cbs.shape == (num_levels, 8, 2)
    assert out["latents"].shape == (32, 2) and out["codes"].shape == (32, num_levels)
    codes = out["codes"]
    assert np.all((codes >= 0) & (codes < 8))
    expected = sum(cbs[l][codes[:, l]] for l in range(num_levels))
    np.testing.assert_allclose(out["quantized"], expected, rtol=1e-5, atol=1e-6)
    if num_levels == 1:
        # Every quantized latent is a codebook row, and the nearest one to its latent.
        d = np.sum((out["quantized"][:, None] - cbs[0][None]) ** 2, -1)
        assert np.all(d.min(axis=1) < 1e-10)
        d_lat = np.sum((out["latents"][:, None] - cbs[0][None]) ** 2, -1)
        np.testing.assert_array_equal(codes[:, 0], d_lat.argmin(axis=1))
    else:
        combos = (cbs[0][:, None] + cbs[1][None]).reshape(-1, 2)
        d = np.sum((out["quantized"][:, None] - combos[None]) ** 2, -1)
        assert np.all(d.min(axis=1) < 1e-10)
    # Decoding the codes gives the same reconstruction as the forward pass.
    from audiolm_jax.vqvae.model import build_model

    recon = build_model(config).apply({"params": state.params, "vq_stats": state.vq_stats},
                                      jnp.asarray(codes), method="decode")
    np.testing.assert_allclose(np.asarray(recon), out["recon"], rtol=1e-5, atol=1e-5)


def test_single_level_quantized_latents_are_codebook_entries():
    config = _tiny_config(num_levels=1)
    data = synthetic_images(64, seed=1)
    task, state, _ = _trained_task(config, 3, data)
    _check_quantized_latents(config, task, state, data, 1)


def test_plain_autoencoder_skips_quantizer():
    config = _tiny_config(quantize=False)
    data = synthetic_images(32, seed=2)
    task, state, losses = _trained_task(config, 2, data)
    out = task.forward(state, data[0][:8])
    np.testing.assert_array_equal(out["quantized"], out["latents"])
    assert np.all(out["codes"] == -1)
    # The codebooks were never initialised or updated.
    flat = jax.tree_util.tree_flatten_with_path(state.vq_stats)[0]
    inits = [v for path, v in flat if "initialized" in jax.tree_util.keystr(path)]
    assert inits and not any(bool(v) for v in inits)
    assert all(np.isfinite(losses))


def test_loss_falls_on_synthetic_images(tmp_path):
    """~30 steps of the shared loop on 8 devices, with an in-memory image set."""
    from audiolm_jax.train.loop import train_loop

    config = _tiny_config(num_steps=30)
    config.train.update(checkpoint_every=30, sample_every=0, batch_size=32)
    data = synthetic_images(128, seed=4)
    task = VQVAETask(config)
    state, history = train_loop(task, config, str(tmp_path),
                                ImageBatchIterator(*data, 32, seed=0))
    losses = [h["loss"] for h in history]
    assert len(losses) == 30 and np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    assert {"recon", "commit", "usage/0", "usage/1", "perplexity/0", "perplexity/1"} <= set(history[-1])
    # Two-level RVQ: every quantized latent is a level-0 + level-1 codebook sum.
    _check_quantized_latents(config, task, state, data, 2)


def test_train_vqvae_on_mock_fashion_mnist(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("tensorflow")
    from audiolm_jax.train.checkpoint import Checkpointer

    config = _tiny_config(num_steps=4)
    with tfds.testing.mock_data(num_examples=96):
        images, labels = load_fashion_mnist("train", classes=(0, 1, 2))
        all_images, all_labels = load_fashion_mnist("train", classes=None)
        summary = train_vqvae(config, str(tmp_path))
    # Class filtering keeps exactly the configured labels.
    assert len(labels) > 0 and set(labels.tolist()) <= {0, 1, 2}
    assert len(labels) == int(np.isin(all_labels, [0, 1, 2]).sum()) < len(all_labels)
    assert images.shape == (len(labels), 28, 28) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0

    assert summary["step"] == 4
    assert np.isfinite(summary["loss"]) and np.isfinite(summary["recon_mse"])
    assert Checkpointer(str(tmp_path / "checkpoints")).all_steps() == [2, 4]
    for step in (2, 4):
        for name in ("latents.png", "reconstructions.png"):
            path = tmp_path / "samples" / f"step_{step:07d}" / name
            assert path.is_file() and path.stat().st_size > 1000, path
    assert summary["samples_dir"] == str(tmp_path / "samples" / "step_0000004")
    assert (tmp_path / "config.json").is_file()
