"""The package's one transformer: config, attention, MLP, block, stack (Flax Linen).

Every transformer of the package is this module with options: the GPT LM
(:mod:`audiolm_jax.lm.transformer`), the depth LM's temporal and depth stacks
(:mod:`audiolm_jax.lm.depth`) and Mimi's encoder/decoder transformers
(:mod:`audiolm_jax.codec.mimi.networks`). A block, in the order data flows::

    x [B, T, W]
      -> norm ln_1 (LayerNorm or RMSNorm, float32 statistics)
      -> attention: qkv projection, rotary embedding (none | half | interleaved), causal
         softmax attention (optionally over a sliding ``window``), output projection
      -> * attn_scale (layer scale, optional)  -> + x
      -> norm ln_2 -> MLP (GELU, exact GELU, or SiLU-gated) -> * mlp_scale -> + x

Parameter tree of one block (``b``: only with ``bias``; ``S``: the per-step axis, only with
``weights_per_step``)::

    ln_1/scale [W], ln_1/bias(b) [W]              ('embed',)
    attn/qkv_kernel [S?, W, 3, H, D]              ('steps'?, 'embed', None, 'heads', 'kv')
    attn/qkv_bias(b) [S?, 3, H, D]
    attn/out_kernel [S?, H, D, W]                 ('steps'?, 'heads', 'kv', 'embed')
    attn/out_bias(b) [S?, W]
    ln_2/...
    mlp/in_kernel  [S?, W, M]  or gated [S?, W, 2, M]   ('embed', (None,) 'mlp')
    mlp/in_bias(b), mlp/out_kernel [S?, M, W], mlp/out_bias(b)
    attn_scale [W], mlp_scale [W]                 (layer scale only)

Per-step weights (Moshi's depth transformer): the block at sequence position p uses weight
set ``schedule[p]`` (default ``p``), so a short sequence of a fixed length (the levels of
a frame) has projections of its own per position, optionally shared on a schedule.

KV cache, one per layer, ``{'k', 'v'}`` of ``[B * H, S, D]`` rows: a full-length cache
(``window == 0``) or a ring of the last ``window`` positions (``window > 0``); see
:mod:`audiolm_jax.layers.attention`. Decoding is a pure function
``(x, positions, cache, index) -> (y, cache)``.

Weights are float32; ``dtype`` is the compute dtype. Every weight carries logical axis names
and activations are constrained to names of their own (``activation_batch``, ...).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from audiolm_jax.layers import attention as attention_lib
from audiolm_jax.layers.params import lecun, normal, param
from audiolm_jax.layers.rotary import CONVENTIONS as ROPE_CONVENTIONS, apply_rope
from audiolm_jax.layers.streaming import carry

Dtype = Any
LayerCache = dict  # {'k': [B * H, S, D], 'v': same}

ACTIVATION = ("activation_batch", "activation_length", "activation_embed")
ACTIVATION_HEADS = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
ACTIVATION_MLP = ("activation_batch", "activation_length", "activation_mlp")
CACHE_AXES = ("batch_heads", "length", "kv")  # a layer's k or v rows [B * H, S, D]

NORMS = ("layer", "rms")
# What a rematerialised block keeps from its forward pass (MaxText's remat_policy names).
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # Keep the attention context, the residual stream after attention and the MLP's hidden
    # pre-activation (6 x width per position and layer); recompute the norms, the qkv
    # projection and the attention itself: most of the memory saving of 'full' for about a
    # quarter of its recomputation.
    "attention_mlp": jax.checkpoint_policies.save_only_these_names(
        "attention_context", "attention_residual", "mlp_hidden"),
}
MLPS = ("gelu_tanh", "gelu", "silu_gated")
INITS = ("gpt2", "lecun")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerConfig:
    """Options of the shared transformer stack (defaults: a GPT-2 block)."""

    num_layers: int
    num_heads: int
    width: int
    mlp: str = "gelu_tanh"  # 'gelu_tanh' (GPT-2) | 'gelu' (exact erf) | 'silu_gated'
    mlp_ratio: float = 4  # hidden = ratio * width; gated: 2 * ratio * width / 3 (Moshi)
    mlp_hidden: int = 0  # an explicit hidden width instead (0: from mlp_ratio)
    norm: str = "layer"  # 'layer' | 'rms'
    norm_eps: float = 1e-5
    # LayerNorm variance as E[x^2] - E[x]^2 in one pass (flax's default, the GPT's) or as
    # E[(x - mean)^2] in two (Mimi: what its reference computes). RMSNorm ignores it.
    norm_fast_variance: bool = True
    bias: bool = True  # biases of the projections
    norm_bias: Optional[bool] = None  # LayerNorm bias (None: same as ``bias``)
    rope: str = "none"  # 'none' | 'half' | 'interleaved'
    rope_base: float = 10000.0
    layer_scale: Optional[float] = None  # initial value of per-channel residual scales
    window: int = 0  # > 0: attend to the last ``window`` positions only; ring KV cache
    attention: str = "blocked"  # 'xla' | 'blocked' | 'dot_product' | 'splash' (attention.py)
    attention_block: int = 128
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    # Rematerialisation of each block in the backward pass: 'none', 'full' (keep only the
    # block inputs), 'dots_saveable' (keep every matmul output), 'minimal' (keep the weight
    # matmuls' outputs, recompute attention); True / False read as 'full' / 'none'.
    remat: Any = "none"
    # One scanned block with a leading 'layers' axis on every weight (compiles once whatever
    # the depth) instead of num_layers blocks named blocks_i.
    scan_layers: bool = False
    init: str = "gpt2"  # 'gpt2': N(0, 0.02), residual outputs / sqrt(2 L) | 'lecun'
    weights_per_step: int = 0  # > 0: this many weight sets, one per sequence position
    weights_per_step_schedule: tuple = ()  # position -> weight set (default: identity)

    def __post_init__(self):
        def check(ok, key, value, want):
            if not ok:
                raise ValueError(f"transformer {key} must be {want}, got {value!r}")

        if isinstance(self.remat, bool):
            object.__setattr__(self, "remat", "full" if self.remat else "none")
        check(self.remat in REMAT_POLICIES, "remat", self.remat, f"one of {tuple(REMAT_POLICIES)}")

        for key in ("num_layers", "num_heads", "width"):
            check(int(getattr(self, key)) >= (0 if key == "num_layers" else 1), key,
                  getattr(self, key), ">= 1")
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        check(self.mlp in MLPS, "mlp", self.mlp, f"one of {MLPS}")
        check(self.norm in NORMS, "norm", self.norm, f"one of {NORMS}")
        check(self.rope in ROPE_CONVENTIONS, "rope", self.rope, f"one of {ROPE_CONVENTIONS}")
        if self.rope != "none" and self.head_dim % 2:
            raise ValueError(f"rope needs an even head_dim, got {self.head_dim}")
        check(self.attention in attention_lib.KINDS, "attention", self.attention,
              f"one of {attention_lib.KINDS}")
        check(self.init in INITS, "init", self.init, f"one of {INITS}")
        check(self.window >= 0, "window", self.window, ">= 0")
        check(self.mlp_width >= 1, "mlp_hidden", self.mlp_hidden, "a positive width")
        if self.weights_per_step_schedule:
            check(self.weights_per_step > 0, "weights_per_step", self.weights_per_step,
                  "> 0 when a schedule is given")
            check(all(0 <= s < self.weights_per_step for s in self.weights_per_step_schedule),
                  "weights_per_step_schedule", self.weights_per_step_schedule,
                  f"weight-set ids in [0, {self.weights_per_step})")

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def mlp_width(self) -> int:
        if self.mlp_hidden:
            return int(self.mlp_hidden)
        if self.mlp == "silu_gated":
            return int(2 * self.mlp_ratio * self.width / 3)
        return int(self.mlp_ratio * self.width)

    @property
    def has_norm_bias(self) -> bool:
        return self.bias if self.norm_bias is None else bool(self.norm_bias)

    @property
    def num_steps(self) -> int:
        """Sequence positions with weights of their own (0: weights shared by all)."""
        if not self.weights_per_step:
            return 0
        return len(self.weights_per_step_schedule) or self.weights_per_step


def stack_config(cfg: TransformerConfig) -> TransformerConfig:
    """The plain :class:`TransformerConfig` fields of ``cfg`` (which may be a subclass)."""
    names = [f.name for f in dataclasses.fields(TransformerConfig)]
    return TransformerConfig(**{n: getattr(cfg, n) for n in names})


# ----------------------------------------------------------------------------- pieces


class RMSNorm(nn.Module):
    """``x / rms(x) * scale`` with float32 statistics (Moshi's ``rms_norm_f32``)."""

    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = param(self, "scale", (x.shape[-1],), ("embed",), nn.initializers.ones)
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + self.epsilon)
        return (y * scale).astype(self.dtype)


