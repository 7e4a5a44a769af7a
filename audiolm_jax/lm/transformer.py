"""A GPT-2-family decoder-only transformer (Flax Linen), with a functional KV cache.

The model, in the order data flows through it::

    tokens [B, T]            (or [B, K, T] with ``num_levels=K`` codebook levels)
      -> token embedding     (K levels: the sum of K per-level embeddings, one table per level)
      -> + learned position embedding            (``positions='learned'``; RoPE adds none)
      -> dropout
      -> num_layers x Block:  x = x + Attention(LayerNorm(x))      (causal, RoPE optional)
                              x = x + MLP(LayerNorm(x))            (GELU, width*mlp_ratio)
      -> final LayerNorm
      -> LM head             (tied to the token embedding when ``tie_embeddings`` and K == 1,
                              else a linear map per level, no bias)
      -> logits float32 [B, T, vocab]            (or [B, K, T, vocab])

Weights are float32; ``config.dtype`` is the compute dtype (e.g. bfloat16). Softmax, LayerNorm
statistics and the logits are float32 whatever the compute dtype. Initialisation follows GPT-2:
normal(0.02) for every weight, zeros for biases, and the two projections that write into the
residual stream (attention output, MLP output) use normal(0.02 / sqrt(2 * num_layers)).

Every weight carries logical axis names (``nn.with_logical_partitioning``) and the residual
stream is constrained to ``('batch', 'length', 'embed')`` after each block, so the mesh rules
in :mod:`audiolm_jax.train.mesh` decide how the model is sharded.

Parameter tree (``B`` = bias, present only when ``config.bias``)::

    wte       [vocab, width]              ('vocab', 'embed')            K == 1
              [K, vocab, width]           ('levels', 'vocab', 'embed')  K > 1
    wpe       [context, width]            (None, 'embed')               learned positions only
    blocks_i  ln_1/scale, ln_1/bias(B)    ('embed',)
              attn/qkv_kernel [width, 3, heads, head_dim]  ('embed', None, 'heads', 'kv')
              attn/qkv_bias(B) [3, heads, head_dim]        (None, 'heads', 'kv')
              attn/out_kernel [heads, head_dim, width]     ('heads', 'kv', 'embed')
              attn/out_bias(B) [width]                     ('embed',)
              ln_2/...
              mlp/in_kernel [width, hidden] ('embed', 'mlp'),  mlp/in_bias(B) [hidden] ('mlp',)
              mlp/out_kernel [hidden, width] ('mlp', 'embed'), mlp/out_bias(B) [width] ('embed',)
    ln_f      scale, bias(B)              ('embed',)
    lm_head   [width, vocab]              ('embed', 'vocab')            untied, K == 1
              [K, width, vocab]           ('levels', 'embed', 'vocab')  K > 1
              (none with ``output_head=False``: ``features``/``decode_features`` return
              the final-normalised hidden states for another module to read)

KV-cache decoding is a pure function of (params, cache, tokens, index)::

    model = Transformer(cfg)
    cache = model.init_cache(batch_size, max_length)          # {'k', 'v'}: L x [B*H, S, D]
    logits, cache = model.apply({'params': params}, prompt, cache, 0,
                                method=Transformer.decode)     # prefill, P tokens at 0..P-1
    logits, cache = model.apply({'params': params}, next_tok, cache, P,
                                method=Transformer.decode)     # one step at slot P
    ...

The chunk's tokens occupy cache slots ``index .. index + T - 1`` (which are also their
positions); each query attends to every slot up to and including its own, so stale or empty
slots beyond the current length are masked. ``index`` may be a traced int32 scalar and every
shape is fixed, so the step can live inside ``jax.lax.scan`` / ``while_loop``. The caller keeps
``index + T <= max_length`` (``dynamic_update_slice`` would otherwise clamp the write).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
Cache = dict  # {'k': (one [batch * heads, max_length, head_dim] per layer), 'v': same}

# Logical names of the residual stream, the logits and the KV cache.
ACTIVATION_AXES = ("batch", "length", "embed")
CACHE_AXES = ("batch_heads", "length", "kv")  # each layer's k or v: batch-major [B*H, S, D]

_POSITIONS = ("learned", "rope")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    vocab_size: int
    num_layers: int
    num_heads: int
    width: int
    context: int  # the longest sequence (learned positions have this many rows)
    mlp_ratio: int = 4
    dropout: float = 0.0
    positions: str = "learned"  # 'learned' | 'rope'
    rope_base: float = 10000.0
    tie_embeddings: bool = True  # only applies when num_levels == 1
    dtype: Dtype = jnp.float32  # compute dtype; params are always float32
    remat: bool = False
    num_levels: int = 1
    bias: bool = True
    layer_norm_eps: float = 1e-5
    # False: no LM head, only ``features``/``decode_features`` (a trunk whose hidden states
    # another module reads, e.g. the temporal transformer of the depth LM).
    output_head: bool = True
    # Full-sequence attention in query blocks of this many positions (0: one T x T block).
    # Block i only scores keys 0..(i+1)*block-1, so the masked upper triangle is never
    # computed and each block's scores stay cache-sized: fewer FLOPs and far less memory
    # traffic in training. Used when T is a multiple of it and larger.
    attention_block: int = 128

    def __post_init__(self):
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.positions not in _POSITIONS:
            raise ValueError(f"positions must be one of {_POSITIONS}, got {self.positions!r}")
        if self.positions == "rope" and self.head_dim % 2:
            raise ValueError(f"rope needs an even head_dim, got {self.head_dim}")
        if self.num_levels < 1:
            raise ValueError(f"num_levels must be >= 1, got {self.num_levels}")

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def mlp_width(self) -> int:
        return int(self.mlp_ratio * self.width)

    @property
    def tied(self) -> bool:
        """Whether the LM head reuses the token embedding (one level only)."""
        return self.tie_embeddings and self.num_levels == 1 and self.output_head


# ----------------------------------------------------------------------------- helpers


def _param(module: nn.Module, name: str, shape: tuple[int, ...], names: tuple, init) -> jax.Array:
    """A float32 parameter whose box carries the logical axis names ``names``."""
    assert len(names) == len(shape), (name, shape, names)
    return module.param(name, nn.with_logical_partitioning(init, names), shape, jnp.float32)


def _normal(std: float):
    return nn.initializers.normal(stddev=std)


def _residual_std(cfg: TransformerConfig) -> float:
    """GPT-2: projections into the residual stream are scaled by 1/sqrt(2 * num_layers)."""
    return 0.02 / math.sqrt(2 * cfg.num_layers)


def _layer_norm(cfg: TransformerConfig, **kw) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=cfg.layer_norm_eps, use_bias=cfg.bias, dtype=cfg.dtype, param_dtype=jnp.float32,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), **kw)


def apply_rope(x: jax.Array, positions: jax.Array, base: float) -> jax.Array:
    """Rotary position embedding (rotate-half form) of x [B, T, H, D] at positions [B, T]."""
    half = x.shape[-1] // 2
    freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)  # [D/2]
    angles = positions.astype(jnp.float32)[..., None] * freqs  # [B, T, D/2]
    cos = jnp.cos(angles)[:, :, None, :]  # broadcast over heads
    sin = jnp.sin(angles)[:, :, None, :]
    x1 = x[..., :half].astype(jnp.float32)
    x2 = x[..., half:].astype(jnp.float32)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


# ----------------------------------------------------------------------------- modules


# Decode-only copies of weights, made by with_decode_kernels; never initialised or trained,
# and only read when present.
QKV_PARTS = ("q_kernel", "k_kernel", "v_kernel")  # attention's qkv_kernel [W, 3, H, D]
MLP_IN_PARTS = ("in_kernel_0", "in_kernel_1")  # the MLP's in_kernel [W, M], column halves
# kernel -> its copy stored [outputs, inputs]: attention's qkv_kernel, the MLP's two kernels
TRANSPOSED = {"qkv_kernel": "qkv_kernel_t", "in_kernel": "in_kernel_t",
              "out_kernel": "out_kernel_t"}
# the single-level LM head (tied or not) as [W, V] / as [V, W]
HEAD_COPIES = ("head_kernel", "head_kernel_t")
DECODE_LAYOUTS = ("split", "transposed")


def with_decode_kernels(params, layout: str = "split", config: "TransformerConfig | None" = None):
    """``params`` plus decode-only copies of the big kernels, laid out for XLA:CPU's
    matrix-vector kernels; the model reads them when present. Results match: each output is
    the same dot product.

    * ``"split"`` (samplers at batch 2 and up): attention's ``qkv_kernel`` [W, 3, H, D] as
      ``q_kernel``/``k_kernel``/``v_kernel`` [W, H, D], the MLP's ``in_kernel`` [W, M] as two
      column halves, and (given ``config``) a tied LM head as ``head_kernel`` [W, V]. At 2-8
      rows XLA:CPU reads the narrower weights, and the head as [W, V], faster: batch-8
      sampling of the benchmark GPT +4-8% (the head copy +1.4% of it), batch 2 +5%; at
      batch 1 this layout is 4-7% slower.
    * ``"transposed"`` (batch 1): ``qkv_kernel`` and the MLP's two kernels stored [outputs,
      inputs] (``*_t``), and (given ``config``) an untied LM head as ``head_kernel_t``
      [V, W], so each output is a dot over one contiguous row: +5% at batch 1, far slower
      at 2-8 rows.

    Called once per generate call, outside the decoding loop: made inside it, XLA copies
    the weights at every step, which costs more than it gains (BUILD_NOTES.md, "Speed,
    session 8" and "session 9"). The copies double the weights' memory while sampling.
    """
    if layout not in DECODE_LAYOUTS:
        raise ValueError(f"layout must be one of {DECODE_LAYOUTS}, got {layout!r}")

    def walk(tree):
        if not hasattr(tree, "items"):
            return tree
        out = {k: walk(v) for k, v in tree.items()}
        qkv = nn.meta.unbox(out.get("qkv_kernel"))  # an attention module's params
        w_in = nn.meta.unbox(out.get("in_kernel"))  # an MLP's
        if layout == "transposed":
            if getattr(qkv, "ndim", 0) == 4:
                out.setdefault(TRANSPOSED["qkv_kernel"], qkv.reshape(qkv.shape[0], -1).T)
            if getattr(w_in, "ndim", 0) == 2:
                out.setdefault(TRANSPOSED["in_kernel"], w_in.T)
                out.setdefault(TRANSPOSED["out_kernel"], nn.meta.unbox(out["out_kernel"]).T)
        else:
            if getattr(qkv, "ndim", 0) == 4:
                for j, name in enumerate(QKV_PARTS):
                    out.setdefault(name, qkv[:, j])
            if getattr(w_in, "ndim", 0) == 2:
                half = w_in.shape[1] // 2
                for name, part in zip(MLP_IN_PARTS, (w_in[:, :half], w_in[:, half:])):
                    out.setdefault(name, part)
        return out

    out = walk(params)
    if config is not None and config.output_head and config.num_levels == 1:
        # The head is stored [V, W] when tied (the embedding) and [W, V] otherwise; copy it
        # only where the layout wants the other one.
        top = out["params"] if "params" in out else out  # a bare tree or {"params": ...}
        if layout == "split" and config.tied:
            top.setdefault(HEAD_COPIES[0], nn.meta.unbox(top["wte"]).T)
        elif layout == "transposed" and not config.tied:
            top.setdefault(HEAD_COPIES[1], nn.meta.unbox(top["lm_head"]).T)
    return out


class CausalSelfAttention(nn.Module):
    config: TransformerConfig

    @nn.compact
    def __call__(self, x, positions, kv_cache=None, index=None, train: bool = False):
        """x [B, T, W] -> (y [B, T, W], updated (k, v) layer cache or None).

        Without a cache, attention is causal over the T positions of x. With a layer cache
        (k, v) of shape [B, S, H, D], this chunk's keys/values are written at slots
        index..index+T-1 and each query attends to slots <= its own.
        """
        cfg = self.config
        H, D, W = cfg.num_heads, cfg.head_dim, cfg.width
        qkv_w = _param(self, "qkv_kernel", (W, 3, H, D), ("embed", None, "heads", "kv"),
                       _normal(0.02))
        qkv_b = (_param(self, "qkv_bias", (3, H, D), (None, "heads", "kv"),
                        nn.initializers.zeros).astype(cfg.dtype) if cfg.bias else None)
        if self.has_variable("params", QKV_PARTS[0]):  # with_decode_kernels(params)
            # Three [W, H*D] products instead of one [W, 3*H*D]: faster at a few rows.
            q, k, v = (jnp.einsum("btw,whd->bthd", x,
                                  self.get_variable("params", name).astype(cfg.dtype))
                       + (0 if qkv_b is None else qkv_b[j])
                       for j, name in enumerate(QKV_PARTS))
        else:
            if self.has_variable("params", TRANSPOSED["qkv_kernel"]):  # with_decode_kernels
                w_t = self.get_variable("params", TRANSPOSED["qkv_kernel"]).astype(cfg.dtype)
                qkv = jnp.einsum("btw,nw->btn", x, w_t).reshape(x.shape[:2] + (3, H, D))
            else:
                qkv = jnp.einsum("btw,wshd->btshd", x, qkv_w.astype(cfg.dtype))
            if qkv_b is not None:
                qkv = qkv + qkv_b
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # each [B, T, H, D]
        if cfg.positions == "rope":
            q = apply_rope(q, positions, cfg.rope_base)
            k = apply_rope(k, positions, cfg.rope_base)

        T = x.shape[1]
        block = cfg.attention_block
        if kv_cache is None and block and T > block and T % block == 0:
            y = self._blocked_causal(q, k, v, block, train)
            return self._output(y, train), None
        if kv_cache is None:
            mask = jnp.tril(jnp.ones((T, T), dtype=bool))
            new_cache = None
            scores = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32)
            attend = lambda probs: jnp.einsum("bhts,bshd->bthd", probs, v)
        else:
            # One array per layer, [B*H, S, D], written in place with one dynamic_update_slice
            # and read by the attention dots as is. Each of these layout choices removed a
            # whole-cache copy per layer and token (BUILD_NOTES.md, "LM speed"): a stacked
            # [L, ...] cache made XLA copy the layer's slice out; an [.., S, H, D] layout, or
            # the query as the score dot's left operand, made it transpose the keys; and a 4-D
            # [B, H, S, D] cache reached the dots through a reshape, into which XLA duplicated
            # the update, so two updates of one buffer forced two copies of it per step.
            k_all, v_all, layer = kv_cache
            k_all, v_all = list(k_all), list(v_all)
            B = x.shape[0]
            rows = lambda a: a.transpose(0, 2, 1, 3).reshape(B * H, T, D)  # [B,T,H,D] -> [BH,T,D]
            k_all[layer] = jax.lax.dynamic_update_slice(
                k_all[layer], rows(k).astype(k_all[layer].dtype), (0, index, 0))
            v_all[layer] = jax.lax.dynamic_update_slice(
                v_all[layer], rows(v).astype(v_all[layer].dtype), (0, index, 0))
            new_cache = (k_all, v_all)
            k_c, v_c = k_all[layer].astype(cfg.dtype), v_all[layer].astype(cfg.dtype)
            S = k_c.shape[1]
            mask = jnp.arange(S)[None, :] <= (index + jnp.arange(T))[:, None]  # [T, S]
            scores = jnp.einsum("nsd,ntd->nst", k_c, rows(q), preferred_element_type=jnp.float32)
            scores = scores.reshape(B, H, S, T).swapaxes(-1, -2)  # [B, H, T, S]
            attend = lambda probs: jnp.einsum(
                "nts,nsd->ntd", probs.reshape(B * H, T, S), v_c).reshape(
                    B, H, T, D).transpose(0, 2, 1, 3)

        scores = scores / math.sqrt(D)
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1)
        probs = nn.Dropout(cfg.dropout)(probs, deterministic=not train)
        return self._output(attend(probs.astype(cfg.dtype)), train), new_cache

    def _blocked_causal(self, q, k, v, block: int, train: bool):
        """Causal attention of q/k/v [B, T, H, D] in query blocks (see attention_block)."""
        cfg = self.config
        q = q * jnp.asarray(1.0 / math.sqrt(cfg.head_dim), q.dtype)
        # Heads-major once, so each block's slices are plain row ranges per (batch, head)
        # instead of a transposing copy per block.
        q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))  # [B, H, T, D]
        diagonal = np.tril(np.ones((block, block), bool))
        outs = []
        for i in range(q.shape[2] // block):
            lo, hi = i * block, (i + 1) * block
            scores = jnp.einsum("bhtd,bhsd->bhts", q[:, :, lo:hi], k[:, :, :hi],
                                preferred_element_type=jnp.float32)
            mask = np.concatenate([np.ones((block, lo), bool), diagonal], axis=1)
            scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
            probs = jax.nn.softmax(scores, axis=-1)
            probs = nn.Dropout(cfg.dropout)(probs, deterministic=not train)
            outs.append(jnp.einsum("bhts,bhsd->bhtd", probs.astype(cfg.dtype), v[:, :, :hi]))
        return jnp.concatenate(outs, axis=2).transpose(0, 2, 1, 3)

    def _output(self, y, train: bool):
        """Attention output y [B, T, H, D] -> the residual branch [B, T, W]."""
        cfg = self.config
        H, D, W = cfg.num_heads, cfg.head_dim, cfg.width
        y = nn.with_logical_constraint(y, ("batch", "length", "heads", "kv"))

        out_w = _param(self, "out_kernel", (H, D, W), ("heads", "kv", "embed"),
                       _normal(_residual_std(cfg)))
        # As one [B, T, H*D] x [H*D, W] matmul: with the 3-D einsum, XLA re-laid the kernel
        # out (a copy) at every step of the sampling loop.
        B, T = y.shape[:2]
        y = y.reshape(B, T, H * D) @ out_w.reshape(H * D, W).astype(cfg.dtype)
        if cfg.bias:
            y = y + _param(self, "out_bias", (W,), ("embed",),
                           nn.initializers.zeros).astype(cfg.dtype)
        return nn.Dropout(cfg.dropout)(y, deterministic=not train)


class MLP(nn.Module):
    config: TransformerConfig

    @nn.compact
    def __call__(self, x, train: bool = False):
        cfg = self.config
        W, M = cfg.width, cfg.mlp_width
        in_w = _param(self, "in_kernel", (W, M), ("embed", "mlp"), _normal(0.02))
        if self.has_variable("params", TRANSPOSED["in_kernel"]):  # with_decode_kernels
            h = jnp.einsum("btw,mw->btm", x, self.get_variable(
                "params", TRANSPOSED["in_kernel"]).astype(cfg.dtype))
        elif self.has_variable("params", MLP_IN_PARTS[0]):  # with_decode_kernels(params)
            h = jnp.concatenate([x @ self.get_variable("params", name).astype(cfg.dtype)
                                 for name in MLP_IN_PARTS], axis=-1)
        else:
            h = x @ in_w.astype(cfg.dtype)
        if cfg.bias:
            h = h + _param(self, "in_bias", (M,), ("mlp",), nn.initializers.zeros).astype(cfg.dtype)
        h = nn.gelu(h, approximate=True)  # GPT-2's tanh approximation
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        out_w = _param(self, "out_kernel", (M, W), ("mlp", "embed"), _normal(_residual_std(cfg)))
        if self.has_variable("params", TRANSPOSED["out_kernel"]):  # with_decode_kernels
            y = jnp.einsum("btm,wm->btw", h, self.get_variable(
                "params", TRANSPOSED["out_kernel"]).astype(cfg.dtype))
        else:
            y = h @ out_w.astype(cfg.dtype)
        if cfg.bias:
            y = y + _param(self, "out_bias", (W,), ("embed",), nn.initializers.zeros).astype(cfg.dtype)
        return nn.Dropout(cfg.dropout)(y, deterministic=not train)


class Block(nn.Module):
    """Pre-norm transformer block. Arguments are positional so ``nn.remat`` can mark
    ``train`` (argument 5, counting ``self``) static."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, x, positions, kv_cache=None, index=None, train: bool = False):
        cfg = self.config
        y, new_cache = CausalSelfAttention(cfg, name="attn")(
            _layer_norm(cfg, name="ln_1")(x), positions, kv_cache, index, train)
        x = x + y
        x = x + MLP(cfg, name="mlp")(_layer_norm(cfg, name="ln_2")(x), train)
        x = nn.with_logical_constraint(x, ACTIVATION_AXES)
        return x, new_cache


class Transformer(nn.Module):
    """Decoder-only LM. ``__call__`` for full sequences, ``decode`` for KV-cached chunks."""

    config: TransformerConfig

    def setup(self):
        cfg = self.config
        K, V, W = cfg.num_levels, cfg.vocab_size, cfg.width
        if K == 1:
            self.wte = _param(self, "wte", (V, W), ("vocab", "embed"), _normal(0.02))
        else:
            self.wte = _param(self, "wte", (K, V, W), ("levels", "vocab", "embed"), _normal(0.02))
        if cfg.positions == "learned":
            self.wpe = _param(self, "wpe", (cfg.context, W), (None, "embed"), _normal(0.02))
        block = nn.remat(Block, static_argnums=(5,)) if cfg.remat else Block
        self.blocks = [block(cfg) for _ in range(cfg.num_layers)]
        self.ln_f = _layer_norm(cfg)
        if cfg.output_head and not cfg.tied:
            if K == 1:
                self.lm_head = _param(self, "lm_head", (W, V), ("embed", "vocab"), _normal(0.02))
            else:
                self.lm_head = _param(self, "lm_head", (K, W, V), ("levels", "embed", "vocab"),
                                      _normal(0.02))
        self.drop = nn.Dropout(cfg.dropout)

    # -- pieces shared by __call__ and decode

    def _check_tokens(self, tokens):
        want = 2 if self.config.num_levels == 1 else 3
        if tokens.ndim != want or (want == 3 and tokens.shape[1] != self.config.num_levels):
            raise ValueError(f"expected tokens of shape {'[B, T]' if want == 2 else '[B, K, T]'} "
                             f"with K={self.config.num_levels}, got {tokens.shape}")

    def _embed(self, tokens, positions, train):
        cfg = self.config
        # A gather from a sharded table does not partition well (GSPMD falls back to
        # replicating the result): all-gather the table (as FSDP does for any weight it uses),
        # then the lookup follows the batch sharding of the tokens.
        if cfg.num_levels == 1:
            table = nn.with_logical_constraint(self.wte, (None, None))
            x = jnp.take(table, tokens, axis=0)
        else:  # the sum of each level's own embedding
            table = nn.with_logical_constraint(self.wte, (None, None, None))
            x = sum(jnp.take(table[k], tokens[:, k], axis=0) for k in range(cfg.num_levels))
        if cfg.positions == "learned":
            x = x + jnp.take(nn.with_logical_constraint(self.wpe, (None, None)), positions, axis=0)
        x = self.drop(x.astype(cfg.dtype), deterministic=not train)
        return nn.with_logical_constraint(x, ACTIVATION_AXES)

    def _logits(self, x):
        """Logits of final-normalised hidden states x [B, T, W]."""
        cfg = self.config
        if not cfg.output_head:
            raise ValueError("this Transformer has no LM head (output_head=False); "
                             "use features / decode_features")
        f32 = jnp.float32
        if self.has_variable("params", HEAD_COPIES[0]):  # with_decode_kernels: [W, V]
            logits = jnp.einsum("btw,wv->btv", x, self.get_variable(
                "params", HEAD_COPIES[0]).astype(cfg.dtype), preferred_element_type=f32)
        elif self.has_variable("params", HEAD_COPIES[1]):  # with_decode_kernels: [V, W]
            logits = jnp.einsum("btw,vw->btv", x, self.get_variable(
                "params", HEAD_COPIES[1]).astype(cfg.dtype), preferred_element_type=f32)
        elif cfg.tied:
            logits = jnp.einsum("btw,vw->btv", x, self.wte.astype(cfg.dtype),
                                preferred_element_type=f32)
        elif cfg.num_levels == 1:
            logits = jnp.einsum("btw,wv->btv", x, self.lm_head.astype(cfg.dtype),
                                preferred_element_type=f32)
        else:
            logits = jnp.einsum("btw,kwv->bktv", x, self.lm_head.astype(cfg.dtype),
                                preferred_element_type=f32)
        names = ("batch", "length", "vocab") if cfg.num_levels == 1 else (
            "batch", "levels", "length", "vocab")
        return nn.with_logical_constraint(logits.astype(f32), names)

    # -- public API

    def __call__(self, tokens, *, train: bool = False, positions=None):
        """tokens int [B, T] (or [B, K, T]) -> float32 logits [B, T, V] (or [B, K, T, V]).

        ``positions`` (int [T] or [B, T], default 0..T-1) only feed the position encoding;
        attention is always causal in sequence order. Dropout needs an rng named 'dropout'
        when ``train`` and ``config.dropout > 0``.
        """
        return self._logits(self.features(tokens, train=train, positions=positions))

    def features(self, tokens, *, train: bool = False, positions=None):
        """Like ``__call__`` but returns the final-normalised hidden states [B, T, W] in the
        compute dtype (what the LM head would read)."""
        self._check_tokens(tokens)
        B, T = tokens.shape[0], tokens.shape[-1]
        if positions is None:
            positions = jnp.arange(T)
        positions = jnp.broadcast_to(positions, (B, T))
        x = self._embed(tokens, positions, train)
        for block in self.blocks:
            x, _ = block(x, positions, None, None, train)
        return self.ln_f(x)

    def decode(self, tokens, cache: Cache, index):
        """Runs a chunk of new tokens through the model against a KV cache.

        tokens int [B, T] (or [B, K, T]) occupy cache slots (= positions) index..index+T-1;
        ``index`` is an int scalar (may be traced). Returns (float32 logits of the chunk,
        updated cache). Prefill: the whole prompt at index 0; then one token at a time.
        """
        x, new_cache = self.decode_features(tokens, cache, index)
        return self._logits(x), new_cache

    def decode_features(self, tokens, cache: Cache, index):
        """Like ``decode`` but returns (final-normalised hidden states [B, T, W], cache)."""
        self._check_tokens(tokens)
        B, T = tokens.shape[0], tokens.shape[-1]
        index = jnp.asarray(index, jnp.int32)
        positions = jnp.broadcast_to(index + jnp.arange(T, dtype=jnp.int32), (B, T))
        x = self._embed(tokens, positions, False)
        k_all = [nn.with_logical_constraint(c, CACHE_AXES) for c in cache["k"]]
        v_all = [nn.with_logical_constraint(c, CACHE_AXES) for c in cache["v"]]
        for i, block in enumerate(self.blocks):
            x, (k_all, v_all) = block(x, positions, (k_all, v_all, i), index, False)
        new_cache = {"k": tuple(nn.with_logical_constraint(c, CACHE_AXES) for c in k_all),
                     "v": tuple(nn.with_logical_constraint(c, CACHE_AXES) for c in v_all)}
        return self.ln_f(x), new_cache

    def init_cache(self, batch_size: int, max_length: int | None = None,
                   dtype: Dtype | None = None) -> Cache:
        """An empty cache; works on an unbound module (needs no params)."""
        return init_cache(self.config, batch_size, max_length, dtype)


# ----------------------------------------------------------------------------- functions


def init_cache(cfg: TransformerConfig, batch_size: int, max_length: int | None = None,
               dtype: Dtype | None = None) -> Cache:
    """Zero KV cache {'k', 'v'}, each a tuple of num_layers [batch * heads, max_length, head_dim]
    arrays (batch-major: row ``b * heads + h`` is head h of example b).

    ``max_length`` defaults to ``cfg.context`` (and may not exceed it with learned positions);
    ``dtype`` defaults to the compute dtype.
    """
    max_length = cfg.context if max_length is None else int(max_length)
    if cfg.positions == "learned" and max_length > cfg.context:
        raise ValueError(f"max_length {max_length} exceeds the learned context {cfg.context}")
    shape = (batch_size * cfg.num_heads, max_length, cfg.head_dim)
    dtype = cfg.dtype if dtype is None else dtype
    return {name: tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
            for name in ("k", "v")}


def dummy_tokens(cfg: TransformerConfig, batch_size: int = 1, length: int = 1) -> jax.Array:
    """Zero tokens of the shape the model takes: [B, T] or [B, K, T]."""
    if cfg.num_levels == 1:
        return jnp.zeros((batch_size, length), jnp.int32)
    return jnp.zeros((batch_size, cfg.num_levels, length), jnp.int32)


def init_params(model: Transformer, rng: jax.Array) -> Any:
    """Boxed params (``nn.LogicallyPartitioned`` leaves); ``nn.meta.unbox`` gives arrays.

    Cheap to trace with ``jax.eval_shape`` for shapes and shardings.
    """
    return model.init(rng, dummy_tokens(model.config))["params"]


def count_params(params: Any) -> int:
    """Number of scalars in a (possibly boxed, possibly abstract) parameter tree."""
    leaves = jax.tree.leaves(nn.meta.unbox(params))
    return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in leaves))


