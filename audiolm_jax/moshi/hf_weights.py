"""Hugging Face's Moshi layout (transformers' ``MoshiForConditionalGeneration``) <-> the params of
:class:`audiolm_jax.moshi.model.MoshiLM`, and HF's ``config.json`` -> :class:`MoshiConfig`.

HF's ``num_codebooks`` (``nc``) is the number of audio codebooks *per stream*: the temporal
transformer embeds ``2 nc`` audio rows (Moshi's stream, then the user's), the depth decoder
predicts ``nc``. So ``n_q = 2 nc`` and ``dep_q = nc``. HF's keys (``nn.Linear`` weights
``[out, in]``; the depth decoder's "flexible linear" weights stack one matrix per codebook,
``[nc, out, in]``) and where each goes::

    embed_tokens.{k}.weight                 [card+1, dim]      k < 2 nc  -> emb[k]
    decoder.model.embed_tokens.weight       [text_card+1, dim]          -> text_emb
    decoder.model.norm.weight               [dim]                       -> out_norm/scale
    decoder.lm_head.weight                  [text_card, dim]            -> text_linear (T)
    decoder.model.layers.{i}.
      self_attn.{q,k,v}_proj.linear.weight  [H Dh, dim]  q, k rows per head in half-split
                                                         RoPE order (un-permuted, see below)
                                                         -> attn/qkv_kernel [dim, 3, H, Dh]
      self_attn.o_proj.linear.weight        [dim, H Dh]                 -> attn/out_kernel
      mlp.fc1.weight                        [2 M, dim] (gate rows, then value rows)
                                                                        -> mlp/in_kernel
      mlp.fc2.weight                        [dim, M]                    -> mlp/out_kernel
      input_layernorm.weight, post_attention_layernorm.weight          -> ln_1, ln_2 scale
    depth_decoder.text_embed_tokens.weight  [text_card+1, Dd]           -> depformer_text_emb
    depth_decoder.embed_tokens.{k}.weight   [card+1, Dd]     k < nc - 1 -> depformer_emb[k]
    depth_decoder.input_projections.weight  [nc, Dd, dim]               -> depformer_in
    depth_decoder.layers.{i}. (as above, every projection [nc, out, in]: one weight set per
      step; the two norms shared)                                       -> depformer blocks
    depth_decoder.lm_heads.weight           [nc, card, Dd]              -> linears
    audio_encoder.*                         Mimi (transformers' MimiModel): not the LM; see
                                            :func:`split_hf_state`

``.linear`` in the attention names is how ``state_dict()`` spells HF's ``MoshiLinear``
wrapper; the plain ``self_attn.q_proj.weight`` is accepted as well.

**RoPE.** Kyutai rotates adjacent pairs of each head (``interleave=True``); HF rotates the
head's two halves (``rotate_half``), so HF's converter permutes the q/k rows of each head.
With ``positional_embedding='rope'`` (what :func:`config_from_hf` picks) :func:`from_hf` undoes
that permutation and the params are exactly Kyutai's (``to_kyutai`` gives Kyutai's state
dict); with ``'rope_concat'`` it keeps HF's rows and our transformer rotates halves. Both
compute the same function.

What HF's Moshi can hold is a subset of Kyutai's ``LMModel``: RoPE in the temporal
transformer, none in the depth decoder, a gated SiLU MLP, RMSNorm with one epsilon for both
stacks, no layer scale, one depth weight set per codebook (no schedule), one input
projection per codebook, and ``n_q = 2 dep_q``. Delays are not stored (see
:func:`config_from_hf`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from audiolm_jax.layers.transformer import stack_layers, unstack_layers
from audiolm_jax.moshi.config import NORM_EPS, MoshiConfig, gating_hidden

MIMI_PREFIX = "audio_encoder."
# HF MoshiConfig / MoshiDepthConfig defaults (configuration_moshi.py, transformers 5.x): a
# config.json written by save_pretrained has every key; these fill a hand-written one.
HF_DEFAULTS = {
    "vocab_size": 32000, "hidden_size": 4096, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": None, "head_dim": None,
    "audio_vocab_size": None, "hidden_act": "silu", "sliding_window": 3000, "ffn_dim": 22528,
    "rms_norm_eps": 1e-8, "num_codebooks": 8,
}
HF_DEPTH_DEFAULTS = {
    "hidden_size": 1024, "num_hidden_layers": 6, "num_attention_heads": 16,
    "num_key_value_heads": None, "head_dim": None, "hidden_act": "silu", "sliding_window": 8,
    "ffn_dim": 5632, "rms_norm_eps": 1e-8,
}
MIMI_CODEBOOK_SIZE = 2048  # MimiConfig.codebook_size: HF's audio_vocab_size when unset


# ----------------------------------------------------------------------------- layout


def is_hf_layout(keys) -> bool:
    """True for HF's ``MoshiForConditionalGeneration`` state dict (``decoder.model.*`` and
    ``depth_decoder.*``), False for Kyutai's ``LMModel`` one (``transformer.*``,
    ``depformer.*``, ``text_emb.weight``)."""
    return any(k.startswith(("decoder.model.", "depth_decoder.")) for k in keys)


def split_hf_state(state: Mapping[str, Any]) -> tuple[dict, dict]:
    """(LM keys, Mimi keys with ``audio_encoder.`` stripped): the second is transformers'
    ``MimiModel.state_dict()`` layout, which :mod:`audiolm_jax.codec.mimi.importer` reads."""
    lm, mimi = {}, {}
    for k, v in state.items():
        if k.startswith(MIMI_PREFIX):
            mimi[k[len(MIMI_PREFIX):]] = v
        else:
            lm[k] = v
    return lm, mimi


# ----------------------------------------------------------------------------- config


def _as_dict(cfg) -> dict:
    if cfg is None:
        return {}
    return dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)


def _feedforward_for(width: int, mlp_hidden: int, what: str) -> int:
    """A Kyutai ``dim_feedforward`` whose gated width (:func:`gating_hidden`) is
    ``mlp_hidden``: HF stores the width itself (``ffn_dim = 2 * mlp_hidden``)."""
    lo = -(-3 * mlp_hidden // 2)
    for ff in (lo, lo + 1, 4 * width):
        if gating_hidden(width, ff) == mlp_hidden:
            return ff
    raise ValueError(f"HF {what} ffn_dim={2 * mlp_hidden} has no Kyutai dim_feedforward")


def _heads(raw: dict, what: str) -> int:
    heads = int(raw["num_attention_heads"])
    kv = raw.get("num_key_value_heads")
    if kv is not None and int(kv) != heads:
        raise ValueError(f"HF {what} num_key_value_heads={kv} != num_attention_heads={heads}: "
                         "grouped-query attention is not supported (Kyutai's kv_repeat is 1)")
    hd = raw.get("head_dim")
    if hd is not None and int(hd) * heads != int(raw["hidden_size"]):
        raise ValueError(f"HF {what} head_dim={hd} must be hidden_size / num_attention_heads")
    if raw.get("hidden_act", "silu") != "silu":
        raise ValueError(f"HF {what} hidden_act={raw['hidden_act']!r}: only 'silu' is supported")
    return heads


def _rope_theta(raw: dict) -> float:
    rope = raw.get("rope_parameters") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise ValueError(f"HF rope_type={kind!r}: only 'default' RoPE is supported")
    return float(rope.get("rope_theta", raw.get("rope_theta", 10000.0)))


def _norm(eps: float, what: str) -> str:
    for name, value in NORM_EPS.items():
        if math.isclose(float(eps), value, rel_tol=1e-6):
            return name
    raise ValueError(f"HF {what} rms_norm_eps={eps} is not one of Kyutai's {NORM_EPS}")


def default_delays(num_codebooks: int) -> tuple:
    """Moshi's delays for ``nc`` codebooks per stream: text 0, then per stream semantic 0 and
    acoustic 1 (Kyutai's 7B config; HF's ``build_delay_pattern_mask`` likewise shifts all but
    the first codebook of each stream by one frame)."""
    stream = (0,) + (1,) * (num_codebooks - 1)
    return (0,) + stream + stream


def config_from_hf(hf_config, **ours) -> MoshiConfig:
    """:class:`MoshiConfig` from HF's ``MoshiForConditionalGeneration`` ``config.json`` dict (or
    a ``transformers.MoshiConfig``). Keys left out take HF's defaults. ``ours`` overrides any
    field: the JAX-side ones (dtype, attention, remat, scan_layers) and whatever HF does not
    store, above all ``delays`` (default :func:`default_delays`: HF's checkpoints hold none,
    and Moshi's released models use this pattern) and ``existing_text_padding_id`` (Kyutai's
    3). ``sliding_window`` becomes ``context``; note that HF's cache-free forward attends to all
    past frames whatever ``sliding_window`` says (only its generation cache is windowed), so a
    forward over more than ``context`` frames matches HF with ``context=None``."""
    raw = {**HF_DEFAULTS, **_as_dict(hf_config)}
    depth = {**HF_DEPTH_DEFAULTS, **_as_dict(raw.get("depth_decoder_config"))}
    nc = int(raw["num_codebooks"])
    if nc < 1:
        raise ValueError(f"HF num_codebooks={nc} must be >= 1")
    card = raw.get("audio_vocab_size")
    if card is None:  # HF's __post_init__ takes the Mimi codebook size
        card = _as_dict(raw.get("audio_encoder_config")).get("codebook_size", MIMI_CODEBOOK_SIZE)
    dim, dd = int(raw["hidden_size"]), int(depth["hidden_size"])
    for what, r in (("", raw), ("depth_decoder_config", depth)):
        if int(r["ffn_dim"]) % 2:
            raise ValueError(f"HF {what or 'config'} ffn_dim={r['ffn_dim']} must be even")
    norm = _norm(raw["rms_norm_eps"], "config")
    if _norm(depth["rms_norm_eps"], "depth_decoder_config") != norm:
        raise ValueError("HF rms_norm_eps differs between the decoder and the depth decoder: "
                         "Kyutai's norm is one for both")
    ff = _feedforward_for(dim, int(raw["ffn_dim"]) // 2, "config")
    hidden_scale = ff / dim
    if int(hidden_scale * dim) != ff:
        raise ValueError(f"HF ffn_dim={raw['ffn_dim']} has no exact Kyutai hidden_scale")
    window = raw.get("sliding_window")
    kw = dict(
        dim=dim, text_card=int(raw["vocab_size"]), n_q=2 * nc, dep_q=nc, card=int(card),
        num_heads=_heads(raw, "config"), num_layers=int(raw["num_hidden_layers"]),
        hidden_scale=hidden_scale, layer_scale=None,
        context=int(window) if window else None, max_period=_rope_theta(raw), gating="silu",
        norm=norm, positional_embedding="rope",
        depformer_dim=dd, depformer_dim_feedforward=_feedforward_for(
            dd, int(depth["ffn_dim"]) // 2, "depth_decoder_config"),
        depformer_num_heads=_heads(depth, "depth_decoder_config"),
        depformer_num_layers=int(depth["num_hidden_layers"]), depformer_layer_scale=None,
        depformer_multi_linear=True, depformer_context=depth.get("sliding_window"),
        depformer_max_period=10000, depformer_gating="silu", depformer_pos_emb="none",
        depformer_weights_per_step=True, depformer_weights_per_step_schedule=None,
        delays=default_delays(nc))
    kw.update(ours)
    return MoshiConfig(**kw)


def _check_expressible(c: MoshiConfig):
    """Raise unless HF's Moshi can hold this config's weights (see the module docstring)."""
    want = {
        "n_q": (c.n_q == 2 * c.dep_q and c.dep_q >= 1, "2 * dep_q with dep_q >= 1"),
        "positional_embedding": (c.positional_embedding in ("rope", "rope_concat"),
                                 "'rope' or 'rope_concat'"),
        "depformer_pos_emb": (c.depformer_pos_emb == "none", "'none'"),
        "layer_scale": (c.layer_scale is None, "None"),
        "depformer_layer_scale": (c.depformer_layer_scale is None, "None"),
        "depformer_weights_per_step": (c.depformer_weights_per_step, "True"),
        "depformer_weights_per_step_schedule": (c.depformer_weights_per_step_schedule is None,
                                                "None"),
        "depformer_multi_linear": (c.depformer_multi_linear, "True"),
    }
    for key, (ok, need) in want.items():
        if not ok:
            raise ValueError(f"HF's Moshi layout needs {key} = {need}, got {getattr(c, key)!r}")


# ----------------------------------------------------------------------------- weights


class _Source:
    """The HF state dict, each key handed out once."""

    def __init__(self, state: Mapping[str, Any]):
        self.state = state
        self.used: set[str] = set()

    def take(self, key: str, shape, alias: str | None = None) -> np.ndarray:
        if key not in self.state and alias is not None and alias in self.state:
            key = alias
        if key not in self.state:
            raise KeyError(f"missing HF key {key!r}")
        self.used.add(key)
        value = _to_numpy(self.state[key])
        if tuple(value.shape) != tuple(shape):
            raise ValueError(f"HF key {key!r} has shape {tuple(value.shape)}, expected "
                             f"{tuple(shape)}")
        return value

    def check_all_used(self):
        left = sorted(set(self.state) - self.used)
        if left:
            raise ValueError(f"unexpected HF keys (not used): {left}")


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, bfloat16 included
        value = value.detach().float().cpu().numpy()
    return np.asarray(value, np.float32)


def _rows_half_to_pairs(w: np.ndarray, heads: int) -> np.ndarray:
    """q/k rows ``[..., H * Dh, in]`` from HF's half-split order (row ``h, j, i``: component
    ``j`` of pair ``i``) to Kyutai's interleaved order (row ``h, i, j``)."""
    *lead, rows, cols = w.shape
    dh = rows // heads
    w = w.reshape(*lead, heads, 2, dh // 2, cols)
    return np.swapaxes(w, -3, -2).reshape(*lead, rows, cols)


def _rows_pairs_to_half(w: np.ndarray, heads: int) -> np.ndarray:
    *lead, rows, cols = w.shape
    dh = rows // heads
    w = w.reshape(*lead, heads, dh // 2, 2, cols)
    return np.swapaxes(w, -3, -2).reshape(*lead, rows, cols)


def _stack_from_hf(src: _Source, prefix: str, cfg, sets: int, permute: bool) -> dict:
    """HF decoder layers under ``prefix`` -> our TransformerStack tree. ``sets``: 0 for plain
    linears, else the leading codebook axis of the flexible ones."""
    W, H, Dh, M = cfg.width, cfg.num_heads, cfg.head_dim, cfg.mlp_width
    lead = (sets,) if sets else ()
    out = {}
    for i in range(cfg.num_layers):
        p = f"{prefix}.layers.{i}."
        proj = {}
        for name in ("q", "k", "v", "o"):
            key = f"{p}self_attn.{name}_proj"
            shape = lead + ((W, H * Dh) if name == "o" else (H * Dh, W))
            proj[name] = src.take(key + ".linear.weight", shape, alias=key + ".weight")
        if permute:
            proj["q"], proj["k"] = (_rows_half_to_pairs(proj[n], H) for n in ("q", "k"))
        qkv = np.stack([proj["q"], proj["k"], proj["v"]], axis=-3)  # [..., 3, H Dh, W]
        qkv = np.moveaxis(qkv.reshape(*lead, 3, H, Dh, W), -1, -4)  # [..., W, 3, H, Dh]
        o = np.moveaxis(proj["o"].reshape(*lead, W, H, Dh), -3, -1)  # [..., H, Dh, W]
        fc1 = src.take(p + "mlp.fc1.weight", lead + (2 * M, W))
        fc2 = src.take(p + "mlp.fc2.weight", lead + (W, M))
        out[f"blocks_{i}"] = {
            "ln_1": {"scale": src.take(p + "input_layernorm.weight", (W,))},
            "ln_2": {"scale": src.take(p + "post_attention_layernorm.weight", (W,))},
            "attn": {"qkv_kernel": qkv, "out_kernel": o},
            "mlp": {"in_kernel": np.moveaxis(fc1.reshape(*lead, 2, M, W), -1, -3),
                    "out_kernel": np.swapaxes(fc2, -1, -2)},
        }
    if cfg.scan_layers:
        out = stack_layers(out, cfg.num_layers)
    return out


def from_hf(state: Mapping[str, Any], config: MoshiConfig) -> dict:
    """HF's ``MoshiForConditionalGeneration`` state dict (name -> array or torch tensor) -> our
    unboxed params (float32 numpy, the structure of ``param_shapes(config)``). ``audio_encoder.*``
    (Mimi) keys are skipped: :func:`split_hf_state` hands them out. Every other key is used
    exactly once; a missing, mis-shaped or left-over one raises naming it."""
    c = config
    _check_expressible(c)
    lm, _ = split_hf_state(state)
    src = _Source(lm)
    D, Dd, nc = c.dim, c.depformer_dim, c.dep_q
    permute = c.positional_embedding == "rope"
    params = {
        "text_emb": src.take("decoder.model.embed_tokens.weight", (c.text_card + 1, D)),
        "emb": np.stack([src.take(f"embed_tokens.{k}.weight", (c.card + 1, D))
                         for k in range(c.n_q)]),
        "transformer": _stack_from_hf(src, "decoder.model", c.temporal_config(), 0, permute),
        "out_norm": {"scale": src.take("decoder.model.norm.weight", (D,))},
        "text_linear": src.take("decoder.lm_head.weight", (c.text_card, D)).T,
        "depformer_in": np.swapaxes(
            src.take("depth_decoder.input_projections.weight", (nc, Dd, D)), 1, 2),
        "depformer_text_emb": src.take("depth_decoder.text_embed_tokens.weight",
                                       (c.text_card + 1, Dd)),
        "depformer": _stack_from_hf(src, "depth_decoder", c.depformer_config(), nc, False),
        "linears": np.swapaxes(src.take("depth_decoder.lm_heads.weight", (nc, c.card, Dd)),
                               1, 2),
    }
    if nc > 1:
        params["depformer_emb"] = np.stack([
            src.take(f"depth_decoder.embed_tokens.{k}.weight", (c.card + 1, Dd))
            for k in range(nc - 1)])
    src.check_all_used()
    return params


def _stack_to_hf(tree: dict, prefix: str, cfg, sets: int, permute: bool, out: dict):
    if cfg.scan_layers:
        tree = unstack_layers(tree)
    W, H, Dh, M = cfg.width, cfg.num_heads, cfg.head_dim, cfg.mlp_width
    lead = (sets,) if sets else ()
    for i in range(cfg.num_layers):
        b, p = tree[f"blocks_{i}"], f"{prefix}.layers.{i}."
        qkv = np.moveaxis(np.asarray(b["attn"]["qkv_kernel"]), -4, -1)  # [..., 3, H, Dh, W]
        qkv = qkv.reshape(*lead, 3, H * Dh, W)
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
        if permute:
            q, k = _rows_pairs_to_half(q, H), _rows_pairs_to_half(k, H)
        o = np.moveaxis(np.asarray(b["attn"]["out_kernel"]), -1, -3).reshape(*lead, W, H * Dh)
        for name, w in (("q", q), ("k", k), ("v", v), ("o", o)):
            out[f"{p}self_attn.{name}_proj.linear.weight"] = np.ascontiguousarray(w)
        fc1 = np.moveaxis(np.asarray(b["mlp"]["in_kernel"]), -3, -1).reshape(*lead, 2 * M, W)
        out[p + "mlp.fc1.weight"] = fc1
        out[p + "mlp.fc2.weight"] = np.swapaxes(np.asarray(b["mlp"]["out_kernel"]), -1, -2)
        out[p + "input_layernorm.weight"] = np.asarray(b["ln_1"]["scale"])
        out[p + "post_attention_layernorm.weight"] = np.asarray(b["ln_2"]["scale"])


def to_hf(params: Mapping[str, Any], config: MoshiConfig) -> dict:
    """Our (unboxed) params -> HF's ``MoshiForConditionalGeneration.state_dict()`` names and
    layouts (numpy; the LM only, no ``audio_encoder.*``). The inverse of :func:`from_hf`."""
    c = config
    _check_expressible(c)
    p = params
    permute = c.positional_embedding == "rope"
    out = {f"embed_tokens.{k}.weight": np.asarray(p["emb"][k]) for k in range(c.n_q)}
    out["decoder.model.embed_tokens.weight"] = np.asarray(p["text_emb"])
    _stack_to_hf(p["transformer"], "decoder.model", c.temporal_config(), 0, permute, out)
    out["decoder.model.norm.weight"] = np.asarray(p["out_norm"]["scale"])
    out["decoder.lm_head.weight"] = np.asarray(p["text_linear"]).T
    out["depth_decoder.text_embed_tokens.weight"] = np.asarray(p["depformer_text_emb"])
    for k in range(c.dep_q - 1):
        out[f"depth_decoder.embed_tokens.{k}.weight"] = np.asarray(p["depformer_emb"][k])
    out["depth_decoder.input_projections.weight"] = np.swapaxes(
        np.asarray(p["depformer_in"]), 1, 2)
    _stack_to_hf(p["depformer"], "depth_decoder", c.depformer_config(), c.dep_q, False, out)
    out["depth_decoder.lm_heads.weight"] = np.swapaxes(np.asarray(p["linears"]), 1, 2)
    return out