def make_norm(cfg: TransformerConfig, name: Optional[str] = None) -> nn.Module:
    if cfg.norm == "rms":
        return RMSNorm(epsilon=cfg.norm_eps, dtype=cfg.dtype, name=name)
    return nn.LayerNorm(
        epsilon=cfg.norm_eps, use_bias=cfg.has_norm_bias,
        use_fast_variance=cfg.norm_fast_variance,
        dtype=cfg.dtype, param_dtype=jnp.float32, name=name,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))


def _init(cfg: TransformerConfig, fan_in_axes, out_axes, residual: bool = False):
    """The kernel initialiser of one projection (axes counted without the per-step axis)."""
    if cfg.init == "gpt2":
        return normal(0.02 / math.sqrt(2 * cfg.num_layers) if residual else 0.02)
    if cfg.weights_per_step:
        shift = lambda axes: tuple(a + 1 for a in axes)
        return lecun(shift(fan_in_axes), shift(out_axes), batch_axis=(0,))
    return lecun(fan_in_axes, out_axes)


class _Projections(nn.Module):
    """Base of the attention and MLP: per-step weights and the shared projection rule."""

    config: TransformerConfig

    def weight(self, name, shape, names, init):
        cfg = self.config
        if cfg.weights_per_step:
            return param(self, name, (cfg.weights_per_step,) + tuple(shape), ("steps",) + names,
                         init)
        return param(self, name, shape, names, init)

    def project(self, spec: str, x, w, positions):
        """``einsum(spec, x, w)`` with x ``[B, T, ...]``; per-step weights ``[S, ...]`` are
        picked for each of the T positions (``positions [B, T]``, the same in every row)."""
        cfg = self.config
        w = w.astype(cfg.dtype)
        if not cfg.weights_per_step:
            return jnp.einsum(spec, x, w)
        steps = positions[0]
        if cfg.weights_per_step_schedule:
            steps = jnp.asarray(cfg.weights_per_step_schedule, jnp.int32)[steps]
        lhs, rest = spec.split(",")
        rhs, out = rest.split("->")
        return jnp.einsum(f"{lhs},t{rhs}->{out}", x, w[steps])

    def bias(self, name, shape, names, positions):
        """A zero-initialised bias in the compute dtype; per-step biases are picked per
        position ([T, ...], broadcast over the batch)."""
        cfg = self.config
        b = self.weight(name, shape, names, nn.initializers.zeros).astype(cfg.dtype)
        if not cfg.weights_per_step:
            return b
        steps = positions[0]
        if cfg.weights_per_step_schedule:
            steps = jnp.asarray(cfg.weights_per_step_schedule, jnp.int32)[steps]
        return b[steps]


