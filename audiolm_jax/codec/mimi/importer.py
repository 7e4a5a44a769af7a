"""``import-mimi``: released Mimi weights (safetensors) -> a codec workdir.

Two layouts are read:

* **transformers** ``MimiModel``: both its ``state_dict()`` names
  (``encoder.encoder_seanet.layers.N...``) and the names ``save_pretrained`` / the Hub files use
  (``encoder.layers.N...``, ``encoder_transformer...``). Hyperparameters come from the
  ``config.json`` beside the weights.
* **Kyutai** (``moshi``; ``encoder.model.N.conv.conv.weight``, fused ``in_projs.0`` attention,
  ``quantizer.rvq_first`` / ``rvq_rest``). Hyperparameters are the release's
  (``mimi_config()``); weight shapes are checked against them.

Kyutai names are first renamed to the transformers ``state_dict`` names (splitting the fused
q/k/v projection and permuting query/key rows from interleaved to half-split rotary pairs), so a
single table maps transformers names onto our parameter tree.

The workdir gets ``config.json`` and a step-0 checkpoint in the regular ``CodecState`` format,
so ``encode``/``decode``/``reconstruct``/``tokenize``/``generate`` load it and ``train-codec``
can fine-tune from it. EMA codebook buffers map to ``vq_stats``: ``embed_sum`` and
``cluster_usage`` (-> ``cluster_size``) are kept, and the lookup codebook is the release's
``embed_sum / max(cluster_usage, 1e-5)``.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from audiolm_jax.quantization import STATS

HF_LAYOUT = "transformers"
KYUTAI_LAYOUT = "kyutai"


class MimiImportError(ValueError):
    """A problem with the weights file or its config: the message names the file and key."""


# ------------------------------------------------------------------------ reading


def read_weights(path: str) -> dict[str, np.ndarray]:
    if not os.path.isfile(path):
        raise MimiImportError(f"weights file {path!r} does not exist")
    from safetensors.numpy import load_file

    try:
        return dict(load_file(path))
    except Exception as e:  # safetensors raises its own error types
        raise MimiImportError(f"{path}: not a readable safetensors file ({e})") from None


def detect_layout(tensors: dict[str, np.ndarray], path: str) -> str:
    keys = tensors.keys()
    if any(k.startswith("quantizer.rvq_first.") for k in keys) and any(
            k.startswith("encoder.model.") for k in keys):
        return KYUTAI_LAYOUT
    if any(k.startswith("quantizer.semantic_residual_vector_quantizer.") for k in keys):
        return HF_LAYOUT
    sample = ", ".join(sorted(keys)[:3])
    raise MimiImportError(
        f"{path}: unknown weights layout (expected transformers MimiModel keys such as "
        f"'quantizer.semantic_residual_vector_quantizer...' or Kyutai keys such as "
        f"'quantizer.rvq_first...'); first keys: {sample}")


# transformers' save_pretrained / Hub names -> its state_dict names.
_HF_LEGACY_PREFIXES = (
    ("encoder.layers.", "encoder.encoder_seanet.layers."),
    ("encoder_transformer.", "encoder.encoder_transformer."),
    ("downsample.", "encoder.downsample."),
    ("upsample.", "decoder.upsample."),
    ("decoder_transformer.", "decoder.decoder_transformer."),
    ("decoder.layers.", "decoder.decoder_seanet.layers."),
)


def normalize_hf_names(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for key, value in tensors.items():
        for old, new in _HF_LEGACY_PREFIXES:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def _interleaved_to_half(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Rows of a q/k projection ``[H * D, in]``: per head, pairs (2i, 2i+1) -> (i, D/2 + i)."""
    hd = weight.shape[0] // num_heads
    order = np.concatenate([np.arange(0, hd, 2), np.arange(1, hd, 2)])
    return weight.reshape(num_heads, hd, -1)[:, order].reshape(weight.shape)