def num_params(cfg: TransformerConfig, *, include_position_embedding: bool = True) -> int:
    """The parameter count from the config alone (equals ``count_params`` of the tree).

    nanoGPT's ``get_num_params()`` reports the count without position embeddings.
    """
    W, M, V, K, L = cfg.width, cfg.mlp_width, cfg.vocab_size, cfg.num_levels, cfg.num_layers
    b = 1 if cfg.bias else 0
    ln = W * (1 + b)
    per_layer = (2 * ln + 3 * W * W + 3 * W * b + W * W + W * b  # norms, qkv, attention out
                 + W * M + M * b + M * W + W * b)  # mlp
    n = L * per_layer + ln + K * V * W  # blocks, final norm, token embedding(s)
    if cfg.output_head and not cfg.tied:
        n += K * W * V
    if cfg.positions == "learned" and include_position_embedding:
        n += cfg.context * W
    return n


def flops_per_token(cfg: TransformerConfig, seq_len: int) -> float:
    """Approximate training FLOPs (forward + backward) per token: ``6 N + 12 L T W``.

    * ``6 N``: each weight used in a matmul costs 2 FLOPs (multiply + add) per token in the
      forward pass and twice that in the backward pass. ``N`` counts the weights that sit in
      matmuls: everything except pure lookup tables (position embeddings, and the input token
      embeddings when they are not tied to the LM head). LayerNorm/bias terms are included;
      they are negligible.
    * ``12 L T W``: attention scores ``QK^T`` and ``probs @ V`` are 2 matmuls of 2*T*W FLOPs
      per token per layer, forward (x1) and backward (x2): 2 * 2 * 3 = 12. ``T`` is the
      sequence length (the full T, ignoring the causal half that a fused kernel could skip).

    The same estimate as the PaLM paper (appendix B) and nanoGPT's ``estimate_mfu``.
    """
    n = num_params(cfg, include_position_embedding=False)
    if not cfg.tied:
        n -= cfg.num_levels * cfg.vocab_size * cfg.width
    return float(6 * n + 12 * cfg.num_layers * seq_len * cfg.width)
