"""Moshi's LM (Kyutai's ``moshi.models.lm.LMModel``) in Flax Linen: the training forward pass.

Codes are ``[B, 1 + n_q, T]`` int: row 0 text, rows 1..dep_q the model's audio codebooks
(the ones the depformer predicts), the rest the user's. Special ids: ``text_card`` / ``card``
are the initial tokens (the extra embedding row), -1 (``zero_token_id``) embeds to exactly 0
and is masked out of the loss, -2 (``ungenerated_token_id``) embeds as id 0.

``__call__(codes)`` keeps ``LMModel.forward``'s contract (``moshi/models/lm.py``, 0.2.13)::

    delayed = delay_sequence(codes, delays, initial)       row k shifted right by delays[k],
                                                           initial tokens shifted in
    seq     = [initial column] + delayed                   [B, K, T + 1]
    temporal input  seq[:, :, :-1]  (frame t sees delayed frames < t)
      x = text_emb(text) + sum_k emb[k](audio_k)           [B, T, dim]
      z = out_norm(transformer(x))                         sliding window of ``context``
      text logits = text_linear(z)                         [B, 1, T, text_card]
    depformer, for step k < dep_q, on seq[:, :, 1:] (the delayed frame t itself):
      d_k = depformer_in[in(k)](z) + (depformer_text_emb(text_t)       if k == 0
                                      depformer_emb[k-1](audio_{k-1,t}) else)
      y = depformer(d_0 .. d_{dep_q-1})                    one sequence per (b, t); step k uses
                                                           weight set schedule[k]
      audio logits[k] = linears[k](y_k)                    [B, dep_q, T, card]
    undelay_sequence: logits[k, t] <- logits[k, t + delays[k]]; the last delays[k] frames are
    NaN with mask False; masks also False where the input code is -1.

So ``text_logits[:, 0, t]`` and ``audio_logits[:, k, t]`` predict ``codes[:, 0, t]`` and
``codes[:, 1 + k, t]``: no further shift before the cross entropy.

Parameter tree (``S`` = depformer weight sets; ``Din`` = its input projections: dep_q, or the
schedule's sets, or 1 without ``depformer_multi_linear``)::

    text_emb            [text_card + 1, dim]        (None, 'embed')   rows: an odd count
    emb                 [n_q, card + 1, dim]        ('levels', None, 'embed')
    transformer         TransformerStack: blocks_i/{ln_1, attn, ln_2, mlp}
                          ln_*/scale [dim] ('embed',)            (RMSNorm alpha)
                          attn/qkv_kernel [dim, 3, H, Dh]        ('embed', None, 'heads', 'kv')
                          attn/out_kernel [H, Dh, dim]           ('heads', 'kv', 'embed')
                          mlp/in_kernel [dim, 2, hidden]         ('embed', None, 'mlp')
                          mlp/out_kernel [hidden, dim]           ('mlp', 'embed')
    out_norm/scale      [dim]                       ('embed',)
    text_linear         [dim, text_card]            ('embed', 'vocab')
    depformer_in        [Din, dim, depformer_dim]   ('levels', 'embed', None)
    depformer_text_emb  [text_card + 1, Dd]         (None, 'embed')
    depformer_emb       [dep_q - 1, card + 1, Dd]   ('levels', None, 'embed')  (dep_q > 1)
    depformer           TransformerStack as above, width Dd, every projection with a
                        leading 'steps' axis of S sets (when depformer_weights_per_step)
    linears             [dep_q, Dd, card]           ('levels', 'embed', 'vocab')

``depformer_in`` leaves its depformer side unnamed (both sides are 'embed'-like and a name
may appear once per array), as :mod:`audiolm_jax.lm.depth` does.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from audiolm_jax.layers.params import cast_for_inference, param
from audiolm_jax.layers.transformer import ACTIVATION, RMSNorm, TransformerStack, block_num_params
from audiolm_jax.moshi.config import NORM_EPS, POSITIONAL, MoshiConfig


class MoshiOutput(NamedTuple):
    """``LMModel.forward``'s ``LMOutput``: logits aligned with the input codes."""

    text_logits: jax.Array  # [B, 1, T, text_card] float32, NaN where text_mask's delay cut
    text_mask: jax.Array  # [B, 1, T] bool
    audio_logits: jax.Array  # [B, dep_q, T, card] float32 (Kyutai's ``logits``)
    audio_mask: jax.Array  # [B, dep_q, T] bool (Kyutai's ``mask``)