class Attention(_Projections):
    """Causal self-attention; see the module docstring for its parameters."""

    @nn.compact
    def __call__(self, x, positions, cache: Optional[LayerCache] = None, index=None,
                 train: bool = False):
        """x [B, T, W] -> (y [B, T, W], new layer cache or None)."""
        cfg = self.config
        H, D, W = cfg.num_heads, cfg.head_dim, cfg.width
        qkv = self.project("btw,wshd->btshd", x, self.weight(
            "qkv_kernel", (W, 3, H, D), ("embed", None, "heads", "kv"),
            _init(cfg, (0,), (1, 2, 3))), positions)
        if cfg.bias:
            qkv = qkv + self.bias("qkv_bias", (3, H, D), (None, "heads", "kv"), positions)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # each [B, T, H, D]
        q = apply_rope(q, positions, cfg.rope_base, cfg.rope)
        k = apply_rope(k, positions, cfg.rope_base, cfg.rope)
        q, k, v = (nn.with_logical_constraint(a, ACTIVATION_HEADS) for a in (q, k, v))

        probs_fn = None
        if cfg.dropout and train:
            probs_fn = lambda p: nn.Dropout(cfg.dropout)(p, deterministic=False)
        new_cache = None
        if cache is None:
            y = attention_lib.causal_attention(q, k, v, window=cfg.window, kind=cfg.attention,
                                               block=cfg.attention_block, probs_fn=probs_fn)
            y = checkpoint_name(y, "attention_context")
        else:
            cache = {n: nn.with_logical_constraint(c, CACHE_AXES) for n, c in cache.items()}
            attend = (attention_lib.ring_cache_attention if cfg.window
                      else attention_lib.full_cache_attention)
            y, new_cache = attend(q, k, v, cache, jnp.asarray(index, jnp.int32),
                                  window=cfg.window, probs_fn=probs_fn)
            new_cache = {n: nn.with_logical_constraint(c, CACHE_AXES)
                         for n, c in new_cache.items()}
        y = nn.with_logical_constraint(y, ACTIVATION_HEADS)
        out = self.weight("out_kernel", (H, D, W), ("heads", "kv", "embed"),
                          _init(cfg, (0, 1), (2,), residual=True))
        if cfg.weights_per_step:
            y = self.project("bthd,hdw->btw", y, out, positions)
        else:  # one [B, T, H*D] x [H*D, W] matmul: the 3-D einsum costs layout copies
            B, T = y.shape[:2]
            y = y.reshape(B, T, H * D) @ out.reshape(H * D, W).astype(cfg.dtype)
        if cfg.bias:
            y = y + self.bias("out_bias", (W,), ("embed",), positions)
        return nn.Dropout(cfg.dropout)(y, deterministic=not train), new_cache


