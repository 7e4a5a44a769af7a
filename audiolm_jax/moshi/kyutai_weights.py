"""Kyutai's Moshi LM weights (``LMModel.state_dict()`` or a ``model.safetensors``) <-> the
params of :class:`audiolm_jax.moshi.model.MoshiLM`.

Kyutai's keys (``nn.Linear`` weights are ``[out, in]``) and where each goes::

    text_emb.weight                       [text_card+1, dim]   -> text_emb
    emb.{k}.weight                        [card+1, dim]        -> emb[k]
    out_norm.alpha                        [1, 1, dim]          -> out_norm/scale
    text_linear.weight                    [text_card, dim]     -> text_linear (transposed)
    {stack}.layers.{i}.norm1.alpha, norm2.alpha                -> blocks_i/ln_1, ln_2 scale
    {stack}.layers.{i}.self_attn.in_projs.{s}.weight [3 H Dh, W]
        rows in (q|k|v, head, d) order                         -> attn/qkv_kernel[s] [W, 3, H, Dh]
        (a checkpoint may hold the sets fused as ``in_proj_weight`` / ``in_proj.weight``,
        [S * 3 H Dh, W]: Kyutai's ``_load_hook`` splits it; so do we)
    {stack}.layers.{i}.self_attn.out_projs.{s}.weight [W, H Dh] (or fused ``out_proj.weight``)
                                                               -> attn/out_kernel[s] [H, Dh, W]
    {stack}.layers.{i}.gating(.{s}).linear_in.weight [2 M, W] (gate rows, then value rows)
                                                               -> mlp/in_kernel[s] [W, 2, M]
    {stack}.layers.{i}.gating(.{s}).linear_out.weight [W, M]   -> mlp/out_kernel[s] [M, W]
    {stack}.layers.{i}.layer_scale_1.scale, layer_scale_2.scale -> attn_scale, mlp_scale
    depformer_in.{j}.weight               [Dd, dim]            -> depformer_in[j] (transposed)
    depformer_text_emb.weight             [text_card+1, Dd]    -> depformer_text_emb
    depformer_emb.{k}.weight              [card+1, Dd]         -> depformer_emb[k]
    linears.{k}.weight                    [card, Dd]           -> linears[k] (transposed)

``{stack}`` is ``transformer`` (one weight set, ``s = 0``) or ``depformer`` (``S`` sets with
``depformer_weights_per_step``, a leading 'steps' axis on our side; the gating is then a
list ``gating.{s}``). Every key must be used exactly once: a missing one, a shape that does
not fit, or a key left over raises naming it.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from audiolm_jax.layers.transformer import stack_layers, unstack_layers
from audiolm_jax.moshi.config import MoshiConfig


class _Source:
    """A state dict that hands each key out once."""

    def __init__(self, state: Mapping[str, Any]):
        self.state = dict(state)
        self.used: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.state

    def take(self, key: str, shape=None) -> np.ndarray:
        if key in self.used:
            raise ValueError(f"Kyutai key {key!r} used twice")
        if key not in self.state:
            raise KeyError(f"missing Kyutai key {key!r}")
        self.used.add(key)
        value = np.asarray(self.state[key], np.float32)
        if shape is not None and tuple(value.shape) != tuple(shape):
            raise ValueError(f"Kyutai key {key!r} has shape {tuple(value.shape)}, "
                             f"expected {tuple(shape)}")
        return value

    def check_all_used(self):
        left = sorted(set(self.state) - self.used)
        if left:
            raise ValueError(f"unexpected Kyutai keys (not used): {left}")


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor (bfloat16 included)
        value = value.detach().float().cpu().numpy()
    return np.asarray(value, np.float32)


def _attention_sets(src: _Source, prefix: str, name: str, sets: int, rows: int, width: int
                    ) -> np.ndarray:
    """[sets, rows, width]: ``{prefix}{name}s.{s}.weight`` or the fused forms."""
    fused = [f"{prefix}{name}_weight", f"{prefix}{name}.weight"]
    for key in fused:
        if src.has(key):
            return src.take(key, (sets * rows, width)).reshape(sets, rows, width)
    return np.stack([src.take(f"{prefix}{name}s.{s}.weight", (rows, width))
                     for s in range(sets)])


def _stack_from_kyutai(src: _Source, prefix: str, cfg, num_layers: int) -> dict:
    """One of Kyutai's StreamingTransformers -> our TransformerStack tree (unscanned)."""
    W, H, Dh, M = cfg.width, cfg.num_heads, cfg.head_dim, cfg.mlp_width
    sets = max(1, cfg.weights_per_step)
    out = {}
    for i in range(num_layers):
        p = f"{prefix}.layers.{i}."
        qkv = _attention_sets(src, p + "self_attn.", "in_proj", sets, 3 * H * Dh, W)
        qkv = qkv.reshape(sets, 3, H, Dh, W).transpose(0, 4, 1, 2, 3)  # [S, W, 3, H, Dh]
        o = _attention_sets(src, p + "self_attn.", "out_proj", sets, W, H * Dh)
        o = o.reshape(sets, W, H, Dh).transpose(0, 2, 3, 1)  # [S, H, Dh, W]
        if cfg.weights_per_step:
            g_in = np.stack([src.take(f"{p}gating.{s}.linear_in.weight", (2 * M, W))
                             for s in range(sets)])
            g_out = np.stack([src.take(f"{p}gating.{s}.linear_out.weight", (W, M))
                              for s in range(sets)])
        else:
            g_in = src.take(p + "gating.linear_in.weight", (2 * M, W))[None]
            g_out = src.take(p + "gating.linear_out.weight", (W, M))[None]
        g_in = g_in.reshape(sets, 2, M, W).transpose(0, 3, 1, 2)  # [S, W, 2, M]
        g_out = g_out.transpose(0, 2, 1)  # [S, M, W]
        one = (lambda a: a) if cfg.weights_per_step else (lambda a: a[0])
        block = {
            "ln_1": {"scale": src.take(p + "norm1.alpha", (1, 1, W)).reshape(W)},
            "ln_2": {"scale": src.take(p + "norm2.alpha", (1, 1, W)).reshape(W)},
            "attn": {"qkv_kernel": one(qkv), "out_kernel": one(o)},
            "mlp": {"in_kernel": one(g_in), "out_kernel": one(g_out)},
        }
        if cfg.layer_scale is not None:
            block["attn_scale"] = src.take(p + "layer_scale_1.scale", (W,))
            block["mlp_scale"] = src.take(p + "layer_scale_2.scale", (W,))
        out[f"blocks_{i}"] = block
    if cfg.scan_layers:
        out = stack_layers(out, num_layers)
    return out