_KYUTAI_RULES: tuple[tuple[str, str], ...] = (
    (r"^encoder\.model\.(\d+)\.conv\.conv\.", r"encoder.encoder_seanet.layers.\1.conv."),
    (r"^encoder\.model\.(\d+)\.(block\.\d+|shortcut)\.conv\.conv\.",
     r"encoder.encoder_seanet.layers.\1.\2.conv."),
    (r"^decoder\.model\.(\d+)\.conv\.conv\.", r"decoder.decoder_seanet.layers.\1.conv."),
    (r"^decoder\.model\.(\d+)\.convtr\.convtr\.", r"decoder.decoder_seanet.layers.\1.conv."),
    (r"^decoder\.model\.(\d+)\.(block\.\d+|shortcut)\.conv\.conv\.",
     r"decoder.decoder_seanet.layers.\1.\2.conv."),
    (r"^(en|de)coder_transformer\.transformer\.layers\.(\d+)\.self_attn\.(out_projs\.0|out_proj)\.",
     r"\1coder.\1coder_transformer.layers.\2.self_attn.o_proj."),
    (r"^(en|de)coder_transformer\.transformer\.layers\.(\d+)\.norm1\.",
     r"\1coder.\1coder_transformer.layers.\2.input_layernorm."),
    (r"^(en|de)coder_transformer\.transformer\.layers\.(\d+)\.norm2\.",
     r"\1coder.\1coder_transformer.layers.\2.post_attention_layernorm."),
    (r"^(en|de)coder_transformer\.transformer\.layers\.(\d+)\.linear1\.",
     r"\1coder.\1coder_transformer.layers.\2.mlp.fc1."),
    (r"^(en|de)coder_transformer\.transformer\.layers\.(\d+)\.linear2\.",
     r"\1coder.\1coder_transformer.layers.\2.mlp.fc2."),
    (r"^(en|de)coder_transformer\.transformer\.layers\.(\d+)\.layer_scale_1\.",
     r"\1coder.\1coder_transformer.layers.\2.self_attn_layer_scale."),
    (r"^(en|de)coder_transformer\.transformer\.layers\.(\d+)\.layer_scale_2\.",
     r"\1coder.\1coder_transformer.layers.\2.mlp_layer_scale."),
    (r"^downsample\.conv\.conv\.conv\.", "encoder.downsample.conv."),
    (r"^upsample\.convtr\.convtr\.convtr\.", "decoder.upsample.conv."),
    (r"^quantizer\.rvq_first\.", "quantizer.semantic_residual_vector_quantizer."),
    (r"^quantizer\.rvq_rest\.", "quantizer.acoustic_residual_vector_quantizer."),
)
_FUSED_QKV = re.compile(
    r"^(en|de)coder_transformer\.transformer\.layers\.(\d+)\.self_attn\.(in_projs\.0\.weight|in_proj_weight)$")


def kyutai_to_hf_names(tensors: dict[str, np.ndarray], num_heads: int) -> dict[str, np.ndarray]:
    """Kyutai (moshi) names and conventions -> transformers ``state_dict`` names."""
    out = {}
    for key, value in tensors.items():
        fused = _FUSED_QKV.match(key)
        if fused:
            side, layer = fused.group(1), fused.group(2)
            prefix = f"{side}coder.{side}coder_transformer.layers.{layer}.self_attn."
            q, k, v = np.split(value, 3, axis=0)
            out[prefix + "q_proj.weight"] = _interleaved_to_half(q, num_heads)
            out[prefix + "k_proj.weight"] = _interleaved_to_half(k, num_heads)
            out[prefix + "v_proj.weight"] = v
            continue
        for pattern, repl in _KYUTAI_RULES:
            key, n = re.subn(pattern, repl, key)
            if n:
                break
        key = (key.replace("._codebook.embedding_sum", ".codebook.embed_sum")
               .replace("._codebook.cluster_usage", ".codebook.cluster_usage")
               .replace("._codebook._initialized", ".codebook.initialized")
               .replace("_residual_vector_quantizer.vq.layers.", "_residual_vector_quantizer.layers."))
        out[key] = value
    return out


# ------------------------------------------------------------------------ config