class MLP(_Projections):
    @nn.compact
    def __call__(self, x, positions, train: bool = False):
        cfg = self.config
        W, M = cfg.width, cfg.mlp_width
        if cfg.mlp == "silu_gated":
            w_in = self.weight("in_kernel", (W, 2, M), ("embed", None, "mlp"),
                               _init(cfg, (0,), (1, 2)))
            h = self.project("btw,wgm->btgm", x, w_in, positions)
            if cfg.bias:
                h = h + self.bias("in_bias", (2, M), (None, "mlp"), positions)
            h = checkpoint_name(h, "mlp_hidden")
            h = nn.silu(h[:, :, 0]) * h[:, :, 1]
        else:
            w_in = self.weight("in_kernel", (W, M), ("embed", "mlp"), _init(cfg, (0,), (1,)))
            h = self.project("btw,wm->btm", x, w_in, positions)
            if cfg.bias:
                h = h + self.bias("in_bias", (M,), ("mlp",), positions)
            h = nn.gelu(checkpoint_name(h, "mlp_hidden"), approximate=cfg.mlp == "gelu_tanh")
        h = nn.with_logical_constraint(h, ACTIVATION_MLP)
        w_out = self.weight("out_kernel", (M, W), ("mlp", "embed"),
                            _init(cfg, (0,), (1,), residual=True))
        y = self.project("btm,mw->btw", h, w_out, positions)
        if cfg.bias:
            y = y + self.bias("out_bias", (W,), ("embed",), positions)
        return nn.Dropout(cfg.dropout)(y, deterministic=not train)


