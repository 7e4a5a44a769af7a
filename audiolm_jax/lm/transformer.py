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

The blocks are the package's shared transformer (:mod:`audiolm_jax.layers.transformer`);
this module adds the token and position embeddings and the LM head. ``LMConfig`` is the
shared ``TransformerConfig`` plus the LM's own fields. Weights are float32; ``config.dtype``
is the compute dtype (e.g. bfloat16). Softmax, LayerNorm
statistics and the logits are float32 whatever the compute dtype. Initialisation follows GPT-2:
normal(0.02) for every weight, zeros for biases, and the two projections that write into the
residual stream (attention output, MLP output) use normal(0.02 / sqrt(2 * num_layers)).

Every weight carries logical axis names (``nn.with_logical_partitioning``) and the residual
stream is constrained to ``('activation_batch', 'activation_length', 'activation_embed')``
after each block, so the mesh rules
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
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from audiolm_jax.layers import transformer as layers
from audiolm_jax.layers.params import normal, param
from audiolm_jax.layers.transformer import (ACTIVATION, TransformerConfig,
                                            block_num_params, make_blocks, make_norm,
                                            run_blocks)

Dtype = Any
Cache = dict  # {'k': (one [batch * heads, max_length, head_dim] per layer), 'v': same}

_POSITIONS = ("learned", "rope")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LMConfig(TransformerConfig):
    """A GPT-style LM: the shared transformer's options plus the LM's own."""

    vocab_size: int
    context: int  # the longest sequence (learned positions have this many rows)
    positions: str = "learned"  # 'learned' | 'rope' (rotary, half-split convention)
    tie_embeddings: bool = True  # only applies when num_levels == 1
    num_levels: int = 1
    # False: no LM head, only ``features``/``decode_features`` (a trunk whose hidden states
    # another module reads, e.g. the temporal transformer of the depth LM).
    output_head: bool = True

    def __post_init__(self):
        if self.positions not in _POSITIONS:
            raise ValueError(f"positions must be one of {_POSITIONS}, got {self.positions!r}")
        if self.positions == "rope" and self.rope == "none":
            object.__setattr__(self, "rope", "half")
        if self.positions == "learned" and self.rope != "none":
            raise ValueError("learned positions take no rotary embedding (rope='none')")
        super().__post_init__()
        if self.num_levels < 1:
            raise ValueError(f"num_levels must be >= 1, got {self.num_levels}")

    @property
    def tied(self) -> bool:
        """Whether the LM head reuses the token embedding (one level only)."""
        return self.tie_embeddings and self.num_levels == 1 and self.output_head


class Transformer(nn.Module):
    """Decoder-only LM. ``__call__`` for full sequences, ``decode`` for KV-cached chunks."""

    config: LMConfig

    def setup(self):
        cfg = self.config
        K, V, W = cfg.num_levels, cfg.vocab_size, cfg.width
        if K == 1:
            self.wte = param(self, "wte", (V, W), ("vocab", "embed"), normal(0.02))
        else:
            self.wte = param(self, "wte", (K, V, W), ("levels", "vocab", "embed"), normal(0.02))
        if cfg.positions == "learned":
            self.wpe = param(self, "wpe", (cfg.context, W), (None, "embed"), normal(0.02))
        self.blocks = make_blocks(cfg)
        self.ln_f = make_norm(cfg)
        if cfg.output_head and not cfg.tied:
            if K == 1:
                self.lm_head = param(self, "lm_head", (W, V), ("embed", "vocab"), normal(0.02))
            else:
                self.lm_head = param(self, "lm_head", (K, W, V), ("levels", "embed", "vocab"),
                                     normal(0.02))
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
        return nn.with_logical_constraint(x, ACTIVATION)

    def _logits(self, x):
        """Logits of final-normalised hidden states x [B, T, W]."""
        cfg = self.config
        if not cfg.output_head:
            raise ValueError("this Transformer has no LM head (output_head=False); "
                             "use features / decode_features")
        f32 = jnp.float32
        if cfg.tied:
            logits = jnp.einsum("btw,vw->btv", x, self.wte.astype(cfg.dtype),
                                preferred_element_type=f32)
        elif cfg.num_levels == 1:
            logits = jnp.einsum("btw,wv->btv", x, self.lm_head.astype(cfg.dtype),
                                preferred_element_type=f32)
        else:
            logits = jnp.einsum("btw,kwv->bktv", x, self.lm_head.astype(cfg.dtype),
                                preferred_element_type=f32)
        names = ("activation_batch", "activation_length", "activation_vocab")
        if cfg.num_levels > 1:
            names = names[:1] + ("activation_levels",) + names[1:]
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
        x, _ = run_blocks(self.blocks, self._embed(tokens, positions, train), positions,
                          train=train)
        return self.ln_f(x)

    def head(self, x):
        """The LM head alone: final-normalised hidden states [B, T, W] (``features``) ->
        float32 logits [B, T, V] (or [B, K, T, V])."""
        return self._logits(x)

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
        x, new_cache = run_blocks(self.blocks, self._embed(tokens, positions, False),
                                  positions, cache, index)
        return self.ln_f(x), new_cache

    def init_cache(self, batch_size: int, max_length: int | None = None,
                   dtype: Dtype | None = None) -> Cache:
        """An empty cache; works on an unbound module (needs no params)."""
        return init_cache(self.config, batch_size, max_length, dtype)


# ----------------------------------------------------------------------------- functions


def init_cache(cfg: LMConfig, batch_size: int, max_length: int | None = None,
               dtype: Dtype | None = None) -> Cache:
    """Zero KV cache {'k', 'v'}, each a tuple of num_layers [batch * heads, max_length, head_dim]
    arrays (batch-major: row ``b * heads + h`` is head h of example b).

    ``max_length`` defaults to ``cfg.context`` (and may not exceed it with learned positions);
    ``dtype`` defaults to the compute dtype.
    """
    max_length = cfg.context if max_length is None else int(max_length)
    if cfg.positions == "learned" and max_length > cfg.context:
        raise ValueError(f"max_length {max_length} exceeds the learned context {cfg.context}")
    return layers.init_cache(cfg, batch_size, max_length, dtype)


def dummy_tokens(cfg: LMConfig, batch_size: int = 1, length: int = 1) -> jax.Array:
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


def num_params(cfg: LMConfig, *, include_position_embedding: bool = True) -> int:
    """The parameter count from the config alone (equals ``count_params`` of the tree).

    nanoGPT's ``get_num_params()`` reports the count without position embeddings.
    """
    W, V, K, L = cfg.width, cfg.vocab_size, cfg.num_levels, cfg.num_layers
    final_norm = W * (2 if cfg.norm == "layer" and cfg.has_norm_bias else 1)
    n = L * block_num_params(cfg) + final_norm + K * V * W  # blocks, final norm, embedding(s)
    if cfg.output_head and not cfg.tied:
        n += K * W * V
    if cfg.positions == "learned" and include_position_embedding:
        n += cfg.context * W
    return n


def flops_per_token(cfg: LMConfig, seq_len: int) -> float:
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
