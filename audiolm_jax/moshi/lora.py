"""Low-rank adapters (LoRA) for Moshi, as Kyutai's moshi-finetune trains them.

Kyutai wraps every ``nn.Linear`` of the LM in a ``LoRALinear``: ``W' = W + scaling * B @ A``
with ``A [rank, in]`` (Kaiming-uniform) and ``B [out, rank]`` (zeros), so a fresh adapter
changes nothing. Our kernels are ``[lead..., in..., out...]`` (``lead``: scanned layers, the
depformer's per-step weight sets, or per-codebook tables), so an adapter is a pair::

    a [lead..., prod(in), rank]     (Kyutai's A transposed)
    b [lead..., rank, prod(out)]    (Kyutai's B transposed)
    kernel' = kernel + scaling * reshape(a @ b)

Targets: the attention and MLP projections of both transformers (always), the input and
output projections around them (``depformer_in``, ``text_linear``, ``linears``: Kyutai's
default, since they are ``nn.Linear`` too; ``lora.heads=False`` leaves them out) and,
optionally, the embedding tables (``lora.embeddings``: ``a`` has one row per token).

The adapter tree mirrors the params tree, holding ``{'a', 'b'}`` at each adapted leaf.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

# Leaf name (with its parent where names repeat) -> (input axes, output axes), counted from
# the end of the kernel's own shape (leading axes are per-layer / per-step / per-table).
_BLOCK_KERNELS = {("attn", "qkv_kernel"): (1, 3), ("attn", "out_kernel"): (2, 1),
                  ("mlp", "in_kernel"): (1, None), ("mlp", "out_kernel"): (1, 1)}
_HEADS = {"depformer_in": (1, 1), "text_linear": (1, 1), "linears": (1, 1)}
_EMBEDDINGS = {"text_emb": (1, 1), "emb": (1, 1), "depformer_text_emb": (1, 1),
               "depformer_emb": (1, 1)}
_STACKS = ("transformer", "depformer")


def _target_axes(path: tuple[str, ...], ndim: int, heads: bool, embeddings: bool):
    """(lead, n_in, n_out) of an adapted leaf, or None when the leaf is not a target."""
    axes = None
    if path[0] in _STACKS and len(path) >= 2:
        axes = _BLOCK_KERNELS.get(tuple(path[-2:]))
        if axes == (1, None):  # the MLP input: [W, 2, M] gated or [W, M]
            axes = (1, 2) if ndim >= 3 else (1, 1)
    elif heads and len(path) == 1 and path[0] in _HEADS:
        axes = _HEADS[path[0]]
    elif embeddings and len(path) == 1 and path[0] in _EMBEDDINGS:
        axes = _EMBEDDINGS[path[0]]
    if axes is None:
        return None
    n_in, n_out = axes
    lead = ndim - n_in - n_out
    if lead < 0:
        return None
    return lead, n_in, n_out


def _walk(tree: Mapping, prefix=()):
    for name, value in tree.items():
        if isinstance(value, Mapping):
            yield from _walk(value, prefix + (name,))
        else:
            yield prefix + (name,), value


def _set(tree: dict, path, value):
    node = tree
    for name in path[:-1]:
        node = node.setdefault(name, {})
    node[path[-1]] = value


def _get(tree: Mapping, path):
    for name in path:
        tree = tree[name]
    return tree


def adapter_shapes(param_shapes: Mapping, rank: int, heads: bool = True,
                   embeddings: bool = False) -> dict:
    """``{path: (a_shape, b_shape)}`` of every adapted leaf of a params tree (shapes only)."""
    out = {}
    for path, leaf in _walk(param_shapes):
        found = _target_axes(path, len(leaf.shape), heads, embeddings)
        if found is None:
            continue
        lead, n_in, n_out = found
        shape = tuple(leaf.shape)
        lead_shape = shape[:lead]
        fan_in = int(np.prod(shape[lead:lead + n_in]))
        fan_out = int(np.prod(shape[lead + n_in:]))
        out[path] = (lead_shape + (fan_in, rank), lead_shape + (rank, fan_out))
    return out


def init_lora(param_shapes: Mapping, rank: int, rng: jax.Array, heads: bool = True,
              embeddings: bool = False) -> dict:
    """A fresh adapter tree: ``a`` Kaiming-uniform (PyTorch's ``nn.Linear`` default, bound
    ``1 / sqrt(fan_in)``), ``b`` zeros, so the adapted model starts equal to the base."""
    if rank < 1:
        raise ValueError(f"config key 'lora.rank' must be >= 1 for LoRA, got {rank}")
    tree: dict = {}
    shapes = adapter_shapes(param_shapes, rank, heads, embeddings)
    for i, (path, (a_shape, b_shape)) in enumerate(sorted(shapes.items())):
        bound = 1.0 / math.sqrt(a_shape[-2])
        a = jax.random.uniform(jax.random.fold_in(rng, i), a_shape, jnp.float32, -bound, bound)
        _set(tree, path, {"a": a, "b": jnp.zeros(b_shape, jnp.float32)})
    return tree


def delta(adapter: Mapping, kernel_shape, scaling: float) -> jax.Array:
    """``scaling * a @ b`` reshaped to the kernel's shape."""
    a, b = adapter["a"], adapter["b"]
    d = jnp.einsum("...ir,...ro->...io", a, b) * scaling
    return d.reshape(kernel_shape)


