"""The VQ-VAE experiment as a task for the shared train loop, and its plots.

Loss = reconstruction MSE (per pixel) + ``loss.commit_weight`` * commitment loss. The
quantizer's straight-through estimator carries the reconstruction gradient to the encoder;
the codebooks are EMA k-means statistics in ``'vq_stats'`` (never touched by the optimizer).
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from audiolm_jax.quantization import RNG, STATS, quantizer_config
from audiolm_jax.quantization.init import kmeans_init_state
from audiolm_jax.train.optim import make_optimizer
from audiolm_jax.train.task import Task
from audiolm_jax.vqvae.data import class_name
from audiolm_jax.vqvae.model import build_model
from audiolm_jax.workdir import samples_dir

VQ_RNG = RNG


def _tree_norm(tree: Any) -> jax.Array:
    tree_mod = getattr(optax, "tree", None)
    if tree_mod is not None and hasattr(tree_mod, "norm"):
        return tree_mod.norm(tree)
    return optax.global_norm(tree)


@struct.dataclass
class VQVAEState:
    step: jnp.ndarray
    params: Any
    vq_stats: Any
    opt_state: Any
    rng: jnp.ndarray


class VQVAETask(Task):
    """Init, train step, evaluation and sample plots of the MLP (VQ-)autoencoder."""

    name = "vqvae"
    program = "vqvae_train"
    inference_keys = ("params", STATS)

    def __init__(self, config: Any, eval_data: tuple[np.ndarray, np.ndarray] | None = None):
        super().__init__(config)
        self.model = build_model(config)
        self.quantize = bool(config.model.get("quantize", True))
        self.has_stats = quantizer_config(config.quantizer).has_stats
        self.num_levels = int(config.quantizer.num_levels)
        self.optimizer, self.schedule = make_optimizer(config.optim, int(config.train.num_steps))
        self.eval_data = eval_data
        self._forward = jax.jit(self._apply_eval, static_argnames=("n_levels",))
        self._codebooks = jax.jit(self._get_codebooks)

    # ---------------------------------------------------------------- state
    def init_state(self, rng: jax.Array) -> VQVAEState:
        k_params, k_vq, k_state = jax.random.split(rng, 3)
        h, w = tuple(self.config.model.get("image_shape", (28, 28)))
        variables = self.model.init({"params": k_params, VQ_RNG: k_vq},
                                    jnp.zeros((1, h, w), jnp.float32), train=False)
        params = variables["params"]
        return VQVAEState(step=jnp.zeros((), jnp.int32), params=params,
                          vq_stats=variables.get(STATS, {}),
                          opt_state=self.optimizer.init(nn.meta.unbox(params)), rng=k_state)

    def prepare_batch(self, host_batch: Any) -> dict:
        return {"image": np.asarray(host_batch["image"], np.float32)}

    # ---------------------------------------------------------------- step
    def init_step(self, state: VQVAEState, batch: dict) -> VQVAEState:
        """k-means codebook init on the first batch, before step 1 (see the codec task)."""
        if not (self.quantize and self.has_stats):
            return state
        return kmeans_init_state(self.model, state, batch["image"])

    def train_step(self, state: VQVAEState, batch: dict) -> tuple[VQVAEState, dict]:
        images = batch["image"]
        rng, k_vq = jax.random.split(state.rng)
        commit_w = float(self.config.loss.get("commit_weight", 0.25))

        def loss_fn(params):
            out, mutated = self.model.apply(
                {"params": params, STATS: state.vq_stats}, images, train=True,
                init_codebooks=False, rngs={VQ_RNG: k_vq},
                mutable=[STATS] if self.has_stats else [])
            recon = jnp.mean((out["recon"] - images) ** 2)
            loss = recon + commit_w * out["commit_loss"]
            return loss, (recon, out, mutated.get(STATS, state.vq_stats))

        (loss, (recon, out, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "recon": recon, "commit": out["commit_loss"],
                   "grad_norm": _tree_norm(grads),
                   "learning_rate": self.schedule(state.step)}
        if self.quantize:
            for name in ("usage", "perplexity", "codes_reset"):
                metrics[name] = out["metrics"][name]
        new_state = state.replace(step=state.step + 1, params=params, vq_stats=new_stats,
                                  opt_state=opt_state, rng=rng)
        return new_state, metrics

    # ---------------------------------------------------------------- eval
    def _apply_eval(self, params, vq_stats, images, n_levels=None):
        return self.model.apply({"params": params, STATS: vq_stats}, images, train=False,
                                n_levels=n_levels)

    def _get_codebooks(self, params, vq_stats):
        return self.model.apply({"params": params, STATS: vq_stats},
                                method=lambda m: m.codebooks())

    def forward(self, state: VQVAEState, images: np.ndarray, n_levels: int | None = None) -> dict:
        """Pure eval pass on host images; numpy ``recon``, ``latents``, ``quantized``, ``codes``."""
        out = self._forward(state.params, state.vq_stats, jnp.asarray(images, jnp.float32),
                            n_levels=n_levels)
        return {k: np.asarray(jax.device_get(out[k]))
                for k in ("recon", "latents", "quantized", "codes")}

    def codebooks(self, state: VQVAEState) -> np.ndarray:
        """float32 [L, K, latent_dim]."""
        return np.asarray(jax.device_get(self._codebooks(state.params, state.vq_stats)))

    def eval_mse(self, state: VQVAEState, images: np.ndarray, batch_size: int = 1024) -> float:
        total = 0.0
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            total += float(np.sum((self.forward(state, chunk)["recon"] - chunk) ** 2))
        return total / max(images.size, 1)

    # ---------------------------------------------------------------- samples
    def write_samples(self, state: VQVAEState, step: int, workdir: str, writer=None) -> list[str]:
        """Latent scatter + reconstruction grid PNGs under ``workdir/samples/step_N/``."""
        if self.eval_data is None or jax.process_index() != 0:
            return []
        images, labels = self.eval_data
        outdir = samples_dir(workdir, step)
        os.makedirs(outdir, exist_ok=True)
        out = self.forward(state, images)
        cbs = self.codebooks(state) if self.quantize else None
        dataset = self.config.data.get("dataset", "fashion_mnist")
        paths = [
            save_latent_scatter(os.path.join(outdir, "latents.png"), out["latents"], labels,
                                cbs, dataset=dataset, title=f"step {int(step)}"),
        ]
        n_show = int(self.config.data.get("num_show", 10))
        rows = {"original": images[:n_show], "reconstruction": out["recon"][:n_show]}
        if self.quantize and self.num_levels > 1:
            rows["level 0 only"] = self.forward(state, images[:n_show], n_levels=1)["recon"]
        paths.append(save_reconstruction_grid(os.path.join(outdir, "reconstructions.png"), rows))
        if writer is not None:
            for p in paths:
                writer.image(int(step), f"samples/{os.path.splitext(os.path.basename(p))[0]}", p)
        return paths


# -------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_latent_scatter(path: str, latents: np.ndarray, labels: np.ndarray,
                        codebooks: np.ndarray | None = None, dataset: str = "fashion_mnist",
                        title: str = "") -> str:
    """2-D latents coloured by class with codebook centres on top.

    One panel per codebook view: level-0 centres, and (for RVQ) every level-0 + level-1 sum.
    Only the first two latent dimensions are drawn.
    """
    plt = _pyplot()
    latents = np.asarray(latents)[:, :2]
    views = [("latents", None)]
    if codebooks is not None and len(codebooks):
        cbs = np.asarray(codebooks)[..., :2]
        views = [("level-0 codebook", cbs[0])]
        if len(cbs) > 1:
            combos = (cbs[0][:, None, :] + cbs[1][None, :, :]).reshape(-1, 2)
            views.append(("level-0 + level-1 sums", combos))
    fig, axes = plt.subplots(1, len(views), figsize=(6 * len(views), 5.5), squeeze=False)
    classes = np.unique(labels)
    cmap = plt.get_cmap("tab10")
    for ax, (name, centres) in zip(axes[0], views):
        for i, c in enumerate(classes):
            sel = labels == c
            ax.scatter(latents[sel, 0], latents[sel, 1], s=5, alpha=0.5, color=cmap(i % 10),
                       label=class_name(int(c), dataset))
        if centres is not None:
            big = len(centres) <= 64
            ax.scatter(centres[:, 0], centres[:, 1], marker="x" if big else ".",
                       s=60 if big else 10, color="black", linewidths=1.5,
                       label=f"{name} ({len(centres)})")
        ax.set_title(f"{title}: {name}" if title else name)
        ax.set_xlabel("z[0]")
        ax.set_ylabel("z[1]")
        ax.legend(loc="best", fontsize=8, markerscale=2)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def save_reconstruction_grid(path: str, rows: dict[str, np.ndarray]) -> str:
    """One row of images per entry (e.g. originals, reconstructions), grey scale in [0, 1]."""
    plt = _pyplot()
    n = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(rows), n, figsize=(1.2 * n + 1.0, 1.3 * len(rows)),
                             squeeze=False)
    for r, (name, imgs) in enumerate(rows.items()):
        for c in range(n):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(imgs):
                ax.imshow(np.clip(np.asarray(imgs[c]), 0, 1), cmap="gray", vmin=0, vmax=1)
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
