"""Causal attention through the Pallas splash-attention TPU kernel.

:func:`splash_attention` runs JAX's splash attention
(:mod:`jax.experimental.pallas.ops.tpu.splash_attention`) on ``q, k, v [B, T, H, D]``: a
flash-attention kernel (float32 running max and sum, no ``[T, T]`` score matrix in memory)
that reads a block mask and skips every ``block x block`` tile a causal (or sliding-window)
mask hides completely. :func:`splash_or_reference` picks it when the computation is lowered
for a TPU and a reference function anywhere else, so one jitted model runs on every platform;
:mod:`audiolm_jax.layers.attention` calls it for ``attention='splash'``.

Sharding: a Mosaic kernel cannot be partitioned by XLA, so under a mesh
(``jax.set_mesh``) the kernel runs inside ``jax.shard_map``, each device on its own examples
and heads: the batch is split over the mesh axes of the logical name ``activation_batch``
and the heads over those of ``activation_heads``, as flax's current logical axis rules
(``nn.logical_axis_rules``) map them. Without a mesh the kernel is called directly.

The kernel has no softmax scale, so ``q`` is multiplied by ``1 / sqrt(D)`` first. Blocks are
multiples of 128 (the kernel's lane width): ``block`` (default 512), or ``T`` rounded up to
128 when that is smaller; ``T`` is zero-padded to a multiple of the block (padded keys come
after every real query, so causality hides them; padded queries are dropped).
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

DEFAULT_BLOCK = 512
LANES = 128  # splash blocks must be multiples of this
BATCH_NAME, HEADS_NAME = "activation_batch", "activation_heads"


def block_and_length(T: int, block: int = DEFAULT_BLOCK) -> tuple[int, int]:
    """The kernel's block size and the padded sequence length (a multiple of it) for ``T``."""
    if block <= 0 or block % LANES:
        raise ValueError(f"splash block must be a positive multiple of {LANES}, got {block}")
    b = min(block, -(-T // LANES) * LANES)
    return b, -(-T // b) * b


def _kernel(length: int, heads: int, window: int, block: int, interpret: bool):
    """A splash kernel for per-example ``[heads, length, D]`` inputs. Built at each trace
    (its mask arrays become jax arrays of that trace); the numpy work on the block masks
    is cached by splash itself."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    if window:  # query i sees keys i - window + 1 .. i
        mask = sa.LocalMask((length, length), window_size=(window - 1, 0), offset=0)
    else:
        mask = sa.CausalMask((length, length))
    sizes = sa.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                          block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                          block_q_dq=block, block_kv_dq=block)
    return sa.make_splash_mha(sa.MultiHeadMask([mask] * heads), block_sizes=sizes,
                              head_shards=1, q_seq_shards=1, interpret=interpret)


def _local_splash(q, k, v, window: int, block: int, interpret: bool):
    """The kernel on one device's ``[B, T, H, D]`` slices."""
    B, T, H, D = q.shape
    b, length = block_and_length(T, block)
    scale = 1.0 / math.sqrt(D)
    q = (q.astype(jnp.float32) * scale).astype(q.dtype)

    def heads_major(a):  # [B, T, H, D] -> [B, H, length, D]
        a = a.transpose(0, 2, 1, 3)
        return jnp.pad(a, ((0, 0), (0, 0), (0, length - T), (0, 0))) if length > T else a

    kernel = _kernel(length, H, int(window), b, bool(interpret))
    out = jax.vmap(kernel)(heads_major(q), heads_major(k), heads_major(v))
    return out[:, :, :T].transpose(0, 2, 1, 3).astype(q.dtype)


def _mesh_axes(logical: str, mesh, size: int) -> tuple[str, ...]:
    """The mesh axes that flax's current rules map ``logical`` to, kept only while their
    product divides ``size`` (a dimension too small to split stays whole)."""
    spec = nn.logical_to_mesh_axes((logical,))
    names = spec[0] if spec is not None and len(spec) else None
    if names is None:
        return ()
    names = (names,) if isinstance(names, str) else tuple(names)
    manual = set(getattr(mesh, "manual_axes", ()))
    kept, prod = [], 1
    for name in names:
        if name not in mesh.shape or name in manual:
            continue
        if size % (prod * mesh.shape[name]):
            break
        kept.append(name)
        prod *= mesh.shape[name]
    return tuple(kept)


def splash_attention(q, k, v, *, window: int = 0, block: int = DEFAULT_BLOCK,
                     interpret: bool = False) -> jax.Array:
    """Causal attention of ``q, k, v [B, T, H, D]`` -> ``[B, T, H, D]`` (q's dtype) through
    the splash kernel; with a ``window``, query i sees keys ``i - window + 1 .. i``.

    Always the kernel: on a TPU, or anywhere with ``interpret=True`` (Pallas interpret mode,
    slow; for tests on the CPU). Under a mesh it runs in a ``shard_map`` (module docstring).
    """
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    local = functools.partial(_local_splash, window=window, block=block, interpret=interpret)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or all(n in set(getattr(mesh, "manual_axes", ())) for n in mesh.axis_names):
        return local(q, k, v)
    batch = _mesh_axes(BATCH_NAME, mesh, q.shape[0])
    heads = _mesh_axes(HEADS_NAME, mesh, q.shape[2])
    spec = P(batch or None, None, heads or None, None)
    return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec,
                         check_vma=False)(q, k, v)


def splash_or_reference(q, k, v, *, window: int,
                        reference: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
                        block: int = DEFAULT_BLOCK) -> jax.Array:
    """:func:`splash_attention` where the computation is lowered for a TPU,
    ``reference(q, k, v)`` on every other platform (``jax.lax.platform_dependent``: both are
    traced, the one for the lowering platform is compiled)."""
    splash = functools.partial(splash_attention, window=window, block=block)
    return jax.lax.platform_dependent(q, k, v, tpu=splash, default=reference)


def attention_flops(batch: int, length: int, heads: int, head_dim: int, window: int = 0,
                    training: bool = False) -> float:
    """Model FLOPs of causal attention's two matmuls (``q k^T``, ``p v``) over the visible
    (query, key) pairs; ``training``: forward + backward, 3x (MaxText's convention).

    ``cost_analysis()`` of a compiled TPU program leaves the kernel out: a Pallas kernel
    counts only through its cost estimate, which splash does not give."""
    T, w = int(length), int(window) if window and window < length else int(length)
    pairs = w * (w + 1) // 2 + (T - w) * w  # query i sees min(i + 1, w) keys
    fwd = 4.0 * batch * heads * head_dim * pairs  # 2 FLOPs per multiply-add, 2 matmuls
    return fwd * (3.0 if training else 1.0)
