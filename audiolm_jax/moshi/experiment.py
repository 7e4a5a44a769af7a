"""The Moshi experiment config (``task = 'moshi'``) that ``configs/lm/moshi.py`` and
``import-moshi`` start from.

Sections: ``model`` (Kyutai's ``LMModel`` keywords, :class:`audiolm_jax.moshi.MoshiConfig`'s
fields; ``card``, ``text_card``, ``n_q``, ``dep_q`` at 0 are read from the token directory and
``delays`` empty is Moshi's pattern), ``loss`` (moshi-finetune's weights), ``lora``, ``data``
(the token directory and the training window in frames), ``optim``, ``train`` (with
``init_from``: the Moshi to fine-tune), ``mesh``.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from audiolm_jax.config_sections import mesh_section, optim_section, train_section
from audiolm_jax.moshi.config import MoshiConfig

_OURS = {"dtype": "float32", "attention": "blocked", "remat": "none", "scan_layers": False}


def model_section(**kyutai) -> ml_collections.ConfigDict:
    """Every :class:`MoshiConfig` field at its 7B default, overridden by ``kyutai``."""
    values = {}
    for f in dataclasses.fields(MoshiConfig):
        if f.name in _OURS:
            values[f.name] = _OURS[f.name]
        else:
            values[f.name] = f.default
    values.update(kyutai)
    for key in ("delays", "depformer_weights_per_step_schedule"):
        if values.get(key) is not None:
            values[key] = list(values[key])
    return ml_collections.ConfigDict(values)


def base_config(**kyutai) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "moshi"
    c.model = model_section(**kyutai)
    # moshi-finetune's loss: text + audio cross-entropy, PAD/EPAD x0.5, semantic codebook x100.
    c.loss = ml_collections.ConfigDict(dict(text_weight=1.0, audio_weight=1.0,
                                            text_padding_weight=0.5,
                                            first_codebook_weight=100.0))
    # LoRA (rank 0: off). Kyutai's defaults: rank 128, scaling 2, every linear layer.
    c.lora = ml_collections.ConfigDict(dict(rank=0, scaling=2.0, heads=True, embeddings=False))
    # frames: the training window (Kyutai fine-tunes on 100 s: 1250 frames at 12.5 Hz).
    c.data = ml_collections.ConfigDict(dict(tokens="", eval_fraction=0.0, frames=1250))
    c.optim = optim_section(learning_rate=2e-6, end_learning_rate=2e-7, b2=0.95)
    c.optim.update(warmup_steps=100, weight_decay=0.1)
    c.train = train_section(name="moshi", batch_size=16, sample_every=0)
    c.train.init_from = ""  # a Moshi workdir / export / import to start from
    c.mesh = mesh_section()
    return c


def tiny_variant(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``moshi.py:tiny``: every feature of the 7B (sliding window, per-step depformer weights,
    delays, both streams, the text stream) at CPU-seconds sizes; the codebook, levels and text
    vocabulary come from the token directory."""
    c.train.name = "moshi_tiny"
    c.model.update(
        dim=64, num_heads=4, num_layers=2, hidden_scale=4.125, context=64, card=0, text_card=0,
        n_q=0, dep_q=0, delays=[], depformer_dim=64, depformer_dim_feedforward=256,
        depformer_num_heads=4, depformer_num_layers=1, depformer_context=8,
        depformer_weights_per_step_schedule=None, attention="xla")
    c.data.frames = 64
    c.optim.update(learning_rate=3e-3, end_learning_rate=3e-4, warmup_steps=20,
                   weight_decay=0.0)
    c.train.update(num_steps=300, batch_size=8, checkpoint_every=100, log_every=10)
    return c