def from_kyutai(state: Mapping[str, Any], config: MoshiConfig) -> dict:
    """Kyutai's state dict (name -> array or torch tensor) -> our params (float32 numpy).
    Raises naming the key when one is missing, mis-shaped, or not used."""
    c = config
    src = _Source({k: _to_numpy(v) for k, v in state.items()})
    D, Dd = c.dim, c.depformer_dim
    params = {
        "text_emb": src.take("text_emb.weight", (c.text_card + 1, D)),
        "emb": np.stack([src.take(f"emb.{k}.weight", (c.card + 1, D)) for k in range(c.n_q)]),
        "transformer": _stack_from_kyutai(src, "transformer", c.temporal_config(), c.num_layers),
        "out_norm": {"scale": src.take("out_norm.alpha", (1, 1, D)).reshape(D)},
        "text_linear": src.take("text_linear.weight", (c.text_card, D)).T,
    }
    if c.dep_q:
        params["depformer_in"] = np.stack([
            src.take(f"depformer_in.{j}.weight", (Dd, D)).T for j in range(c.depformer_in_count)])
        params["depformer_text_emb"] = src.take("depformer_text_emb.weight",
                                                (c.text_card + 1, Dd))
        if c.dep_q > 1:
            params["depformer_emb"] = np.stack([
                src.take(f"depformer_emb.{k}.weight", (c.card + 1, Dd))
                for k in range(c.dep_q - 1)])
        params["depformer"] = _stack_from_kyutai(src, "depformer", c.depformer_config(),
                                                 c.depformer_num_layers)
        params["linears"] = np.stack([src.take(f"linears.{k}.weight", (c.card, Dd)).T
                                      for k in range(c.dep_q)])
    src.check_all_used()
    return params


