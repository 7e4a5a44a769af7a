"""Validation of experiment configs before anything compiles: errors name the offending key."""

from __future__ import annotations

import os
from typing import Any, Iterable


class ConfigError(ValueError):
    """A config value that cannot work; the message starts with the key's dotted name."""


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
        from audiolm_jax.train.mesh import resolve_mesh_shape

        try:
            resolve_mesh_shape(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, num_devices)
        except ValueError as e:
            raise ConfigError(f"config key 'mesh': {e}") from None


def check_codec_config(config: Any, num_devices: int | None = None) -> None:
    """Raises ConfigError naming the first bad key of a codec config."""
    for key in ("train.num_steps", "train.batch_size", "train.checkpoint_every",
                "quantizer.num_levels", "quantizer.codebook_size", "data.sample_rate",
                "data.crop_length"):
        _positive_int(config, key)
    _positive_int(config, "train.seed", allow_zero=True)
    _choice(config, "model.kind", {"cnn", "seanet"})
    _choice(config, "quantizer.kind", {"rvq", "split_rvq"})
    _choice(config, "quantizer.dead_code_mode", {"absolute", "relative"})
    _choice(config, "quantizer.dropout_mode", {"batch", "sample"})
    _number(config, "quantizer.decay", 0.0, 1.0)
    _number(config, "quantizer.no_quant_rate", 0.0, 1.0)
    _number(config, "optim.learning_rate", 0.0, lo_open=True)
    for key in ("loss.spectral_weight", "loss.mel_weight", "loss.l1_weight", "loss.mse_weight",
                "loss.commit_weight"):
        _number(config, key, 0.0)
    if config.quantizer.kind == "split_rvq":
        _positive_int(config, "quantizer.num_semantic_levels")
        if config.quantizer.num_semantic_levels >= config.quantizer.num_levels:
            raise ConfigError("config key 'quantizer.num_semantic_levels' must be smaller than "
                              "'quantizer.num_levels'")
    from audiolm_jax.codec.model import hop_length

    if config.data.crop_length < hop_length(config):
        raise ConfigError(f"config key 'data.crop_length' ({config.data.crop_length}) is shorter "
                          f"than one codec frame ({hop_length(config)} samples)")
    check_data_source(config, "data.source")
    check_mesh(config, num_devices)
    if num_devices is not None:
        from audiolm_jax.train.mesh import resolve_mesh_shape

        d, f, _ = resolve_mesh_shape(config.mesh.data, config.mesh.fsdp, config.mesh.tensor,
                                     num_devices)
        if config.train.batch_size % (d * f):
            raise ConfigError(f"config key 'train.batch_size' ({config.train.batch_size}) must be "
                              f"divisible by mesh data*fsdp = {d * f}")
