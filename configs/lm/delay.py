"""MusicGen's delay layout: level q shifted by q steps, all levels predicted at once from a sum
of per-level embeddings with one head per level (8 levels of the article's codec)."""

from audiolm_jax.lm.config import apply_variant, base_lm_config


def get_config(variant: str = ""):
    c = base_lm_config()  # the article's GPT-2 size
    c.train.name = "delay"
    c.model.update(context=1024, layout="delay", tie_embeddings=False)
    c.tokens.update(num_levels=8, codebook_size=1024)
    return apply_variant(c, variant)
