"""The config sections every trainer's base config has (``optim``, ``train``, ``mesh``), read
by the shared training loop (``train/``); each base config (``codec/config.py``,
``lm/config.py``) gives its own defaults for the values that differ.

It imports nothing else of ``audiolm_jax``.
"""

from __future__ import annotations

import ml_collections


def optim_section(learning_rate: float, end_learning_rate: float,
                  b2: float) -> ml_collections.ConfigDict:
    """AdamW with warmup and a cosine decay to ``end_learning_rate``; see ``train/optim.py``."""
    return ml_collections.ConfigDict(dict(
        learning_rate=learning_rate, end_learning_rate=end_learning_rate, warmup_steps=2000,
        schedule="cosine", weight_decay=0.1, b1=0.9, b2=b2, eps=1e-8, clip_norm=1.0))


def train_section(name: str, batch_size: int, sample_every: int) -> ml_collections.ConfigDict:
    """The run's length, batch, seed, checkpoints and logging; see ``train/loop.py``."""
    return ml_collections.ConfigDict(dict(
        name=name, num_steps=100_000, batch_size=batch_size, seed=0, checkpoint_every=1000,
        log_every=50, sample_every=sample_every, keep_checkpoints=3, async_checkpoints=True,
        progress=True))


def mesh_section() -> ml_collections.ConfigDict:
    """The device mesh: every device on the data axis (``-1``); see ``train/mesh.py``."""
    return ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
