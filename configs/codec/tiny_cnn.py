"""A CPU-sized article codec for tests and smoke runs: 16 channels, 4 levels of 64 codes."""

from audiolm_jax.codec.config import tiny_cnn_config


def get_config():
    return tiny_cnn_config()
