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

from audiolm_jax.lm.config import apply_variant, base_lm_config, rq_transformer


def get_config(variant: str = ""):
    c = base_lm_config()  # the temporal transformer: the article's GPT-2 size
    c.train.name = "duplex"
    return apply_variant(rq_transformer(c, num_streams=2), variant)
