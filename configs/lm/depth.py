"""Moshi's RQ-Transformer over 8 levels of the article's codec: a temporal transformer over
frames and a depth transformer over the 8 levels of each frame, semantic level weighted x100.

Temporal: 12 layers x 16 heads x 1024 wide, the article's GPT size (Moshi's is 7B: 32 x 4096),
over 1024 steps (8 s of the 125 Hz codec, as configs/lm/delay.py). Depth: Moshi's 6 layers x
1024 wide (16 heads) over the 8 levels of a step, with per-level input projections, embeddings
and heads. Level 0 ("semantic": the first RVQ level) has delay 0, the acoustic levels delay 1.
"""

from audiolm_jax.lm.config import apply_variant, base_lm_config


def get_config(variant: str = ""):
    c = base_lm_config()
    c.train.name = "depth"
    c.model.update(num_layers=12, num_heads=16, width=1024, context=1024, dropout=0.1,
                   layout="depth", acoustic_delay=1)
    c.depth.update(num_layers=6, num_heads=16, width=1024)
    c.tokens.update(num_levels=8, codebook_size=1024)
    c.loss.level_weights = (100.0,) + (1.0,) * 7  # Moshi: semantic x100, acoustic x1
    return apply_variant(c, variant)
