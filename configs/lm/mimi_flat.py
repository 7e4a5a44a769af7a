"""The article's best LM: 8-level Mimi tokens (1 semantic + 7 acoustic, 2048 bins, 12.5 Hz)
flattened level-interleaved (100 tokens/s, so the 2048-token context is about 20 s) into the
same 12-layer GPT-2 as the other article configs. The semantic level's loss is weighted x100,
Moshi's factor (the article's "we might get even better results by weighing the semantic
tokens higher").

Variants (``--config=configs/lm/mimi_flat.py:VARIANT``, comma-separated):
  no_semantic  drop level 0 and model the next 8 acoustic levels, the article's comparison
               "without the semantic token" (such an LM cannot be decoded back to audio, since
               the codec needs level 0; compare the losses with eval-lm);
  unweighted   all levels weighted equally, as the article trained it;
  tiny         2 layers x 64 wide, context 256: runs on a CPU.

    audiolm-jax import-mimi --weights=model.safetensors --workdir=runs/mimi
    audiolm-jax tokenize --codec-workdir=runs/mimi --audio=DIR --out=runs/mimi_tokens
    audiolm-jax train-lm --config=configs/lm/mimi_flat.py --workdir=runs/lm_mimi \
        --config.data.tokens=runs/mimi_tokens
"""

from audiolm_jax.lm.config import apply_variant, base_lm_config

SEMANTIC_WEIGHT = 100.0


def get_config(variant: str = ""):
    c = base_lm_config()  # its model is the article's GPT-2, context 2048
    c.train.name = "mimi_flat"
    c.tokens.update(num_levels=8, codebook_size=2048, drop_semantic=False)
    c.loss.level_weights = (SEMANTIC_WEIGHT,) + (1.0,) * 7
    rest = []
    for part in filter(None, (variant or "").split(",")):
        if part == "no_semantic":
            c.train.name += "_no_semantic"
            c.tokens.drop_semantic = True
            c.loss.level_weights = ()
        elif part == "unweighted":
            c.train.name += "_unweighted"
            c.loss.level_weights = ()
        else:
            rest.append(part)
    for part in rest:
        apply_variant(c, part)
    return c
