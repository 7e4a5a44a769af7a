"""audiolm_jax: neural audio codecs and audio language models in JAX/Flax."""

__version__ = "0.1.0"