def merge(params: Mapping, lora: Mapping, scaling: float) -> dict:
    """``params`` with every adapter added to its kernel (pure; usable inside jit)."""
    if not lora:
        return params
    out = _copy(params)
    for path, adapter in _adapters(lora):
        kernel = _get(params, path)
        _set(out, path, kernel + delta(adapter, kernel.shape, scaling).astype(kernel.dtype))
    return out


def _copy(tree):
    return {k: _copy(v) if isinstance(v, Mapping) else v for k, v in tree.items()}


def _adapters(lora: Mapping, prefix=()):
    """(path of the adapted kernel, {'a', 'b'}) pairs of an adapter tree."""
    for name, value in lora.items():
        if isinstance(value, Mapping) and set(value) == {"a", "b"}:
            yield prefix + (name,), value
        elif isinstance(value, Mapping):
            yield from _adapters(value, prefix + (name,))


def num_lora_params(lora: Mapping) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(lora)))


# ----------------------------------------------------------------------------- Kyutai's files


def kyutai_lora_deltas(state: Mapping[str, Any], scaling: float) -> dict[str, np.ndarray]:
    """moshi-finetune's LoRA file (``{name}.lora_A.weight [r, in]``, ``{name}.lora_B.weight
    [out, r]``) -> ``{name + '.weight': scaling * B @ A}``, the additions to Kyutai's own
    weights. A key without its pair, or any other key, raises naming it."""
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in state.items():
        for part in ("lora_A", "lora_B"):
            suffix = f".{part}.weight"
            if key.endswith(suffix):
                pairs.setdefault(key[:-len(suffix)], {})[part] = np.asarray(value, np.float32)
                break
        else:
            if key.endswith(".frozen_W.weight"):
                continue  # a full LoRA model's base weights: the base comes from --weights
            raise ValueError(f"LoRA file key {key!r} is not a lora_A / lora_B weight")
    out = {}
    for name, pair in sorted(pairs.items()):
        if set(pair) != {"lora_A", "lora_B"}:
            missing = ({"lora_A", "lora_B"} - set(pair)).pop()
            raise ValueError(f"LoRA file has no {name}.{missing}.weight for {name}")
        A, B = pair["lora_A"], pair["lora_B"]
        if A.shape[0] != B.shape[1]:
            raise ValueError(f"LoRA {name}: lora_A {A.shape} and lora_B {B.shape} ranks differ")
        out[name + ".weight"] = scaling * (B @ A)
    return out


def _block_names(stack: str, cfg, i: int, s: int) -> dict[str, str]:
    """Kyutai's linear names of block ``i``'s projections (weight set ``s``)."""
    p = f"{stack}.layers.{i}."
    g = f"{p}gating.{s}." if cfg.weights_per_step else f"{p}gating."
    return {"qkv_kernel": f"{p}self_attn.in_projs.{s}", "out_kernel/attn":
            f"{p}self_attn.out_projs.{s}", "in_kernel": g + "linear_in",
            "out_kernel/mlp": g + "linear_out"}


def to_kyutai_lora(lora: Mapping, config) -> dict[str, np.ndarray]:
    """Our adapters -> moshi-finetune's LoRA file (``{linear}.lora_A.weight [r, in]``,
    ``{linear}.lora_B.weight [out, r]``), which Kyutai's loader and ``import-moshi --lora``
    read. Embedding adapters have no Kyutai counterpart and are refused."""
    out: dict[str, np.ndarray] = {}

    def put(name, a, b):
        out[f"{name}.lora_A.weight"] = np.ascontiguousarray(np.asarray(a, np.float32).T)
        out[f"{name}.lora_B.weight"] = np.ascontiguousarray(np.asarray(b, np.float32).T)

    for path, adapter in _adapters(lora):
        a, b = np.asarray(adapter["a"]), np.asarray(adapter["b"])
        if path[0] in _EMBEDDINGS:
            raise ValueError(f"the adapter of {path[0]} (lora.embeddings) has no place in "
                             "Kyutai's LoRA layout, which adapts linear layers only")
        if len(path) == 1:  # depformer_in / text_linear / linears
            if path[0] == "text_linear":
                put("text_linear", a, b)
            else:
                for j in range(a.shape[0]):
                    put(f"{path[0]}.{j}", a[j], b[j])
            continue
        stack = path[0]
        cfg = config.temporal_config() if stack == "transformer" else config.depformer_config()
        leaf = path[-1] if path[-1] != "out_kernel" else f"out_kernel/{path[-2]}"
        if cfg.scan_layers:  # [layers, (sets,) ...]
            layers = range(a.shape[0])
            pick = lambda x, i: x[i]
        else:
            layers = [int(path[1].split("_")[-1])]
            pick = lambda x, i: x
        for i in layers:
            ai, bi = pick(a, i), pick(b, i)
            sets = range(ai.shape[0]) if cfg.weights_per_step else [None]
            for s in sets:
                name = _block_names(stack, cfg, i, s or 0)[leaf]
                put(name, ai if s is None else ai[s], bi if s is None else bi[s])
    return out
