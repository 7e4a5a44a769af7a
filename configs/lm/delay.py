"""MusicGen's delay layout: level q shifted by q steps, all levels predicted at once from a sum
of per-level embeddings with one head per level (8 levels of the article's codec)."""

from audiolm_jax.lm.config import apply_variant, base_lm_config


def get_config(variant: str = ""):
    c = base_lm_config()
    c.train.name = "delay"
    c.model.update(num_layers=12, num_heads=16, width=1024, context=1024, dropout=0.1,
                   layout="delay", tie_embeddings=False)
    c.tokens.update(num_levels=8, codebook_size=1024)
    return apply_variant(c, variant)