def config_from_hf_json(path: str, num_codebooks: int) -> ml_collections.ConfigDict:
    """Our Mimi config from a transformers ``MimiConfig`` JSON; refuses what we do not build."""
    from audiolm_jax.codec.config import mimi_config

    if not os.path.isfile(path):
        raise MimiImportError(
            f"{path} is missing: transformers-layout weights need their config.json beside them")
    try:
        with open(path) as f:
            hf = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise MimiImportError(f"{path}: not a readable JSON file ({e})") from None

    def get(key, default=None):
        if key in hf:
            return hf[key]
        if default is None:
            raise MimiImportError(f"{path}: key {key!r} is missing")
        return default

    def require(key, ok, expected):
        if not ok(get(key, expected)):
            raise MimiImportError(f"{path}: {key}={hf.get(key)!r} is not supported (expected {expected})")

    require("use_causal_conv", bool, True)
    require("audio_channels", lambda v: v == 1, 1)
    require("hidden_act", lambda v: v == "gelu", "gelu")
    hidden = int(get("hidden_size", 512))
    heads = int(get("num_attention_heads", 8))
    require("num_key_value_heads", lambda v: v == heads, heads)
    require("head_dim", lambda v: v in (None, hidden // heads), hidden // heads)
    require("upsample_groups", lambda v: v in (1, hidden), f"1 or hidden_size={hidden}")
    codebook_dim = int(get("codebook_dim", 256))
    require("vector_quantization_hidden_dimension", lambda v: v == codebook_dim,
            f"codebook_dim={codebook_dim}")
    require("trim_right_ratio", lambda v: float(v) == 1.0, 1.0)
    require("attention_bias", lambda v: not v, False)
    rope = hf.get("rope_parameters") or {}
    theta = float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))
    total = int(get("num_quantizers", 32))
    semantic = int(get("num_semantic_quantizers", 1))
    if semantic != 1:
        raise MimiImportError(f"{path}: num_semantic_quantizers={semantic} (only 1 is supported)")
    if not 2 <= num_codebooks <= total:
        raise MimiImportError(f"--num_codebooks={num_codebooks}: {path} describes {total} "
                              f"codebooks (1 semantic + {total - 1} acoustic); use 2..{total}")
    c = mimi_config(num_codebooks)
    c.model.update(
        n_filters=int(get("num_filters", 64)),
        ratios=tuple(int(r) for r in get("upsampling_ratios", [8, 6, 5, 4])),
        dimension=hidden, n_residual_layers=int(get("num_residual_layers", 1)),
        dilation_base=int(get("dilation_growth_rate", 2)), kernel_size=int(get("kernel_size", 7)),
        residual_kernel_size=int(get("residual_kernel_size", 3)),
        last_kernel_size=int(get("last_kernel_size", 3)), compress=int(get("compress", 2)),
        true_skip=not bool(get("use_conv_shortcut", False)), weight_norm=False)
    c.model.pad_mode = str(get("pad_mode", "constant"))
    c.model.transformer_layers = int(get("num_hidden_layers", 8))
    c.model.transformer_heads = heads
    c.model.transformer_ffn_dim = int(get("intermediate_size", 2048))
    c.model.transformer_context = int(get("sliding_window", 250))
    c.model.rope_max_period = theta
    c.model.layer_scale = float(get("layer_scale_initial_scale", 0.01))
    c.model.norm_eps = float(get("norm_eps", 1e-5))
    c.model.upsample_channelwise = int(get("upsample_groups", hidden)) == hidden
    c.quantizer.update(codebook_size=int(get("codebook_size", 2048)), codebook_dim=codebook_dim)
    c.data.sample_rate = int(get("sampling_rate", 24000))
    return c


