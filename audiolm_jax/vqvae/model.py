"""A small fully connected autoencoder with a 2-D latent and an optional EMA (residual) VQ.

Encoder: ``len(hidden)`` Dense layers with a nonlinearity, then one Dense layer to the
latent (the article uses 3 + 1 = 4 layers down to 2 dimensions). The decoder mirrors it:
``len(hidden)`` hidden Dense layers in reverse order, then one Dense layer back to 28x28.

The quantizer comes from :func:`audiolm_jax.quantization.make_quantizer` and sees each latent
as a length-1 sequence ``[B, 1, latent_dim]``. Its statistics live in ``'vq_stats'``; train with
``mutable=['vq_stats']`` and an rng named ``'vq'``. With ``model.quantize=False`` the
quantizer is still created at init (so the state always has the same structure), but the
decoder reads the raw latent and the codebooks are never updated.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from audiolm_jax.quantization import make_quantizer

_ACTIVATIONS = {"relu": nn.relu, "gelu": nn.gelu, "silu": nn.silu, "tanh": jnp.tanh,
                "leaky_relu": nn.leaky_relu}


def _frozen(cfg: Any) -> ml_collections.FrozenConfigDict:
    if isinstance(cfg, ml_collections.FrozenConfigDict):
        return cfg
    return ml_collections.FrozenConfigDict(cfg)


def _activation(name: str):
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"model.activation must be one of {sorted(_ACTIVATIONS)}, got {name!r}")


class MLP(nn.Module):
    """Dense layers ``features``; the activation follows every layer but the last."""

    features: tuple[int, ...]
    activation: str = "relu"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = _activation(self.activation)
        for i, f in enumerate(self.features):
            x = nn.Dense(int(f), name=f"dense_{i}")(x)
            if i < len(self.features) - 1:
                x = act(x)
        return x


class VQAutoencoder(nn.Module):
    """Images [B, H, W] in [0, 1] -> 2-D latents -> (quantized) -> reconstructions [B, H, W]."""

    model_cfg: ml_collections.FrozenConfigDict
    quantizer_cfg: ml_collections.FrozenConfigDict

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self.model_cfg.get("image_shape", (28, 28)))

    @property
    def quantize(self) -> bool:
        return bool(self.model_cfg.get("quantize", True))

    def setup(self):
        hidden = tuple(int(h) for h in self.model_cfg.hidden)
        latent_dim = int(self.model_cfg.latent_dim)
        act = str(self.model_cfg.get("activation", "relu"))
        h, w = self.image_shape
        self.encoder = MLP(hidden + (latent_dim,), act)
        self.decoder = MLP(tuple(reversed(hidden)) + (h * w,), act)
        self.quantizer = make_quantizer(self.quantizer_cfg, latent_dim)

    # -- pieces ---------------------------------------------------------------

    def encode_latents(self, images: jax.Array) -> jax.Array:
        """Continuous latents [B, latent_dim]."""
        return self.encoder(images.reshape(images.shape[0], -1).astype(jnp.float32))

    def decode_latents(self, z: jax.Array) -> jax.Array:
        """Images [B, H, W] from latents [B, latent_dim]."""
        out = self.decoder(z)
        kind = self.model_cfg.get("output_activation", "sigmoid")
        if kind == "sigmoid":
            out = nn.sigmoid(out)
        elif kind not in ("none", "linear", None):
            raise ValueError(f"model.output_activation must be 'sigmoid' or 'none', got {kind!r}")
        return out.reshape((z.shape[0],) + self.image_shape)

    def codebooks(self) -> jax.Array:
        """float32 [L, K, latent_dim]: every level's codebook."""
        return self.quantizer.get_codebooks()

    def encode(self, images: jax.Array, n_levels: int | None = None) -> jax.Array:
        """Codes int32 [B, n_levels]."""
        return self.quantizer.encode(self.encode_latents(images)[:, None, :], n_levels)[:, 0]

    def decode(self, codes: jax.Array) -> jax.Array:
        """Images from codes [B, n] (n <= L)."""
        return self.decode_latents(self.quantizer.decode(codes[:, None, :])[:, 0])

    # -- forward ----------------------------------------------------------------

    def __call__(self, images: jax.Array, train: bool = False,
                 n_levels: int | None = None, init_codebooks: bool | None = None) -> dict:
        """Returns ``recon`` [B, H, W], ``latents`` / ``quantized`` [B, D], ``codes`` [B, L]
        (-1 when not quantizing), ``commit_loss`` and per-level quantizer ``metrics``."""
        z = self.encode_latents(images)
        B = z.shape[0]
        L = int(self.quantizer.num_levels)
        if self.quantize or self.is_initializing():
            q = self.quantizer(z[:, None, :], train=train and self.quantize, n_levels=n_levels,
                               init_codebooks=init_codebooks)
        if self.quantize:
            zq = q["quantized"][:, 0]
            codes = q["codes"][:, 0]
            commit = q["commit_loss"]
            metrics = q["metrics"]
        else:
            zq = z
            codes = jnp.full((B, L), -1, jnp.int32)
            commit = jnp.zeros((), jnp.float32)
            metrics = {}
        return {"recon": self.decode_latents(zq), "latents": z, "quantized": zq,
                "codes": codes, "commit_loss": commit, "metrics": metrics}


def build_model(config: Any) -> VQAutoencoder:
    return VQAutoencoder(model_cfg=_frozen(config.model), quantizer_cfg=_frozen(config.quantizer))
