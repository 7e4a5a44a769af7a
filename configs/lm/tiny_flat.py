"""The CPU-sized flat LM the tests and the quickstart use (2 layers x 64, context 256)."""

from audiolm_jax.lm.config import apply_variant, tiny_lm_config


def get_config(variant: str = ""):
    return apply_variant(tiny_lm_config(), variant)
