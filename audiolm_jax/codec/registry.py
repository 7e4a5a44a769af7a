"""Codec kinds by name: each is a typed config class and an encoder/decoder builder.

``register_codec(name, config_cls, builder)`` adds a kind; the built-in ones ('cnn',
'seanet', 'mimi', configs and builders in ``codec/networks.py``) are registered in
``codec/__init__.py``. An experiment config's ``model`` section names its kind (``kind``,
default ``'seanet'``) and carries settings; :func:`codec_config` turns it into the kind's frozen
dataclass (validated, defaults filled in), and everything else asks that object:

* ``hop_length``: audio samples per latent frame;
* ``latent_dim``: the width of the encoder's latents (the quantizer's input);
* ``pads_partial_frames``: whether the encoder itself pads an input that is not a whole
  number of frames (Mimi's causal convs); otherwise the codec zero-pads it first;
* ``streams``: whether the networks have a streaming mode (``encoder(x, streaming=True)``),
  which inference uses to encode long inputs chunk by chunk exactly, at most
  ``max_stream_frames`` frames a call;
* the builder ``(config) -> (encoder, decoder)``: encoder ``[B, T] -> [B, T / hop,
  latent_dim]``, decoder ``[B, frames, latent_dim] -> [B, frames * hop]``.

Keys policy (as for quantizers): a section may carry the settings of every registered kind
(the base codec config carries the CNN's and SEANet's, so ``--config.model.kind=seanet`` is one
override); the keys of other kinds are ignored, and a key no registered kind knows is an error
naming it.

This module imports nothing else of ``codec/``: the kinds import it, not the other way round.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable, ClassVar, Dict, List, NamedTuple, Optional, Tuple, Type

import flax.linen as nn
import numpy as np

from audiolm_jax.quantization.base import section_items

DEFAULT_KIND = "seanet"


def invalid(key: str, requirement: str, value: Any) -> ValueError:
    """The error of a bad setting; the message starts with the key's dotted name."""
    return ValueError(f"model.{key} must be {requirement}, got {value!r}")


def _coerce(key: str, default: Any, value: Any) -> Any:
    """``value`` as the type of the field's default (configs read back from JSON hold lists
    for tuples; numpy scalars come from scripts). A field whose default is None takes None or
    a string."""
    if default is None:
        if value is not None and not isinstance(value, str):
            raise invalid(key, "None or a string", value)
        return value
    if isinstance(default, bool):
        if not isinstance(value, (bool, np.bool_)):
            raise invalid(key, "True or False", value)
        return bool(value)
    if isinstance(default, int):
        if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise invalid(key, "an integer", value)
    if isinstance(default, float):
        if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
            return float(value)
        raise invalid(key, "a number", value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise invalid(key, "a string", value)
        return value
    if isinstance(default, tuple):
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise invalid(key, "a tuple of integers", value)
        items = tuple(value)
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))
                   for v in items):
            raise invalid(key, "a tuple of integers", value)
        return tuple(int(v) for v in items)
    return value


