"""Helpers shared by several test files (importable: pytest puts tests/ on sys.path)."""

import jax
import jax.numpy as jnp
import numpy as np


def fast_params(module, x, seed=0):
    """Random parameters with the module's shapes, without compiling ``module.init``
    (XLA:CPU compiles the PRNG-heavy init of a deep conv net slowly): :func:`fast_init`."""
    return fast_init(module.init, x, seed=seed)


def mulaw_token_dir(root, seed):
    """A mu-law token directory ``root/tokens`` of 4 synthetic quarter-second utterances at
    8 kHz (their WAVs in ``root/wavs``), from the corpus of ``seed``; returns its path."""
    from audiolm_jax.data.synthetic import write_synthetic_wavs
    from audiolm_jax.lm.tokens import tokenize_corpus

    wavs = write_synthetic_wavs(str(root / "wavs"), n=4, sample_rate=8000, seed=seed, seconds=0.25)
    tokenize_corpus(wavs, str(root / "tokens"), tokenizer="mulaw", sample_rate=8000)
    return str(root / "tokens")


def fast_init(init, *args, seed=0):
    """:func:`fast_params` for any ``init(rng, *args)`` (a module's ``init`` with several call
    arguments, logically partitioned boxes removed): the variables it would make, random with
    the same rule (kernels ~ N(0, 1/fan_in), biases 0, weight-norm gains 1), nothing compiled."""
    import flax.linen as nn

    shapes = nn.meta.unbox(jax.eval_shape(init, jax.random.PRNGKey(0), *args))
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
