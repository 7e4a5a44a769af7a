"""Full duplex, Moshi-style: two synchronized token streams of a conversation (stream 0 = the
model's speaker, stream 1 = the user), both modelled by the RQ-Transformer of
configs/lm/depth.py. Per frame the depth transformer predicts the model stream's levels, then
the user's; each stream's semantic level is weighted x100. At generation the user's tokens are
not sampled but fed from `--input_stream`, frame by frame, as a live conversation would.

Trains on the built-in two-speaker dialogue corpus (turn taking, overlaps, backchannels):

    audiolm-jax make-corpus --kind=dialogue --num=256 --out=dialogues/
    audiolm-jax tokenize --codec-workdir=runs/cnn8 --audio=dialogues/ --out=duplex_tokens/ \
        --stereo_streams
    audiolm-jax train-lm --config=configs/lm/duplex.py --workdir=runs/duplex \
        --config.data.tokens=duplex_tokens/
    audiolm-jax generate --workdir=runs/duplex --prompt=dialogues/dialogue_00000.wav \
        --input_stream=user.wav --seconds=6 --out=conversation.wav
"""

from audiolm_jax.lm.config import apply_variant, base_lm_config


def get_config(variant: str = ""):
    c = base_lm_config()
    c.train.name = "duplex"
    c.model.update(num_layers=12, num_heads=16, width=1024, context=1024, dropout=0.1,
                   layout="depth", acoustic_delay=1)
    c.depth.update(num_layers=6, num_heads=16, width=1024)
    c.tokens.update(num_levels=8, codebook_size=1024, num_streams=2)
    c.loss.level_weights = (100.0,) + (1.0,) * 7  # per stream: semantic x100
    return apply_variant(c, variant)
