"""A CPU-sized flat codec-token LM for tests and the quickstart."""

from audiolm_jax.lm.config import tiny_lm_config


def get_config():
    return tiny_lm_config()