# ----------------------------------------------------------------------------- delays


def delay_sequence(codes, delays: Sequence[int], initial) -> jax.Array:
    """Row k of ``codes [B, K, T]`` shifted right by ``delays[k]``, the first ``delays[k]``
    frames set to ``initial[k]`` (``lm_utils._delay_sequence``)."""
    B, K, T = codes.shape
    rows = []
    for k, d in enumerate(delays):
        d = min(int(d), T)
        pad = jnp.full((B, d), initial[k], codes.dtype)
        rows.append(jnp.concatenate([pad, codes[:, k, :T - d]], axis=1))
    return jnp.stack(rows, axis=1)


def undelay_sequence(x, delays: Sequence[int], fill_value=float("nan")):
    """The inverse shift of ``x [B, K, T, ...]`` -> (x, mask [B, K, T]): row k moves left by
    ``delays[k]``; its last ``delays[k]`` frames become ``fill_value`` with mask False
    (``lm_utils._undelay_sequence``)."""
    B, K, T = x.shape[:3]
    if K == 0:
        return x, jnp.zeros((B, 0, T), bool)
    rows, masks = [], []
    for k, d in enumerate(delays):
        d = min(int(d), T)
        row = x[:, k, d:]
        pad = jnp.full((B, d) + x.shape[3:], fill_value, x.dtype)
        rows.append(jnp.concatenate([row, pad], axis=1))
        masks.append(np.arange(T) < T - d)
    mask = jnp.broadcast_to(jnp.asarray(np.stack(masks)), (B, K, T))
    return jnp.stack(rows, axis=1), mask


def sin_embedding(positions, dim: int, max_period: float) -> jax.Array:
    """Kyutai's ``create_sin_embedding``: ``[cos(p / w), sin(p / w)]`` with ``w = max_period **
    (i / (dim / 2 - 1))``; positions [..., T] -> [..., T, dim] float32."""
    half = dim // 2
    adim = jnp.arange(half, dtype=jnp.float32)
    phase = positions.astype(jnp.float32)[..., None] / (
        jnp.float32(max_period) ** (adim / (half - 1)))
    return jnp.concatenate([jnp.cos(phase), jnp.sin(phase)], axis=-1)


def _lookup(table, tokens, dtype):
    """Embedding rows of ``tokens`` (any shape) -> [..., D]; -1 gives exactly 0 and other
    negative ids read row 0, as Kyutai's ``ScaledEmbedding`` does."""
    # All-gather the table before the gather so the lookup follows the tokens' sharding
    # (as lm/transformer.py does).
    table = nn.with_logical_constraint(table, (None, None))
    rows = jnp.take(table.astype(dtype), jnp.maximum(tokens, 0), axis=0)
    return jnp.where((tokens == MoshiConfig.zero_token_id)[..., None], jnp.zeros((), dtype), rows)


def _embedding_init(dim: int):
    # Kyutai's _init_weights: truncated normal of std 1 / sqrt(dim) for every embedding.
    return nn.initializers.truncated_normal(stddev=1.0 / math.sqrt(dim))


def _linear_init(fan_in: int):
    return nn.initializers.truncated_normal(stddev=1.0 / math.sqrt(fan_in))


# ----------------------------------------------------------------------------- model


