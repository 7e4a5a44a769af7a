"""Quantizer kinds by name: each is a typed config class and a module builder.

``register_quantizer(name, config_cls, builder)`` adds a kind; the built-in ones are
registered in ``quantization/__init__.py``. An experiment config's ``quantizer`` section names
its kind (``kind``, default ``'rvq'``) and carries settings; :func:`quantizer_config` turns it
into the kind's frozen dataclass (validated, defaults filled in) and :func:`make_quantizer`
builds the Flax module.

Keys policy: a section may carry the settings of every registered kind (the base codec config
does, so ``--config.quantizer.kind=fsq`` is one override); the keys of other kinds are ignored,
and a key no registered kind knows is an error naming it.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, NamedTuple, Type

import flax.linen as nn

from audiolm_jax.quantization.base import QuantizerConfig
from audiolm_jax.typed_config import KindRegistry

DEFAULT_KIND = "rvq"


class QuantizerKind(NamedTuple):
    config_cls: Type[QuantizerConfig]
    builder: Callable[[Any, int], nn.Module]  # (typed config, latent_dim) -> module


_KINDS = KindRegistry("quantizer", DEFAULT_KIND)
_REGISTRY: Dict[str, QuantizerKind] = _KINDS.kinds


def register_quantizer(name: str, config_cls: Type[QuantizerConfig],
                       builder: Callable[[Any, int], nn.Module]) -> None:
    if name in _REGISTRY:
        raise ValueError(f"quantizer kind {name!r} is already registered")
    if not issubclass(config_cls, QuantizerConfig):
        raise TypeError(f"{config_cls.__name__} must subclass QuantizerConfig")
    _REGISTRY[name] = QuantizerKind(config_cls, builder)


def quantizer_kinds() -> List[str]:
    return _KINDS.names()


def quantizer_config(section: Any) -> QuantizerConfig:
    """The typed, validated config of a ``quantizer`` section (ConfigDict, dict or object);
    a :class:`QuantizerConfig` is returned as is. Raises ValueError naming the bad key."""
    if isinstance(section, QuantizerConfig):
        return section
    return _KINDS.config(section)


def quantizer_settings(section: Any) -> Dict[str, Any]:
    """``{'kind': ..., every setting of that kind}``, defaults filled in: what the section
    means, whatever other kinds' keys it also carries."""
    return {"kind": _KINDS.kind_of(section), **quantizer_config(section).to_dict()}


def quantizer_section(kind: str = DEFAULT_KIND) -> Dict[str, Any]:
    """A full ``quantizer`` section: ``kind`` and every registered kind's settings at their
    defaults (a setting several kinds share has one default, in their common base)."""
    out: Dict[str, Any] = {"kind": kind}
    for name in quantizer_kinds():
        for key, value in _REGISTRY[name].config_cls().to_dict().items():
            if key in out and out[key] != value:
                raise ValueError(f"quantizer.{key} has different defaults in different kinds")
            out[key] = value
    _KINDS.kind_of(out)
    return out


def make_quantizer(section: Any, latent_dim: int) -> nn.Module:
    """Builds the quantizer a config section (or typed config) describes for latents of
    ``latent_dim``; see :func:`quantizer_config`."""
    cfg = quantizer_config(section)
    kind = next(name for name, k in _REGISTRY.items() if type(cfg) is k.config_cls)
    return _REGISTRY[kind].builder(cfg, int(latent_dim))
