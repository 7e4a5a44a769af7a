"""Validation of experiment configs before anything compiles: errors name the offending key.

(Whether a workdir holds the expected model, and a resumed run the same shapes, is checked in
:mod:`audiolm_jax.workdir`.)
"""

from __future__ import annotations

import os
from typing import Any, Iterable

from audiolm_jax.codec.registry import codec_config
from audiolm_jax.codec.teachers import make_teacher
from audiolm_jax.errors import ConfigError
from audiolm_jax.layers.attention import KINDS as ATTENTION_KINDS
from audiolm_jax.layers.transformer import REMAT_POLICIES
from audiolm_jax.lm.patterns import get_layout, layout_names
from audiolm_jax.quantization import quantizer_config
from audiolm_jax.train.mesh import resolve_mesh_shape


def _get(config: Any, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError):
            raise ConfigError(f"config key '{dotted}' is missing") from None
    return node


def _positive_int(config, key, allow_zero=False):
    value = _get(config, key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"config key '{key}' must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _number(config, key, lo=None, hi=None, lo_open=False):
    value = _get(config, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise ConfigError(f"config key '{key}' must be {'>' if lo_open else '>='} {lo}, got {value}")
    if hi is not None and value > hi:
        raise ConfigError(f"config key '{key}' must be <= {hi}, got {value}")


def _choice(config, key, choices: Iterable[str]):
    value = _get(config, key)
    if value not in choices:
        raise ConfigError(f"config key '{key}' must be one of {sorted(choices)}, got {value!r}")


def check_data_source(config: Any, key: str = "data.source") -> None:
    source = _get(config, key)
    if not isinstance(source, str) or not source:
        raise ConfigError(f"config key '{key}' must be 'synthetic', a folder or 'tfds:NAME'")
    if source == "synthetic" or source.startswith("tfds:"):
        return
    if not os.path.isdir(source):
        raise ConfigError(f"config key '{key}': folder {source!r} does not exist")


def check_mesh(config: Any, num_devices: int | None = None) -> None:
    for k in ("mesh.data", "mesh.fsdp", "mesh.tensor"):
        v = _get(config, k)
        if isinstance(v, bool) or not isinstance(v, int) or v == 0 or v < -1:
            raise ConfigError(f"config key '{k}' must be a positive integer or -1, got {v!r}")
    if num_devices is not None:
        try:
            resolve_mesh_shape(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, num_devices)
        except ValueError as e:
            raise ConfigError(f"config key 'mesh': {e}") from None


def _check_mesh_and_batch(config: Any, num_devices: int | None) -> None:
    """:func:`check_mesh`, and with ``num_devices`` a ``train.batch_size`` that the mesh's
    data * fsdp devices divide."""
    check_mesh(config, num_devices)
    if num_devices is not None:
        d, f, _ = resolve_mesh_shape(config.mesh.data, config.mesh.fsdp, config.mesh.tensor,
                                     num_devices)
        if config.train.batch_size % (d * f):
            raise ConfigError(f"config key 'train.batch_size' ({config.train.batch_size}) must be "
                              f"divisible by mesh data*fsdp = {d * f}")
        n = config.train.get("gradient_accumulation_steps", 1)
        if config.train.batch_size % (d * f * n):
            raise ConfigError(f"config key 'train.gradient_accumulation_steps' ({n}): each of "
                              f"the mesh's data*fsdp = {d * f} shards of train.batch_size "
                              f"({config.train.batch_size}) must split into {n} microbatches")


def check_quantizer(config: Any) -> None:
    """The ``quantizer`` section, as its kind's typed config validates it (quantization/)."""
    try:
        quantizer_config(_get(config, "quantizer"))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_codec_model(config: Any) -> None:
    """The ``model`` section, as its codec kind's typed config validates it (an unknown kind
    is refused naming the registered ones; codec/registry.py)."""
    try:
        codec_config(_get(config, "model"))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_codec_config(config: Any, num_devices: int | None = None) -> None:
    """Raises ConfigError naming the first bad key of a codec config."""
    for key in ("train.num_steps", "train.batch_size", "train.checkpoint_every",
                "data.sample_rate", "data.crop_length"):
        _positive_int(config, key)
    _positive_int(config, "train.seed", allow_zero=True)
    if "worker_processes" in config.data:  # older workdirs' configs lack it
        _positive_int(config, "data.worker_processes", allow_zero=True)
    check_codec_model(config)
    check_quantizer(config)
    _number(config, "optim.learning_rate", 0.0, lo_open=True)
    for key in ("loss.spectral_weight", "loss.mel_weight", "loss.l1_weight", "loss.mse_weight",
                "loss.commit_weight"):
        _number(config, key, 0.0)
    hop = codec_config(config.model).hop_length
    if config.data.crop_length < hop:
        raise ConfigError(f"config key 'data.crop_length' ({config.data.crop_length}) is shorter "
                          f"than one codec frame ({hop} samples)")
    check_data_source(config, "data.source")
    if "distill" in config:
        check_distill(config)
    _check_mesh_and_batch(config, num_devices)


def check_distill(config: Any) -> None:
    """The ``distill`` section (semantic distillation); see ``codec/teachers.py``."""
    if not isinstance(_get(config, "distill.enabled"), bool):
        raise ConfigError("config key 'distill.enabled' must be True or False")
    if not config.distill.enabled:
        return
    _number(config, "distill.weight", 0.0)
    _positive_int(config, "distill.teacher_dim")
    _choice(config, "distill.teacher", {"function", "precomputed"})
    _number(config, "distill.feature_rate", 0.0)
    if config.quantizer.kind != "split_rvq":
        raise ConfigError("config key 'distill.enabled': distillation trains the semantic level, "
                          "which needs quantizer.kind='split_rvq'")
    if config.distill.teacher == "function":
        try:
            make_teacher(config.distill)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return
    rate = config.distill.feature_rate
    if not rate:
        raise ConfigError("config key 'distill.feature_rate' must be set (> 0) for precomputed "
                          "teacher features")
    hop = config.data.sample_rate / rate
    if abs(hop - round(hop)) > 1e-6:
        raise ConfigError(f"config key 'distill.feature_rate' ({rate} Hz) must divide "
                          f"data.sample_rate ({config.data.sample_rate}) into whole samples")
    suffix = _get(config, "distill.features_suffix")
    if not isinstance(suffix, str) or not suffix or os.sep in suffix:
        raise ConfigError(f"config key 'distill.features_suffix' must be a plain name, got "
                          f"{suffix!r}")


def check_lm_model(config: Any) -> None:
    """Raises ConfigError naming the first bad key of a language-model config's model, token,
    loss and optimiser settings (what compiling it needs; no data)."""
    for key in ("model.num_layers", "model.num_heads", "model.width", "model.context",
                "model.mlp_ratio", "train.num_steps", "train.batch_size",
                "train.checkpoint_every", "tokens.codebook_size", "tokens.num_streams"):
        _positive_int(config, key)
    for key in ("train.seed", "tokens.num_levels"):  # num_levels 0: all the directory has
        _positive_int(config, key, allow_zero=True)
    _choice(config, "model.layout", set(layout_names()))  # the registered layouts
    _choice(config, "model.positions", {"learned", "rope"})
    _choice(config, "model.dtype", {"float32", "bfloat16"})
    if config.model.width % config.model.num_heads:
        raise ConfigError(f"config key 'model.width' ({config.model.width}) must be divisible "
                          f"by 'model.num_heads' ({config.model.num_heads})")
    if config.model.get("attention") is not None:
        _choice(config, "model.attention", ATTENTION_KINDS)
    if config.model.get("remat_policy") is not None:
        _choice(config, "model.remat_policy", set(REMAT_POLICIES) - {"none"})
    _number(config, "model.dropout", 0.0, 1.0)
    _number(config, "optim.learning_rate", 0.0, lo_open=True)
    if config.loss.get("logits_chunk") is not None:
        _positive_int(config, "loss.logits_chunk", allow_zero=True)
        kind = get_layout(config.model.layout).model_kind
        if config.loss.logits_chunk and kind != "transformer":
            raise ConfigError(f"config key 'loss.logits_chunk': layout {config.model.layout!r} "
                              "has per-level depth logits over the codebook; set it to 0")
    if config.train.get("gradient_accumulation_steps") is not None:
        _positive_int(config, "train.gradient_accumulation_steps")
        n = config.train.gradient_accumulation_steps
        if config.train.batch_size % n:
            raise ConfigError(f"config key 'train.gradient_accumulation_steps' ({n}) must "
                              f"divide train.batch_size ({config.train.batch_size})")


def check_lm_config(config: Any, num_devices: int | None = None) -> None:
    """Raises ConfigError naming the first bad key of a language-model config."""
    check_lm_model(config)
    _number(config, "data.eval_fraction", 0.0, 1.0)
    _check_token_dir(config, "`audiolm-jax tokenize`")
    _check_mesh_and_batch(config, num_devices)


def _check_token_dir(config: Any, made_by: str) -> None:
    tokens = _get(config, "data.tokens")
    if not isinstance(tokens, str) or not tokens:
        raise ConfigError(f"config key 'data.tokens' must name a token directory (made by "
                          f"{made_by})")
    if not os.path.isdir(tokens):
        raise ConfigError(f"config key 'data.tokens': token directory {tokens!r} does not exist")


def check_moshi_config(config: Any, num_devices: int | None = None) -> None:
    """Raises ConfigError naming the first bad key of a Moshi config (``task = 'moshi'``);
    the model's own keywords are checked by :class:`audiolm_jax.moshi.MoshiConfig` once the
    token directory has filled its sizes."""
    for key in ("model.dim", "model.num_heads", "model.num_layers", "data.frames",
                "train.num_steps", "train.batch_size", "train.checkpoint_every"):
        _positive_int(config, key)
    for key in ("model.card", "model.text_card", "model.n_q", "model.dep_q", "lora.rank",
                "train.seed"):  # 0: from the token directory / LoRA off
        _positive_int(config, key, allow_zero=True)
    _choice(config, "model.dtype", {"float32", "bfloat16"})
    _choice(config, "model.attention", ATTENTION_KINDS)
    _choice(config, "model.remat", set(REMAT_POLICIES))
    for key in ("loss.text_weight", "loss.audio_weight", "loss.text_padding_weight",
                "loss.first_codebook_weight", "lora.scaling"):
        _number(config, key, 0.0)
    _number(config, "optim.learning_rate", 0.0, lo_open=True)
    _number(config, "data.eval_fraction", 0.0, 1.0)
    source = config.train.get("init_from", "")
    if source and "://" not in source and not os.path.isdir(source):
        raise ConfigError(f"config key 'train.init_from': {source!r} does not exist")
    if int(config.lora.rank) and not source:
        raise ConfigError("config key 'lora.rank' > 0 fine-tunes a Moshi: give the one to "
                          "adapt with --init_from=DIR (config key 'train.init_from')")
    _check_token_dir(config, "`audiolm-jax tokenize --stereo_streams --text_tokenizer=...`")
    _check_mesh_and_batch(config, num_devices)
