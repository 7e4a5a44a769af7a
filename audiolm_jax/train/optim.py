"""optax optimizer from config: AdamW, linear warmup, cosine decay, global-norm clipping."""

from __future__ import annotations

from typing import Any

import optax


def make_schedule(ocfg: Any, num_steps: int) -> optax.Schedule:
    warmup = int(ocfg.get("warmup_steps", 0))
    peak = float(ocfg.learning_rate)
    end = float(ocfg.get("end_learning_rate", peak * 0.1))
    decay_steps = max(int(num_steps), warmup + 1)
    if ocfg.get("schedule", "cosine") == "constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, max(warmup, 1)), optax.constant_schedule(peak)],
            [max(warmup, 1)]) if warmup else optax.constant_schedule(peak)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else peak, peak_value=peak, warmup_steps=warmup,
        decay_steps=decay_steps, end_value=end)


def make_optimizer(ocfg: Any, num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Returns (optimizer, learning-rate schedule) for keys learning_rate, end_learning_rate,
    warmup_steps, schedule, weight_decay, b1, b2, eps, clip_norm."""
    schedule = make_schedule(ocfg, num_steps)
    parts = []
    clip = float(ocfg.get("clip_norm", 0.0) or 0.0)
    if clip > 0:
        parts.append(optax.clip_by_global_norm(clip))
    parts.append(optax.adamw(
        schedule, b1=float(ocfg.get("b1", 0.9)), b2=float(ocfg.get("b2", 0.999)),
        eps=float(ocfg.get("eps", 1e-8)), weight_decay=float(ocfg.get("weight_decay", 0.0))))
    return optax.chain(*parts), schedule