class MoshiLM(nn.Module):
    """Moshi's temporal transformer + depformer; see the module docstring."""

    config: MoshiConfig

    def setup(self):
        cfg = self.config
        D, Dd = cfg.dim, cfg.depformer_dim
        # Tables have card + 1 rows (the initial token): an odd count no mesh axis divides, so
        # their rows stay whole (the lookup all-gathers the table anyway, see _lookup).
        self.text_emb = param(self, "text_emb", (cfg.text_card + 1, D), (None, "embed"),
                              _embedding_init(D))
        self.emb = param(self, "emb", (cfg.n_q, cfg.card + 1, D), ("levels", None, "embed"),
                         _embedding_init(D))
        self.transformer = TransformerStack(cfg.temporal_config(), name="transformer")
        self.out_norm = RMSNorm(epsilon=NORM_EPS[cfg.norm], dtype=cfg.dtype, name="out_norm")
        self.text_linear = param(self, "text_linear", (D, cfg.text_card), ("embed", "vocab"),
                                 _linear_init(D))
        if cfg.dep_q:
            self.depformer_in = param(self, "depformer_in", (cfg.depformer_in_count, D, Dd),
                                      ("levels", "embed", None), _linear_init(D))
            self.depformer_text_emb = param(self, "depformer_text_emb", (cfg.text_card + 1, Dd),
                                            (None, "embed"), _embedding_init(Dd))
            if cfg.dep_q > 1:
                self.depformer_emb = param(self, "depformer_emb",
                                           (cfg.dep_q - 1, cfg.card + 1, Dd),
                                           ("levels", None, "embed"), _embedding_init(Dd))
            self.depformer = TransformerStack(cfg.depformer_config(), name="depformer")
            self.linears = param(self, "linears", (cfg.dep_q, Dd, cfg.card),
                                 ("levels", "embed", "vocab"), _linear_init(Dd))

    # ------------------------------------------------------------------ pieces

    def _check(self, codes):
        K = self.config.num_codebooks
        if codes.ndim != 3 or codes.shape[1] != K:
            raise ValueError(f"codes must be [B, 1 + n_q = {K}, T], got shape {codes.shape}")

    def initial_tokens(self) -> np.ndarray:
        """[1 + n_q] int32: the text then audio initial tokens (``_get_initial_token``)."""
        cfg = self.config
        return np.array([cfg.text_initial_token_id] + [cfg.initial_token_id] * cfg.n_q,
                        np.int32)

    def embed(self, sequence):
        """Temporal input: sequence [B, 1 + n_q, S] -> text emb + sum of the n_q audio
        embeddings [B, S, dim] (``forward_text``)."""
        cfg = self.config
        x = _lookup(self.emb[0], sequence[:, 1], cfg.dtype)
        for k in range(1, cfg.n_q):
            x = x + _lookup(self.emb[k], sequence[:, 1 + k], cfg.dtype)
        x = x + _lookup(self.text_emb, sequence[:, 0], cfg.dtype)
        if POSITIONAL[cfg.positional_embedding][1]:
            x = x + sin_embedding(jnp.arange(x.shape[1]), cfg.dim, cfg.max_period).astype(x.dtype)
        return nn.with_logical_constraint(x, ACTIVATION)

    def forward_text(self, sequence):
        """sequence [B, 1 + n_q, S] (already delayed, initial column first) ->
        (z [B, S, dim] after ``out_norm``, text logits [B, 1, S, text_card] float32)."""
        z = self.out_norm(self.transformer(self.embed(sequence)))
        logits = jnp.einsum("bsd,dv->bsv", z, self.text_linear.astype(z.dtype),
                            preferred_element_type=jnp.float32)
        return z, logits[:, None]

    def forward_depformer(self, sequence, z):
        """Teacher-forced depformer: sequence [B, 1 + n_q, S] (the delayed frames z was
        computed before), z [B, S, dim] -> audio logits [B, dep_q, S, card] float32
        (``forward_depformer_training``)."""
        cfg = self.config
        B, _, S = sequence.shape
        dt = cfg.dtype
        proj = jnp.einsum("bsd,ide->bsie", z, self.depformer_in.astype(dt))  # [B, S, Din, Dd]
        steps = []
        for k in range(cfg.dep_q):
            if k == 0:
                token_in = _lookup(self.depformer_text_emb, sequence[:, 0], dt)
            else:
                token_in = _lookup(self.depformer_emb[k - 1], sequence[:, k], dt)
            steps.append(proj[:, :, cfg.depformer_in_index(k)] + token_in)
        x = jnp.stack(steps, axis=2).reshape(B * S, cfg.dep_q, cfg.depformer_dim)
        if POSITIONAL[cfg.depformer_pos_emb][1]:
            x = x + sin_embedding(jnp.arange(cfg.dep_q), cfg.depformer_dim,
                                  cfg.depformer_max_period).astype(x.dtype)
        y = self.depformer(nn.with_logical_constraint(x, ACTIVATION))  # [B * S, dep_q, Dd]
        # One plain matmul per codebook rather than one batched over them: XLA:CPU has no
        # batched bf16 x bf16 -> f32 dot (as lm/depth.py notes).
        logits = jnp.stack([
            jnp.einsum("nd,dc->nc", y[:, k], self.linears[k].astype(y.dtype),
                       preferred_element_type=jnp.float32) for k in range(cfg.dep_q)], axis=1)
        return logits.reshape(B, S, cfg.dep_q, cfg.card).transpose(0, 2, 1, 3)

    # ------------------------------------------------------------------ forward

    def __call__(self, codes) -> MoshiOutput:
        """Undelayed codes int [B, 1 + n_q, T] -> :class:`MoshiOutput` aligned with them
        (``LMModel.forward``)."""
        self._check(codes)
        cfg = self.config
        codes = jnp.asarray(codes, jnp.int32)
        B, K, T = codes.shape
        initial = self.initial_tokens()
        delayed = delay_sequence(codes, cfg.delays, initial)
        seq = jnp.concatenate(
            [jnp.broadcast_to(jnp.asarray(initial)[None, :, None], (B, K, 1)), delayed], axis=2)
        z, text_logits = self.forward_text(seq[:, :, :-1])
        text_logits, text_mask = undelay_sequence(text_logits, cfg.delays[:1])
        text_mask = text_mask & (codes[:, :1] != cfg.zero_token_id)
        dq = cfg.dep_q
        if dq:
            audio = self.forward_depformer(seq[:, :, 1:], z)
        else:
            audio = jnp.zeros((B, 0, T, cfg.card), jnp.float32)
        audio, audio_mask = undelay_sequence(audio, cfg.delays[1:1 + dq])
        audio_mask = audio_mask & (codes[:, 1:1 + dq] != cfg.zero_token_id)
        return MoshiOutput(text_logits, text_mask, audio, audio_mask)


