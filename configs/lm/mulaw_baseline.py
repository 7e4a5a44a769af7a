"""The article's sample-level baseline: mu-law 256-level tokens at 16 kHz (context 2048 =
128 ms) into a 151.28M GPT-2 (12 layers, 16 heads, width 1024, no biases, tied embeddings).

    audiolm-jax tokenize --tokenizer=mulaw --audio=DIR --out=TOKDIR
    audiolm-jax train-lm --config=configs/lm/mulaw_baseline.py --workdir=runs/mulaw \
        --config.data.tokens=TOKDIR
"""

from audiolm_jax.lm.config import apply_variant, base_lm_config


def get_config(variant: str = ""):
    c = base_lm_config()  # its model is the article's GPT-2 (no biases, tied embeddings)
    c.train.name = "mulaw_baseline"
    c.tokens.update(num_levels=1, codebook_size=256)
    return apply_variant(c, variant)