def _stack_to_kyutai(tree: dict, prefix: str, cfg, out: dict):
    if cfg.scan_layers:
        tree = unstack_layers(tree)
    W, H, Dh, M = cfg.width, cfg.num_heads, cfg.head_dim, cfg.mlp_width
    sets = max(1, cfg.weights_per_step)
    many = lambda a: np.asarray(a) if cfg.weights_per_step else np.asarray(a)[None]
    for i in range(cfg.num_layers):
        b, p = tree[f"blocks_{i}"], f"{prefix}.layers.{i}."
        qkv = many(b["attn"]["qkv_kernel"]).transpose(0, 2, 3, 4, 1).reshape(sets, 3 * H * Dh, W)
        o = many(b["attn"]["out_kernel"]).transpose(0, 3, 1, 2).reshape(sets, W, H * Dh)
        g_in = many(b["mlp"]["in_kernel"]).transpose(0, 2, 3, 1).reshape(sets, 2 * M, W)
        g_out = many(b["mlp"]["out_kernel"]).transpose(0, 2, 1)
        for s in range(sets):
            out[f"{p}self_attn.in_projs.{s}.weight"] = qkv[s]
            out[f"{p}self_attn.out_projs.{s}.weight"] = o[s]
            g = f"{p}gating.{s}." if cfg.weights_per_step else f"{p}gating."
            out[g + "linear_in.weight"] = g_in[s]
            out[g + "linear_out.weight"] = g_out[s]
        out[p + "norm1.alpha"] = np.asarray(b["ln_1"]["scale"]).reshape(1, 1, W)
        out[p + "norm2.alpha"] = np.asarray(b["ln_2"]["scale"]).reshape(1, 1, W)
        if cfg.layer_scale is not None:
            out[p + "layer_scale_1.scale"] = np.asarray(b["attn_scale"])
            out[p + "layer_scale_2.scale"] = np.asarray(b["mlp_scale"])


def to_kyutai(params: Mapping[str, Any], config: MoshiConfig) -> dict:
    """Our (unboxed) params -> Kyutai's ``LMModel.state_dict()`` names and layouts (numpy;
    per-step attention as ``in_projs.{s}`` / ``out_projs.{s}``). The inverse of
    :func:`from_kyutai`."""
    c = config
    p = {k: v for k, v in params.items()}
    out = {"text_emb.weight": np.asarray(p["text_emb"]),
           "out_norm.alpha": np.asarray(p["out_norm"]["scale"]).reshape(1, 1, c.dim),
           "text_linear.weight": np.asarray(p["text_linear"]).T}
    for k in range(c.n_q):
        out[f"emb.{k}.weight"] = np.asarray(p["emb"][k])
    _stack_to_kyutai(p["transformer"], "transformer", c.temporal_config(), out)
    if c.dep_q:
        for j in range(c.depformer_in_count):
            out[f"depformer_in.{j}.weight"] = np.asarray(p["depformer_in"][j]).T
        out["depformer_text_emb.weight"] = np.asarray(p["depformer_text_emb"])
        for k in range(c.dep_q - 1):
            out[f"depformer_emb.{k}.weight"] = np.asarray(p["depformer_emb"][k])
        _stack_to_kyutai(p["depformer"], "depformer", c.depformer_config(), out)
        for k in range(c.dep_q):
            out[f"linears.{k}.weight"] = np.asarray(p["linears"][k]).T
    return out


def load_safetensors(path: str, config: MoshiConfig) -> dict:
    """Our params from a Kyutai ``model.safetensors`` (bfloat16 read as float32)."""
    from safetensors.numpy import load_file  # optional dependency; bf16 needs ml_dtypes

    return from_kyutai(load_file(path), config)