@dataclasses.dataclass(frozen=True)
class CodecConfig:
    """What every codec kind's typed config provides. A kind subclasses this (frozen
    dataclass), declares its fields with their defaults, extends :meth:`validate`, and provides
    :attr:`hop_length` and :attr:`latent_dim` (fields or properties)."""

    # The encoder pads an input that is not a whole number of frames itself.
    pads_partial_frames: ClassVar[bool] = False
    # The networks have a streaming mode: ``encoder(audio, streaming=True)`` and
    # ``decoder(latents, streaming=True)`` continue from buffers in the 'streaming' collection.
    streams: ClassVar[bool] = False

    def __post_init__(self):
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, f.default, getattr(self, f.name)))
        self.validate()

    def validate(self) -> None:
        """Raises ValueError naming the first bad key."""

    @property
    def hop_length(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} must define hop_length")

    @property
    def latent_dim(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} must define latent_dim")

    @property
    def max_stream_frames(self) -> Optional[int]:
        """For a kind that ``streams``: the most frames one streaming call may take (None:
        any number)."""
        return None

    @classmethod
    def field_names(cls) -> frozenset:
        return frozenset(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_config(cls, section: Any, kind: str = "",
                    other_keys: frozenset = frozenset()) -> "CodecConfig":
        """This kind's settings from a ``model`` section; missing keys take the defaults.
        ``kind`` is skipped, and so are ``other_keys`` (other kinds' settings); any other key
        is an error naming it."""
        own = cls.field_names()
        values = {}
        for key, value in section_items(section).items():
            if key in own:
                values[key] = value
            elif key != "kind" and key not in other_keys:
                raise ValueError(f"model.{key} is not a codec setting (kind "
                                 f"{kind or cls.__name__!r} takes {sorted(own)})")
        return cls(**values)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


Builder = Callable[[Any], Tuple[nn.Module, nn.Module]]  # typed config -> (encoder, decoder)


class CodecKind(NamedTuple):
    config_cls: Type[CodecConfig]
    builder: Builder


_REGISTRY: Dict[str, CodecKind] = {}


def register_codec(name: str, config_cls: Type[CodecConfig], builder: Builder) -> None:
    if name in _REGISTRY:
        raise ValueError(f"codec kind {name!r} is already registered")
    if not (isinstance(config_cls, type) and issubclass(config_cls, CodecConfig)):
        raise TypeError(f"{config_cls!r} must subclass CodecConfig")
    _REGISTRY[name] = CodecKind(config_cls, builder)


def unregister_codec(name: str) -> None:
    """Removes a kind (tests that register a toy kind clean up with this)."""
    _REGISTRY.pop(name, None)


def codec_kinds() -> List[str]:
    return sorted(_REGISTRY)


def codec_kind(section: Any) -> str:
    """The kind a ``model`` section names (default ``'seanet'``); ValueError if unknown."""
    kind = section_items(section).get("kind", DEFAULT_KIND)
    if kind not in _REGISTRY:
        raise ValueError(f"model.kind must be one of {codec_kinds()}, got {kind!r}")
    return kind


def codec_config(section: Any) -> CodecConfig:
    """The typed, validated config of a ``model`` section (ConfigDict, dict or object); a
    :class:`CodecConfig` is returned as is. Raises ValueError naming the bad key."""
    if isinstance(section, CodecConfig):
        return section
    kind = codec_kind(section)
    other = frozenset().union(*(k.config_cls.field_names() for k in _REGISTRY.values()))
    return _REGISTRY[kind].config_cls.from_config(section, kind, other)


def codec_settings(section: Any) -> Dict[str, Any]:
    """``{'kind': ..., every setting of that kind}``, defaults filled in: what the section
    means, whatever other kinds' keys it also carries."""
    cfg = codec_config(section)
    return {"kind": _name_of(cfg), **cfg.to_dict()}


def _name_of(cfg: CodecConfig) -> str:
    for name, k in _REGISTRY.items():
        if type(cfg) is k.config_cls:
            return name
    raise ValueError(f"{type(cfg).__name__} is not a registered codec config")


def build_encoder_decoder(section: Any) -> Tuple[nn.Module, nn.Module]:
    """``(encoder, decoder)`` of the kind a ``model`` section (or typed config) describes."""
    cfg = codec_config(section)
    return _REGISTRY[_name_of(cfg)].builder(cfg)


def make_encoder_decoder(section: Any) -> Tuple[nn.Module, nn.Module, int, int]:
    """``(encoder, decoder, hop_length, latent_dim)`` of a ``model`` section or typed config."""
    cfg = codec_config(section)
    encoder, decoder = _REGISTRY[_name_of(cfg)].builder(cfg)
    return encoder, decoder, int(cfg.hop_length), int(cfg.latent_dim)


def positive(cfg: CodecConfig, *keys: str, allow_zero: bool = False) -> None:
    """Each of ``keys`` is > 0 (>= 0 with ``allow_zero``), else ValueError naming it."""
    for key in keys:
        value = getattr(cfg, key)
        if value < 0 or (value == 0 and not allow_zero):
            raise invalid(key, ">= 0" if allow_zero else "> 0", value)


def choice(cfg: CodecConfig, key: str, choices: Tuple[Optional[str], ...]) -> None:
    value = getattr(cfg, key)
    if value not in choices:
        raise invalid(key, f"one of {list(choices)}", value)