# ----------------------------------------------------------------------------- functions


def inference_params(config: MoshiConfig, params):
    """The weights a generation step reads (:func:`~audiolm_jax.layers.params.
    cast_for_inference`): the matrices in the compute dtype, cast once instead of at every
    frame; embedding tables included (:func:`_lookup` casts a table before gathering from
    it), norm scales kept. Frames are bit-identical."""
    return cast_for_inference(params, config.dtype)


def logits(config: MoshiConfig, params, codes) -> MoshiOutput:
    """``LMModel.forward`` as a pure function: (unboxed or boxed) ``params`` and undelayed
    ``codes [B, 1 + n_q, T]`` -> :class:`MoshiOutput`."""
    return MoshiLM(config).apply({"params": params}, codes)


def dummy_codes(config: MoshiConfig, batch_size: int = 1, length: int = 2) -> jax.Array:
    return jnp.zeros((batch_size, config.num_codebooks, length), jnp.int32)


def init_params(model: MoshiLM, rng) -> Any:
    """Boxed params (``nn.LogicallyPartitioned`` leaves); cheap under ``jax.eval_shape``."""
    return model.init(rng, dummy_codes(model.config))["params"]


def param_shapes(config: MoshiConfig) -> Any:
    """The unboxed params tree of ``ShapeDtypeStruct`` leaves (nothing allocated)."""
    boxed = jax.eval_shape(lambda r: init_params(MoshiLM(config), r), jax.random.PRNGKey(0))
    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
    # Unboxed without a sharding constraint: callable under a mesh (the training loop's).
    return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, boxed,
                        is_leaf=is_box)


def count_params(params: Any) -> int:
    """Scalars in a (possibly boxed, possibly abstract) params tree."""
    leaves = jax.tree.leaves(nn.meta.unbox(params))
    return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in leaves))


def num_params(config: MoshiConfig) -> int:
    """The parameter count from the config alone, through our transformer's block count
    (equals :func:`count_params` of the tree)."""
    c = config
    D, Dd = c.dim, c.depformer_dim
    n = (c.text_card + 1) * D + c.n_q * (c.card + 1) * D  # embeddings
    n += c.num_layers * block_num_params(c.temporal_config()) + D + D * c.text_card
    if c.dep_q:
        n += c.depformer_in_count * D * Dd + (c.text_card + 1) * Dd
        n += (c.dep_q - 1) * (c.card + 1) * Dd + c.dep_q * Dd * c.card
        n += c.depformer_num_layers * block_num_params(c.depformer_config())
    return int(n)
