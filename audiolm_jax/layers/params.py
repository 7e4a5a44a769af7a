"""Parameters with logical axis names, and the initialisers the models share.

Every weight in the package is created float32 through :func:`param`, boxed with its logical
axis names (``nn.with_logical_partitioning``) so the mesh rules in
:mod:`audiolm_jax.train.mesh` decide how it is sharded.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = nn.initializers.Initializer


def param(module: nn.Module, name: str, shape: Sequence[int], names: Sequence, init
          ) -> jax.Array:
    """A float32 parameter of ``module`` whose box carries the logical axis names ``names``."""
    shape, names = tuple(shape), tuple(names)
    if len(names) != len(shape):
        raise ValueError(f"parameter {name!r}: {len(names)} axis names {names} for shape {shape}")
    return module.param(name, nn.with_logical_partitioning(init, names), shape, jnp.float32)


def normal(std: float) -> Initializer:
    return nn.initializers.normal(stddev=std)


def lecun(in_axis=-2, out_axis=-1, batch_axis=()) -> Initializer:
    """LeCun normal (truncated, variance 1 / fan_in) with the fan-in read from ``in_axis``:
    kernels stored with split head axes ([W, 3, H, D], [H, D, W]) need it named."""
    return nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=in_axis,
                                            out_axis=out_axis, batch_axis=batch_axis)


# Float32 weights that models read in float32 (norm statistics' scales and offsets): never cast.
FLOAT32_READ = ("scale", "bias")


def cast_for_inference(params, dtype, keep: Sequence[str] = FLOAT32_READ):
    """Inference weights: every float32 array of rank >= 2 (projections, heads; stacked over
    layers when scanned) cast once to the compute ``dtype``, except leaves named in ``keep``
    (weights a model reads in float32). The models cast these arrays to their compute dtype
    right before using them, so outputs do not change, while a 16-bit decode step reads half
    the bytes of float32 masters and no longer casts them at every step. Identity for float32.
    Works on arrays and on ``jax.ShapeDtypeStruct`` leaves (an AOT compile's weights)."""
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float32:
        return params

    def cast(path, x):
        if (getattr(x, "dtype", None) != jnp.float32 or len(x.shape) < 2
                or getattr(path[-1], "key", None) in keep):
            return x
        if isinstance(x, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding)
        return x.astype(dtype)

    return jax.tree_util.tree_map_with_path(cast, params)