class Block(nn.Module):
    """Pre-norm block. Arguments are positional so ``nn.remat`` can mark ``train``
    (argument 5, counting ``self``) static."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, x, positions, cache: Optional[LayerCache] = None, index=None,
                 train: bool = False):
        cfg = self.config
        y, new_cache = Attention(cfg, name="attn")(make_norm(cfg, "ln_1")(x), positions, cache,
                                                   index, train)
        x = checkpoint_name(x + self._scale("attn_scale", y), "attention_residual")
        x = x + self._scale("mlp_scale", MLP(cfg, name="mlp")(make_norm(cfg, "ln_2")(x),
                                                              positions, train))
        return nn.with_logical_constraint(x, ACTIVATION), new_cache

    def _scale(self, name, y):
        if self.config.layer_scale is None:
            return y
        s = param(self, name, (self.config.width,), ("embed",),
                  nn.initializers.constant(self.config.layer_scale))
        return y * s.astype(y.dtype)


def make_blocks(cfg: TransformerConfig, count: Optional[int] = None, prefix: str = "blocks"):
    """``count`` (default ``num_layers``) blocks for a module's ``setup``, rematerialised by
    ``cfg.remat``: a list of blocks named ``{prefix}_{i}``, or with ``cfg.scan_layers`` one
    scanned block named ``prefix`` whose weights have a leading 'layers' axis. Run them with
    :func:`run_blocks`."""
    n = cfg.num_layers if count is None else count
    block = Block
    if cfg.remat != "none":
        # Inside a scan, common-subexpression elimination cannot undo the remat: let XLA
        # optimise across it (MaxText does the same).
        block = nn.remat(Block, static_argnums=(5,), policy=REMAT_POLICIES[cfg.remat],
                         prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
        scanned = nn.scan(block, variable_axes={"params": 0},
                          split_rngs={"params": True, "dropout": True},
                          in_axes=(nn.broadcast, 0, nn.broadcast, nn.broadcast), length=n,
                          metadata_params={nn.PARTITION_NAME: "layers"})
        return scanned(cfg, name=prefix)
    return [block(cfg, name=f"{prefix}_{i}") for i in range(n)]


def run_blocks(blocks, x, positions, cache=None, index=None, train: bool = False):
    """``x`` through the blocks of :func:`make_blocks` -> (x, new cache). ``cache``: None
    (whole-sequence mode) or ``{'k', 'v'}``: a tuple of one array per layer, or for scanned
    blocks one array with a leading layer axis."""
    if not isinstance(blocks, (list, tuple)):  # scanned: the cache's layer axis is scanned
        return blocks(x, positions, cache, index, train)
    new_k, new_v = [], []
    for i, block in enumerate(blocks):
        layer = None if cache is None else {"k": cache["k"][i], "v": cache["v"][i]}
        x, layer = block(x, positions, layer, index, train)
        if layer is not None:
            new_k.append(layer["k"])
            new_v.append(layer["v"])
    return x, (None if cache is None else {"k": tuple(new_k), "v": tuple(new_v)})


def init_cache(cfg: TransformerConfig, batch_size: int, max_length: Optional[int] = None,
               dtype: Optional[Dtype] = None, num_layers: Optional[int] = None) -> dict:
    """An empty KV cache ``{'k', 'v'}``, each a tuple of one ``[batch * heads, S, head_dim]``
    array per layer (row ``b * heads + h``), or with ``scan_layers`` one ``[layers, batch *
    heads, S, head_dim]`` array. ``S`` is ``window`` for a windowed (ring) cache, else
    ``max_length``."""
    length = cfg.window if cfg.window else max_length
    if length is None:
        raise ValueError("a full-length KV cache needs max_length")
    shape = (batch_size * cfg.num_heads, int(length), cfg.head_dim)
    dtype = cfg.dtype if dtype is None else dtype
    n = cfg.num_layers if num_layers is None else num_layers
    if cfg.scan_layers:
        return {name: jnp.zeros((n,) + shape, dtype) for name in ("k", "v")}
    return {name: tuple(jnp.zeros(shape, dtype) for _ in range(n)) for name in ("k", "v")}


class TransformerStack(nn.Module):
    """``num_layers`` blocks, optionally followed by a final norm (``final_norm``)."""

    config: TransformerConfig
    final_norm: bool = False

    def setup(self):
        self.blocks = make_blocks(self.config)
        if self.final_norm:
            self.ln_f = make_norm(self.config)

    def _out(self, x):
        return self.ln_f(x) if self.final_norm else x

    def __call__(self, x, positions=None, train: bool = False):
        """x [B, T, W] at ``positions`` (default 0..T-1) -> [B, T, W]."""
        if positions is None:
            positions = jnp.arange(x.shape[1], dtype=jnp.int32)
        positions = jnp.broadcast_to(positions, x.shape[:2])
        x, _ = run_blocks(self.blocks, nn.with_logical_constraint(x, ACTIVATION), positions,
                          train=train)
        return self._out(x)

    def decode(self, x, cache: dict, index):
        """A chunk x [B, T, W] at positions ``index .. index + T - 1`` -> (y, new cache).
        ``index`` may be one position per row (``[B]``, one-position chunks with a ring
        cache): rows are then streams that started at different steps."""
        index = jnp.asarray(index, jnp.int32)
        if index.ndim == 1 and (x.shape[1] != 1 or not self.config.window):
            raise ValueError("a position per row needs one-position chunks and a ring cache "
                             "(window > 0)")
        positions = jnp.broadcast_to(index[..., None] + jnp.arange(x.shape[1], dtype=jnp.int32),
                                     x.shape[:2])
        x, cache = run_blocks(self.blocks, x, positions, cache, index)
        return self._out(x), cache

    def stream(self, x, max_length: Optional[int] = None):
        """Streaming mode: the next chunk x [B, T, W] of a sequence -> y, through
        :meth:`decode` with the KV cache (``cache``) and the chunk's first position (``index``)
        carried in the ``streaming`` collection (:mod:`audiolm_jax.layers.streaming`).
        ``max_length`` sizes a full-length cache (``window == 0``)."""
        cache, set_cache = carry(self, "cache", lambda: self.init_cache(
            x.shape[0], max_length, dtype=x.dtype))
        index, set_index = carry(self, "index", lambda: jnp.zeros((), jnp.int32))
        y, new_cache = self.decode(x, cache, index)
        set_cache(new_cache)
        set_index(index + x.shape[1])
        return y

    def init_cache(self, batch_size: int, max_length: Optional[int] = None,
                   dtype: Optional[Dtype] = None) -> dict:
        return init_cache(self.config, batch_size, max_length, dtype)


def block_num_params(cfg: TransformerConfig) -> int:
    """Parameters of one block (equals the count of its tree)."""
    W, M, H, D = cfg.width, cfg.mlp_width, cfg.num_heads, cfg.head_dim
    b = 1 if cfg.bias else 0
    norm = W * (2 if cfg.norm == "layer" and cfg.has_norm_bias else 1)
    gate = 2 if cfg.mlp == "silu_gated" else 1
    projections = (W * 3 * H * D + b * 3 * H * D + H * D * W + b * W
                   + W * gate * M + b * gate * M + M * W + b * W)
    steps = max(1, cfg.weights_per_step)
    scales = 2 * W if cfg.layer_scale is not None else 0
    return 2 * norm + steps * projections + scales


def stack_layers(params: dict, num_layers: int, prefix: str = "blocks") -> dict:
    """An unscanned params tree (``{prefix}_{i}`` subtrees) -> the scanned one (``prefix``,
    every leaf with a leading layer axis); other entries are kept."""
    out = {k: v for k, v in params.items() if not k.startswith(f"{prefix}_")}
    layers = [params[f"{prefix}_{i}"] for i in range(num_layers)]
    out[prefix] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    return out


def unstack_layers(params: dict, prefix: str = "blocks") -> dict:
    """The inverse of :func:`stack_layers`."""
    out = {k: v for k, v in params.items() if k != prefix}
    n = jax.tree.leaves(params[prefix])[0].shape[0]
    for i in range(n):
        out[f"{prefix}_{i}"] = jax.tree.map(lambda x: x[i], params[prefix])
    return out


# ----------------------------------------------------------------------------- old trees

# Mimi's transformer before this module: layers_i/{attn/{q,k,v,o}, fc1, fc2, attn_norm,
# mlp_norm, attn_scale, mlp_scale}, heads flattened into q/k/v/o's [W, H*D] matrices.
_LEGACY_LAYER = re.compile(r"^(?P<pre>(?:.*\.)?)layers_(?P<i>\d+)\.(?P<rest>.+)$")
_LEGACY_NAMES = {"attn.o": "attn.out_kernel", "fc1": "mlp.in_kernel", "fc2": "mlp.out_kernel",
                 "attn_norm.scale": "ln_1.scale", "attn_norm.bias": "ln_1.bias",
                 "mlp_norm.scale": "ln_2.scale", "mlp_norm.bias": "ln_2.bias",
                 "attn_scale": "attn_scale", "mlp_scale": "mlp_scale"}


def legacy_renames(names) -> dict:
    """``{new dotted leaf name: (old names, ...)}`` for the leaves of old Mimi transformer
    layers among ``names`` (dotted leaf names of a params, state or weights tree). The fused
    ``qkv_kernel`` comes from the old ``q``, ``k``, ``v`` (stack them on axis 1, then reshape
    to ``[W, 3, H, D]``); ``out_kernel`` from ``o`` (reshape to ``[H, D, W]``). Empty when
    nothing is old."""
    names = set(names)
    out = {}
    for name in names:
        m = _LEGACY_LAYER.match(name)
        old = f"{m['pre']}layers_{m['i']}." if m else ""
        if not m or old + "fc1" not in names or old + "attn_norm.scale" not in names:
            continue
        new = f"{m['pre']}blocks_{m['i']}."
        if m["rest"] == "attn.q":
            out[new + "attn.qkv_kernel"] = tuple(old + f"attn.{n}" for n in "qkv")
        elif m["rest"] in _LEGACY_NAMES:
            out[new + _LEGACY_NAMES[m["rest"]]] = (name,)
    return out
