"""The article's codec LM: the 8-level CNN codec's tokens flattened level-interleaved
(`b q t -> b (t q)`, 1000 tokens/s at 125 Hz) into the same GPT-2 model as the mu-law baseline
(12 layers, 16 heads, width 1024, context 2048, dropout 0.1; lr 1e-4, beta2 0.95).

    audiolm-jax train-lm --config=configs/lm/article_codec_flat.py --workdir=runs/lm \
        --config.data.tokens=TOKDIR
"""

from audiolm_jax.lm.config import apply_variant, base_lm_config


def get_config(variant: str = ""):
    c = base_lm_config()  # its model is the article's GPT-2, context 2048
    c.train.name = "article_codec_flat"
    c.tokens.update(num_levels=8, codebook_size=1024)
    return apply_variant(c, variant)
