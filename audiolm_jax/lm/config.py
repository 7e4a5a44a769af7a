"""The base language-model config every ``configs/lm/*.py`` file starts from."""

from __future__ import annotations

import ml_collections

from audiolm_jax.config_sections import mesh_section, optim_section, train_section


# How the model runs, not what it is: these may change when a run resumes. ``remat_policy``:
# what ``remat=True`` keeps ('full' | 'dots_saveable' | 'minimal'); ``attention``: the kernel
# (layers/attention.py); ``scan_layers``: one scanned block (compiles once whatever the depth;
# its checkpoints hold the layers stacked, so it is fixed for a run).
EXECUTION_DEFAULTS = dict(remat_policy="full", attention="blocked", scan_layers=False)
EXECUTION_KEYS = ("dtype", "remat", "remat_policy", "attention", "dropout")


def model_settings(model: dict) -> dict:
    """What a saved LM ``model`` section fixes about the parameters: its keys with the keys
    added since filled in at their defaults, less the execution settings (for the resume
    check)."""
    values = {**EXECUTION_DEFAULTS, **dict(model)}
    return {k: v for k, v in values.items() if k not in EXECUTION_KEYS}


def base_lm_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "lm"
    # GPT-2 family (nanoGPT): the article's model is 12 layers x 16 heads x 1024, context 2048.
    c.model = ml_collections.ConfigDict(dict(
        num_layers=12, num_heads=16, width=1024, context=2048, mlp_ratio=4, dropout=0.1,
        positions="learned", tie_embeddings=True, bias=False, dtype="float32", remat=False,
        layout="flat", level_offsets=False, delays=(), acoustic_delay=1, vocab_multiple=128,
        **EXECUTION_DEFAULTS))
    # The depth transformer of layout 'depth' (Moshi's RQ-Transformer): a small causal
    # transformer over the levels of one frame; dropout, dtype, remat, bias and mlp_ratio come
    # from `model`. Moshi's is 6 layers x 1024 wide under a 7B temporal transformer.
    c.depth = ml_collections.ConfigDict(dict(num_layers=2, num_heads=8, width=256))
    # What the tokens are; filled from the token directory's metadata when training on one.
    c.tokens = ml_collections.ConfigDict(dict(
        codebook_size=2048, num_levels=8, num_streams=1, drop_semantic=False))
    # Per-level loss weights, e.g. (10,) + (0.1,) * 7 or Moshi's semantic x100; () = equal.
    # logits_chunk > 0: the head and the loss run that many positions at a time, so the float32
    # [batch, length, vocab] logits never exist whole (large vocabularies; lm/cross_entropy.py).
    c.loss = ml_collections.ConfigDict(dict(level_weights=(), logits_chunk=0))
    c.optim = optim_section(learning_rate=1e-4, end_learning_rate=1e-5, b2=0.95)
    c.data = ml_collections.ConfigDict(dict(tokens="", eval_fraction=0.0))
    c.train = train_section(name="lm", batch_size=64, sample_every=0)
    # > 1: each step's batch runs as this many microbatches, gradients summed (less memory).
    c.train.gradient_accumulation_steps = 1
    c.mesh = mesh_section()
    return c


def tiny_lm_config() -> ml_collections.ConfigDict:
    """Seconds-on-a-CPU LM (tests, quickstart): 2 layers x 64 wide, context 256 tokens."""
    c = base_lm_config()
    c.train.name = "tiny_lm"
    c.model.update(num_layers=2, num_heads=4, width=64, context=256, dropout=0.0,
                   layout="flat", positions="learned")
    c.tokens.update(num_levels=0)  # 0: every level the token directory has
    c.optim.update(learning_rate=3e-3, end_learning_rate=3e-4, warmup_steps=20,
                   weight_decay=0.0)
    c.train.update(num_steps=200, batch_size=8, checkpoint_every=100, log_every=10)
    return c


def rq_transformer(c: ml_collections.ConfigDict, num_streams: int = 1) -> ml_collections.ConfigDict:
    """Moshi's RQ-Transformer recipe over 8 levels of the article's codec (configs/lm/depth.py,
    duplex.py): the article's GPT as the temporal transformer over 1024 frames, Moshi's depth
    transformer (6 x 1024, 16 heads) over the levels, the acoustic levels one frame behind,
    each stream's semantic level weighted x100."""
    c.model.update(context=1024, layout="depth", acoustic_delay=1)
    c.depth.update(num_layers=6, num_heads=16, width=1024)
    c.tokens.update(num_levels=8, codebook_size=1024, num_streams=num_streams)
    c.loss.level_weights = (100.0,) + (1.0,) * 7  # per stream: semantic x100, acoustic x1
    return c


def apply_variant(c: ml_collections.ConfigDict, variant: str) -> ml_collections.ConfigDict:
    """``--config=configs/lm/NAME.py:tiny`` shrinks any LM config to a seconds-on-a-CPU model
    while keeping its layout, streams, token settings and loss weights."""
    if variant in ("", None):
        return c
    if variant != "tiny":
        raise ValueError(f"unknown config variant {variant!r}; the LM configs know 'tiny'")
    c.train.name = f"{c.train.name}_tiny"
    c.model.update(num_layers=2, num_heads=4, width=64, context=256, dropout=0.0)
    if "depth" in c:
        c.depth.update(num_layers=1, num_heads=4, width=64)
    c.optim.update(learning_rate=3e-3, end_learning_rate=3e-4, warmup_steps=20,
                   weight_decay=0.0)
    c.train.update(num_steps=200, batch_size=8, checkpoint_every=100, log_every=10)
    return c
