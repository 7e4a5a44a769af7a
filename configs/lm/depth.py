"""Moshi's RQ-Transformer over 8 levels of the article's codec: a temporal transformer over
frames and a depth transformer over the 8 levels of each frame, semantic level weighted x100.

Temporal: 12 layers x 16 heads x 1024 wide, the article's GPT size (Moshi's is 7B: 32 x 4096),
over 1024 steps (8 s of the 125 Hz codec, as configs/lm/delay.py). Depth: Moshi's 6 layers x
1024 wide (16 heads) over the 8 levels of a step, with per-level input projections, embeddings
and heads. Level 0 ("semantic": the first RVQ level) has delay 0, the acoustic levels delay 1.

Variants: ``depth.py:tiny`` (a CPU model) and ``depth.py:7b`` (Moshi's sizes for a pod; see
``moshi_size``), e.g. ``audiolm-jax compile --config=configs/lm/depth.py:7b --topology=v5p-128``.
"""

from audiolm_jax.lm.config import apply_variant, base_lm_config, rq_transformer


def get_config(variant: str = ""):
    c = base_lm_config()  # the temporal transformer: the article's GPT-2 size
    c.train.name = "depth"
    rq_transformer(c)
    if variant == "7b":
        return moshi_size(c)
    return apply_variant(c, variant)


def moshi_size(c):
    """``depth.py:7b``: Moshi's sizes for pod runs. Temporal 32 x 4096 (32 heads) over 3000
    frames (4 min at 12.5 Hz) of two streams of 8 Mimi levels (2048 codes), depth 6 x 1024 (16
    heads); bf16 compute, float32 master weights, scanned and rematerialised layers, splash
    attention, parameters and optimizer state sharded over all chips (FSDP), one sequence
    per chip (set train.batch_size to the chip count: 64 on a v5p-128)."""
    c.train.name = "depth_7b"
    c.model.update(num_layers=32, num_heads=32, width=4096, context=3000, dropout=0.0,
                   positions="rope", dtype="bfloat16", remat=True, scan_layers=True,
                   attention="splash")
    c.depth.update(num_layers=6, num_heads=16, width=1024)
    c.tokens.update(num_levels=8, codebook_size=2048, num_streams=2)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.train.batch_size = 64
    return c