def _frame_downsample_from_weights(tensors: dict, config: Any, path: str) -> None:
    """The 2x of the release is a kernel of 4; other strides show in the kernel size."""
    w = tensors.get("encoder.downsample.conv.weight")
    if w is None:
        config.model.frame_downsample = 1
    else:
        if w.ndim != 3 or w.shape[-1] % 2:
            raise MimiImportError(f"{path}: tensor 'downsample' has shape {w.shape}; expected "
                                  "[dim, dim, 2 * stride]")
        config.model.frame_downsample = int(w.shape[-1] // 2)


# ------------------------------------------------------------------------ mapping


def _conv(w: np.ndarray) -> np.ndarray:  # torch Conv1d [out, in/g, K] -> ours [K, in/g, out]
    return w.transpose(2, 1, 0)


def _conv_transpose(groups: int) -> Callable[[np.ndarray], np.ndarray]:
    def convert(w: np.ndarray) -> np.ndarray:  # torch [in, out/g, K] -> ours [K, in/g, out]
        c_in, co, k = w.shape
        ci = c_in // groups
        return w.reshape(groups, ci, co, k).transpose(3, 1, 0, 2).reshape(k, ci, groups * co)
    return convert


def _linear(w: np.ndarray) -> np.ndarray:  # torch Linear [out, in] -> ours [in, out]
    return w.T


def _same(w: np.ndarray) -> np.ndarray:
    return w


def _conv1x1_as_dense(w: np.ndarray) -> np.ndarray:  # torch Conv1d k=1 [out, in, 1] -> [in, out]
    return w[:, :, 0].T


def seanet_table(ratios: tuple, n_res: int, true_skip: bool, hf_prefix: str, ours: tuple,
                 decoder: bool) -> dict:
    """(our param path) -> (hf name prefix, converter) for one SEANet, following the order in
    which transformers' (and Kyutai's) ``layers`` lists are built (ELUs take indices too)."""
    table = {}

    def conv(idx, path, convert=_conv):
        table[ours + path + ("kernel",)] = (f"{hf_prefix}.{idx}.conv.weight", convert)
        table[ours + path + ("bias",)] = (f"{hf_prefix}.{idx}.conv.bias", _same)

    def res(idx, path):
        conv(f"{idx}.block.1", path + ("conv_0",))
        conv(f"{idx}.block.3", path + ("conv_1",))
        if not true_skip:
            conv(f"{idx}.shortcut", path + ("shortcut",))

    conv(0, ("conv_in",))
    idx = 1
    order = tuple(ratios) if decoder else tuple(reversed(ratios))
    for i, _ in enumerate(order):
        if decoder:
            idx += 1  # ELU
            conv(idx, (f"block_{i}_up",), _conv_transpose(1))
            idx += 1
            for j in range(n_res):
                res(idx, (f"block_{i}_res_{j}",))
                idx += 1
        else:
            for j in range(n_res):
                res(idx, (f"block_{i}_res_{j}",))
                idx += 1
            idx += 1  # ELU
            conv(idx, (f"block_{i}_down",))
            idx += 1
    idx += 1  # ELU
    conv(idx, ("conv_out",))
    return table


def transformer_table(num_layers: int, heads: int, hf_prefix: str, ours: tuple) -> dict:
    """Entries for one transformer stack; its fused qkv kernel reads three tensors."""

    def qkv(q, k, v):  # three torch Linear [H*D, W] -> ours [W, 3, H, D]
        W = q.shape[1]
        return np.stack([q.T, k.T, v.T], axis=1).reshape(W, 3, heads, -1)

    def out(o):  # torch Linear [W, H*D] -> ours [H, D, W]
        return o.T.reshape(heads, -1, o.shape[0])

    table = {}
    for l in range(num_layers):
        src, dst = f"{hf_prefix}.layers.{l}.", ours + (f"blocks_{l}",)
        table[dst + ("attn", "qkv_kernel")] = (
            tuple(src + f"self_attn.{n}_proj.weight" for n in "qkv"), qkv)
        table[dst + ("attn", "out_kernel")] = (src + "self_attn.o_proj.weight", out)
        table[dst + ("mlp", "in_kernel")] = (src + "mlp.fc1.weight", _linear)
        table[dst + ("mlp", "out_kernel")] = (src + "mlp.fc2.weight", _linear)
        for norm, hf_norm in (("ln_1", "input_layernorm"), ("ln_2", "post_attention_layernorm")):
            table[dst + (norm, "scale")] = (src + hf_norm + ".weight", _same)
            table[dst + (norm, "bias")] = (src + hf_norm + ".bias", _same)
        table[dst + ("attn_scale",)] = (src + "self_attn_layer_scale.scale", _same)
        table[dst + ("mlp_scale",)] = (src + "mlp_layer_scale.scale", _same)
    return table


def param_table(config: Any) -> dict:
    """Our param path (tuple) -> (transformers state_dict name, converter)."""
    m = config.model
    ratios, n_res, skip = tuple(m.ratios), int(m.n_residual_layers), bool(m.true_skip)
    dim = int(m.dimension)
    table = {}
    table.update(seanet_table(ratios, n_res, skip, "encoder.encoder_seanet.layers",
                              ("encoder", "seanet"), decoder=False))
    table.update(seanet_table(ratios, n_res, skip, "decoder.decoder_seanet.layers",
                              ("decoder", "seanet"), decoder=True))
    layers, heads = int(m.transformer_layers), int(m.transformer_heads)
    if layers:
        for side in ("encoder", "decoder"):
            table.update(transformer_table(layers, heads, f"{side}.{side}_transformer",
                                           (side, "transformer")))
    if int(m.frame_downsample) > 1:
        table[("encoder", "downsample", "kernel")] = ("encoder.downsample.conv.weight", _conv)
        groups = dim if m.upsample_channelwise else 1
        table[("decoder", "upsample", "kernel")] = ("decoder.upsample.conv.weight",
                                                    _conv_transpose(groups))
    for ours, hf in (("semantic", "semantic"), ("acoustic", "acoustic")):
        prefix = f"quantizer.{hf}_residual_vector_quantizer."
        table[("quantizer", ours, "in_proj", "kernel")] = (prefix + "input_proj.weight",
                                                           _conv1x1_as_dense)
        table[("quantizer", ours, "out_proj", "kernel")] = (prefix + "output_proj.weight",
                                                            _conv1x1_as_dense)
    return table


def _path_names(path) -> tuple:
    return tuple(getattr(p, "key", getattr(p, "name", p)) for p in path)


def _take(tensors: dict, name: str, path: str) -> np.ndarray:
    if name not in tensors:
        raise MimiImportError(f"{path}: tensor {name!r} is missing")
    return np.asarray(tensors[name], np.float32)


def build_variables(tensors: dict, config: Any, abstract: dict, path: str) -> tuple[dict, dict]:
    """(params, vq_stats) shaped exactly like ``abstract`` (the model's eval_shape'd variables)."""
    table = param_table(config)

    def fill(key_path, leaf):
        names = _path_names(key_path)
        if names not in table:
            raise MimiImportError(f"internal: no source tensor for parameter {'/'.join(names)}")
        name, convert = table[names]
        sources = name if isinstance(name, tuple) else (name,)
        arrays = [_take(tensors, n, path) for n in sources]
        try:
            value = convert(*arrays)
        except ValueError:  # a reshape of a tensor of the wrong size
            value = np.concatenate([a.ravel() for a in arrays])
        if value.shape != tuple(leaf.shape):
            raise MimiImportError(
                f"{path}: tensor {name!r} has the wrong shape for this config "
                f"(converted {value.shape}, expected {tuple(leaf.shape)})")
        return jnp.asarray(value, leaf.dtype)

    params = jax.tree_util.tree_map_with_path(fill, abstract["params"])

    def stats(level_tree, hf_prefix):
        usage = _take(tensors, hf_prefix + "cluster_usage", path)
        embed_sum = _take(tensors, hf_prefix + "embed_sum", path)
        want = tuple(level_tree["embed_sum"].shape)
        if embed_sum.shape != want or usage.shape != want[:1]:
            raise MimiImportError(
                f"{path}: codebook {hf_prefix!r} has embed_sum {embed_sum.shape} and cluster_usage "
                f"{usage.shape}; this config needs {want} and {want[:1]}")
        codebook = embed_sum / np.maximum(usage, 1e-5)[:, None]  # the release's lookup table
        return {"initialized": jnp.array(True), "cluster_size": jnp.asarray(usage),
                "embed_sum": jnp.asarray(embed_sum), "codebook": jnp.asarray(codebook),
                "step": jnp.array(0, jnp.int32)}

    q = abstract[STATS]["quantizer"]
    vq_stats = {"quantizer": {}}
    for ours, hf in (("semantic", "semantic"), ("acoustic", "acoustic")):
        if ours not in q:
            continue
        vq_stats["quantizer"][ours] = {
            lvl: stats(tree, f"quantizer.{hf}_residual_vector_quantizer.layers.{lvl.split('_')[1]}.codebook.")
            for lvl, tree in q[ours].items()}
    return params, vq_stats


# ------------------------------------------------------------------------ entry points


def load_mimi_variables(weights: str, num_codebooks: int = 8, config_json: str | None = None,
                        kyutai_config: Any = None) -> tuple[ml_collections.ConfigDict, dict, dict]:
    """``(config, params, vq_stats)`` for a Mimi safetensors file, either layout.

    ``config_json``: the transformers config (default: ``config.json`` beside the weights).
    ``kyutai_config``: our config for Kyutai-layout weights of a non-released size (default:
    ``mimi_config(num_codebooks)``, the release)."""
    from audiolm_jax.codec.config import mimi_config
    from audiolm_jax.codec.model import build_codec

    tensors = read_weights(weights)
    layout = detect_layout(tensors, weights)
    if layout == HF_LAYOUT:
        config_json = config_json or os.path.join(os.path.dirname(os.path.abspath(weights)),
                                                  "config.json")
        config = config_from_hf_json(config_json, int(num_codebooks))
        tensors = normalize_hf_names(tensors)
    else:
        if not 2 <= int(num_codebooks) <= 32:
            raise MimiImportError(f"--num_codebooks={num_codebooks}: Kyutai's Mimi has 32 "
                                  "codebooks; use 2..32")
        config = ml_collections.ConfigDict(kyutai_config.to_dict()) if kyutai_config is not None \
            else mimi_config(int(num_codebooks))
        config.quantizer.num_levels = int(num_codebooks)
        tensors = kyutai_to_hf_names(tensors, int(config.model.transformer_heads))
    _frame_downsample_from_weights(tensors, config, weights)
    config.train.name = "mimi_imported"

    model = build_codec(config)
    dummy = jnp.zeros((1, 4 * _hop(config)), jnp.float32)
    abstract = jax.eval_shape(lambda k: model.init({"params": k, "vq": k}, dummy),
                              jax.random.PRNGKey(0))
    from audiolm_jax.train.loop import strip_boxes

    abstract = strip_boxes(abstract)
    params, vq_stats = build_variables(tensors, config, abstract, weights)
    return config, params, vq_stats


def _hop(config) -> int:
    from audiolm_jax.codec.model import hop_length

    return hop_length(config)


def write_workdir(config: Any, params: dict, vq_stats: dict, workdir: str) -> str:
    """``config.json`` + a step-0 ``CodecState`` checkpoint; returns the checkpoint folder."""
    from audiolm_jax.codec.task import CodecState, CodecTask
    from audiolm_jax.train.checkpoint import Checkpointer
    from audiolm_jax.train.loop import strip_boxes
    from audiolm_jax.workdir import save_config

    if os.path.isdir(os.path.join(workdir, "checkpoints")) and os.listdir(
            os.path.join(workdir, "checkpoints")):
        raise MimiImportError(f"workdir {workdir!r} already holds checkpoints; import into a new one")
    task = CodecTask(config)
    key = jax.random.PRNGKey(0)
    state = CodecState(step=jnp.zeros((), jnp.int32), params=params, vq_stats=vq_stats,
                       opt_state=task.optimizer.init(params), rng=key)
    if jax.tree.structure(state) != jax.tree.structure(
            strip_boxes(jax.eval_shape(task.init_state, key))):
        # The config trains more than the codec (a discriminator, a balancer, a distillation
        # head): initialise everything, then put the released weights in.
        full = strip_boxes(jax.jit(task.init_state)(key))
        state = full.replace(params=params, vq_stats=vq_stats, opt_state=state.opt_state)
    save_config(config, workdir)
    directory = os.path.join(workdir, "checkpoints")
    checkpointer = Checkpointer(directory, async_save=False)
    checkpointer.save(0, state)
    checkpointer.close()
    return directory


def import_mimi(weights: str, workdir: str, num_codebooks: int = 8,
                config_json: str | None = None, kyutai_config: Any = None) -> dict:
    """The ``import-mimi`` command: returns a JSON-able summary."""
    config, params, vq_stats = load_mimi_variables(weights, num_codebooks, config_json,
                                                   kyutai_config)
    write_workdir(config, params, vq_stats, workdir)
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    return {"workdir": workdir, "num_codebooks": int(config.quantizer.num_levels),
            "sample_rate": int(config.data.sample_rate),
            "frame_rate_hz": config.data.sample_rate / _hop(config), "params": n}
