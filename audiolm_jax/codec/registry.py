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
from typing import Any, Callable, ClassVar, Dict, List, NamedTuple, Optional, Tuple, Type

import flax.linen as nn

from audiolm_jax.typed_config import KindRegistry, SectionConfig, setting_error

DEFAULT_KIND = "seanet"


def invalid(key: str, requirement: str, value: Any) -> ValueError:
    """The error of a bad setting; the message starts with the key's dotted name."""
    return setting_error("model", key, requirement, value)


@dataclasses.dataclass(frozen=True)
class CodecConfig(SectionConfig):
    """What every codec kind's typed config provides. A kind subclasses this (frozen
    dataclass), declares its fields with their defaults, extends :meth:`validate`, and provides
    :attr:`hop_length` and :attr:`latent_dim` (fields or properties)."""

    # The encoder pads an input that is not a whole number of frames itself.
    pads_partial_frames: ClassVar[bool] = False
    # The networks have a streaming mode: ``encoder(audio, streaming=True)`` and
    # ``decoder(latents, streaming=True)`` continue from buffers in the 'streaming' collection.
    streams: ClassVar[bool] = False
    SECTION = "model"
    SETTING = "codec"

    def coerce_field(self, key: str, default: Any, value: Any) -> Any:
        """As for every typed config, and a field whose default is None takes None or a
        string."""
        if default is None:
            if value is not None and not isinstance(value, str):
                raise invalid(key, "None or a string", value)
            return value
        return super().coerce_field(key, default, value)

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


Builder = Callable[[Any], Tuple[nn.Module, nn.Module]]  # typed config -> (encoder, decoder)


class CodecKind(NamedTuple):
    config_cls: Type[CodecConfig]
    builder: Builder


_KINDS = KindRegistry("model", DEFAULT_KIND)
_REGISTRY: Dict[str, CodecKind] = _KINDS.kinds


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
    return _KINDS.names()


def codec_kind(section: Any) -> str:
    """The kind a ``model`` section names (default ``'seanet'``); ValueError if unknown."""
    return _KINDS.kind_of(section)


def codec_config(section: Any) -> CodecConfig:
    """The typed, validated config of a ``model`` section (ConfigDict, dict or object); a
    :class:`CodecConfig` is returned as is. Raises ValueError naming the bad key."""
    if isinstance(section, CodecConfig):
        return section
    return _KINDS.config(section)


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
