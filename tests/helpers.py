"""Helpers shared by several test files (importable: pytest puts tests/ on sys.path)."""

import jax
import jax.numpy as jnp
import numpy as np


def fast_params(module, x, seed=0):
    """Random parameters with the module's shapes, without compiling ``module.init``
    (XLA:CPU compiles the PRNG-heavy init of a deep conv net slowly). Kernels ~ N(0, 1/fan_in),
    biases 0, weight-norm gains 1."""
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = getattr(path[-1], "key", "")
        if name == "bias":
            return jnp.zeros(leaf.shape, leaf.dtype)
        if name == "g":
            return jnp.ones(leaf.shape, leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1]))
        return jnp.asarray(rng.standard_normal(leaf.shape) / np.sqrt(fan_in), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)
