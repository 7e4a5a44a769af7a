"""Gradient balancer (the EnCodec / audiocraft ``Balancer`` idea), functional and jit-friendly.

Given the gradient ``g_i = d loss_i / d y`` of each loss with respect to the generator output
``y`` (all the same shape, e.g. ``[B, T]``), the combined gradient is

    sum_i  (w_i / sum_j w_j) * total_norm / (ema_i + eps) * g_i

where ``ema_i`` is an exponential moving average of ``||g_i||``. Norm definition (as audiocraft
with ``per_batch_item=True``): the L2 norm of each batch item's gradient (over all non-batch
axes), averaged over the batch: ``mean_b ||g_i[b]||_2``. For a 0- or 1-D gradient the plain L2
norm is used.

EMA: ``ema' = decay * ema + (1 - decay) * norm``, except that an entry ``<= 0`` (the initial
state from ``init_balancer_state``) is replaced by the current norm, so the first step is
already balanced and ``decay = 0`` means "use the current norm". (audiocraft instead keeps a
bias-corrected average; both start from the first observed norm.)

Usage in a train step::

    y, vjp = jax.vjp(lambda p: decoder_apply(p, ...), params)
    grads = {name: jax.grad(loss_fn)(y) for name, loss_fn in losses.items()}
    g, ema, metrics = balance_gradients(grads, weights, ema)
    (param_grads,) = vjp(g)
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def init_balancer_state(names: Sequence[str]) -> dict[str, Array]:
    """Zero EMA norms (meaning "not yet observed")."""
    return {name: jnp.zeros((), jnp.float32) for name in names}


def per_sample_grad_norm(g: Array) -> Array:
    """Mean over the batch (axis 0) of per-item L2 norms."""
    g = jnp.asarray(g, jnp.float32)
    if g.ndim <= 1:
        return jnp.sqrt(jnp.sum(jnp.square(g)))
    axes = tuple(range(1, g.ndim))
    return jnp.mean(jnp.sqrt(jnp.sum(jnp.square(g), axis=axes)))


def balance_gradients(grads: Mapping[str, Array], weights: Mapping[str, float],
                      ema_norms: Mapping[str, Array], ema_decay: float = 0.999,
                      total_norm: float = 1.0, eps: float = 1e-12):
    """Combine per-loss output gradients. Returns ``(combined_grad, new_ema_norms, metrics)``.

    ``weights``: floats or JAX scalars (may be traced); keys of ``grads`` missing from it get
    weight 0. Missing ``ema_norms`` entries are treated as uninitialised. ``metrics`` holds, per loss ``name``:
    ``grad_norm/name`` (this step's norm), ``ema_norm/name``, ``scale/name`` (the factor
    applied to its gradient) and ``ratio/name`` (its share of the sum of this step's norms).
    """
    names = list(grads.keys())
    if not names:
        raise ValueError("no gradients to balance")
    # Weights may be Python floats or (traced) JAX scalars, e.g. an adversarial weight that
    # switches on at some step; a loss missing from ``weights`` gets weight 0.
    w = {n: jnp.asarray(weights.get(n, 0.0), jnp.float32) for n in names}
    total_w = sum(w.values())
    raw = [weights.get(n, 0.0) for n in names]
    if all(isinstance(v, (int, float)) for v in raw) and sum(raw) <= 0:
        raise ValueError("sum of balancer weights must be positive")
    total_w = jnp.maximum(total_w, eps)
    norms = {n: per_sample_grad_norm(grads[n]) for n in names}
    new_ema = {}
    for n in names:
        old = jnp.asarray(ema_norms.get(n, 0.0), jnp.float32)
        upd = ema_decay * old + (1.0 - ema_decay) * norms[n]
        new_ema[n] = jnp.where(old > 0, upd, norms[n])
    sum_norms = sum(norms.values())
    combined = None
    metrics = {}
    for n in names:
        scale = (w[n] / total_w) * total_norm / (new_ema[n] + eps)
        part = scale * grads[n]
        combined = part if combined is None else combined + part
        metrics[f"grad_norm/{n}"] = norms[n]
        metrics[f"ema_norm/{n}"] = new_ema[n]
        metrics[f"scale/{n}"] = scale
        metrics[f"ratio/{n}"] = norms[n] / (sum_norms + eps)
    # Keep any EMA entries for losses absent this step.
    for n, v in ema_norms.items():
        if n not in new_ema:
            new_ema[n] = jnp.asarray(v, jnp.float32)
    return combined.astype(jnp.asarray(grads[names[0]]).dtype), new_ema, metrics
