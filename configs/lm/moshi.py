"""Moshi (Kyutai's speech-text foundation model): a 7B temporal transformer over 12.5 Hz
frames, a depth transformer over the model's 8 Mimi codebooks, the user's 8 codebooks as a
second stream and the aligned text stream ("inner monologue"), semantic codebook x100,
PAD/EPAD x0.5 -- the released sizes (``configs/moshi_7b_202409.json``).

    audiolm-jax make-corpus --kind=aligned_dialogue --num=256 --out=dialogues/
    audiolm-jax tokenize --codec-workdir=runs/mimi --audio=dialogues/ --out=moshi_tokens/ \
        --stereo_streams --text_tokenizer=dialogues/text_tokenizer.model
    audiolm-jax train-lm --config=configs/lm/moshi.py:tiny --workdir=runs/moshi \
        --config.data.tokens=moshi_tokens/
    # fine-tuning (full, or LoRA with --config.lora.rank=R) from an import or a run:
    audiolm-jax train-lm --config=configs/lm/moshi.py --workdir=runs/ft \
        --config.data.tokens=moshi_tokens/ --init_from=imported_moshi/ --config.lora.rank=128

Variants: ``moshi.py`` (7B, for a pod: bf16, scanned and rematerialised layers, FSDP) and
``moshi.py:tiny`` (CPU seconds; sizes from the token directory).
"""

from audiolm_jax.moshi.experiment import base_config, tiny_variant


def get_config(variant: str = ""):
    c = base_config()
    if variant == "tiny":
        return tiny_variant(c)
    if variant:
        raise ValueError(f"unknown config variant {variant!r}; moshi.py knows 'tiny'")
    # A pod run: bf16 compute on float32 master weights, scanned and rematerialised layers,
    # splash attention, weights and optimizer state sharded over every chip (FSDP), one
    # 100 s window (1250 frames) per chip of a v5p-128 (64 chips).
    c.model.update(dtype="bfloat16", remat="full", scan_layers=True, attention="splash")
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.train.batch_size = 64
    return c
