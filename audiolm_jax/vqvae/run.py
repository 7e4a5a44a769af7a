"""``train_vqvae``: the entry point of the Fashion-MNIST VQ-VAE experiment."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from audiolm_jax.train.loop import train_loop
from audiolm_jax.train.mesh import resolve_mesh_shape
from audiolm_jax.train.writers import MetricWriter
from audiolm_jax.vqvae.data import load_images, make_train_iterator
from audiolm_jax.vqvae.task import VQVAETask
from audiolm_jax.workdir import samples_dir, save_config, tensorboard_dir


def check_vqvae_config(config: Any, num_devices: int, num_processes: int = 1) -> None:
    """Clear errors for the config mistakes that would otherwise fail deep inside jit."""
    if config.get("task", "vqvae") != "vqvae":
        raise ValueError(f"config key 'task' is {config.task!r}, expected 'vqvae'")
    data, fsdp, _ = resolve_mesh_shape(config.mesh.data, config.mesh.fsdp, config.mesh.tensor,
                                       num_devices)
    bs = int(config.train.batch_size)
    if bs <= 0 or bs % (data * fsdp) or bs % num_processes:
        raise ValueError(
            f"config key 'train.batch_size' ({bs}) must be a positive multiple of the "
            f"data-parallel size mesh.data*mesh.fsdp = {data * fsdp} and of the process count "
            f"({num_processes})")
    if int(config.model.latent_dim) < 1 or not len(config.model.hidden):
        raise ValueError("model.latent_dim must be >= 1 and model.hidden non-empty")
    if int(config.quantizer.num_levels) < 1:
        raise ValueError("quantizer.num_levels must be >= 1")


def train_vqvae(config: Any, workdir: str,
                train_data: tuple[np.ndarray, np.ndarray] | None = None,
                eval_data: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Trains the (VQ-)autoencoder of ``config`` into ``workdir`` (resuming from its
    checkpoints), writes the final latent/reconstruction plots and returns a summary
    ``{'step', 'loss', 'recon_mse', 'samples_dir', 'workdir'}``.

    ``recon_mse`` is the per-pixel reconstruction MSE on the eval images (through the
    quantizer when ``model.quantize``); ``loss`` the last logged training loss (None when the
    run was already complete). ``train_data`` / ``eval_data`` = (images [N, 28, 28] in [0, 1],
    labels [N]) replace the configured dataset (tests, notebooks).
    """
    check_vqvae_config(config, jax.device_count(), jax.process_count())
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        save_config(config, workdir)
    iterator = make_train_iterator(config, train_data)
    if eval_data is None:
        eval_data = load_images(config, "eval")
    num_eval = int(config.data.get("num_eval", 0) or 0)
    if num_eval:
        eval_data = (eval_data[0][:num_eval], eval_data[1][:num_eval])
    task = VQVAETask(config, eval_data=eval_data)
    writer = MetricWriter(tensorboard_dir(workdir))
    try:
        state, history = train_loop(task, config, workdir, iterator, writer=writer)
        step = int(jax.device_get(state.step))
        task.write_samples(state, step, workdir, writer)
        recon_mse = task.eval_mse(state, eval_data[0])
        writer.scalars(step, {"eval/recon_mse": recon_mse})
    finally:
        writer.close()
    last = history[-1] if history else {}
    return {"workdir": workdir, "step": step, "loss": last.get("loss"), "recon_mse": recon_mse,
            "samples_dir": samples_dir(workdir, step)}
