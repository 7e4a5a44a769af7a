"""Typed config sections: a frozen dataclass per kind, built from an experiment config's
section (the codec kinds' ``model``, the quantizer kinds' ``quantizer``), looked up by name in
a :class:`KindRegistry`.

:class:`SectionConfig` is what those dataclasses share: the fields' values coerced to the types
of their defaults, :meth:`~SectionConfig.from_config` (unknown keys are errors naming them) and
:meth:`~SectionConfig.to_dict`. Error messages start with the key's dotted name.

The bottom of the package: it imports nothing else of ``audiolm_jax``.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, ClassVar, Dict, List, Mapping

import numpy as np


def setting_error(section: str, key: str, requirement: str, value: Any) -> ValueError:
    """The error of a bad setting ``section.key``; the message starts with its dotted name."""
    return ValueError(f"{section}.{key} must be {requirement}, got {value!r}")


def section_items(section: Any) -> Dict[str, Any]:
    """The keys and values of a config section: a ConfigDict, a mapping or a plain object."""
    if isinstance(section, Mapping) or hasattr(section, "keys"):
        return {str(k): section[k] for k in section.keys()}
    return {k: v for k, v in vars(section).items() if not k.startswith("_")}


def _integral(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def coerce(section: str, key: str, default: Any, value: Any) -> Any:
    """``value`` as the type of the field's default (configs read back from JSON hold lists
    for tuples; numpy scalars come from scripts); a bad one raises :func:`setting_error`."""
    if isinstance(default, bool):
        if not isinstance(value, (bool, np.bool_)):
            raise setting_error(section, key, "True or False", value)
        return bool(value)
    if isinstance(default, int):
        if _integral(value):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise setting_error(section, key, "an integer", value)
    if isinstance(default, float):
        if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
            return float(value)
        raise setting_error(section, key, "a number", value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise setting_error(section, key, "a string", value)
        return value
    if isinstance(default, tuple):
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise setting_error(section, key, "a tuple of integers", value)
        items = tuple(value)
        if not all(_integral(v) for v in items):
            raise setting_error(section, key, "a tuple of integers", value)
        return tuple(int(v) for v in items)
    return value


class SectionConfig:
    """Base of a frozen dataclass config of one kind. A subclass names its section
    (``SECTION``, the errors' prefix) and what its settings are (``SETTING``), declares its
    fields with their defaults, and overrides :meth:`validate`."""

    SECTION: ClassVar[str] = ""
    SETTING: ClassVar[str] = ""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name,
                               self.coerce_field(f.name, f.default, getattr(self, f.name)))
        self.validate()

    def coerce_field(self, key: str, default: Any, value: Any) -> Any:
        """``value`` as the type of the field's default; see :func:`coerce`."""
        return coerce(self.SECTION, key, default, value)

    def validate(self) -> None:
        """Raises ValueError naming the first bad key."""

    @classmethod
    def field_names(cls) -> frozenset:
        return frozenset(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_config(cls, section: Any, kind: str = "", other_keys: frozenset = frozenset()):
        """This kind's settings from a config section; missing keys take the defaults.

        ``kind`` is skipped, and so are keys in ``other_keys`` (the settings of other kinds:
        one section can carry every kind's keys, so switching ``kind`` is one override).
        Any other key is an error naming it.
        """
        own = cls.field_names()
        values = {}
        for key, value in section_items(section).items():
            if key in own:
                values[key] = value
            elif key != "kind" and key not in other_keys:
                raise ValueError(f"{cls.SECTION}.{key} is not a {cls.SETTING} setting (kind "
                                 f"{kind or cls.__name__!r} takes {sorted(own)})")
        return cls(**values)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


class KindRegistry:
    """The kinds of one config section by name: ``kinds`` maps a name to a named tuple of the
    kind's typed config class (``config_cls``, a :class:`SectionConfig`) and its builder. The
    section names its kind under ``kind`` (``default`` when absent)."""

    def __init__(self, section: str, default: str):
        self.section = section
        self.default = default
        self.kinds: Dict[str, Any] = {}

    def names(self) -> List[str]:
        return sorted(self.kinds)

    def kind_of(self, section: Any) -> str:
        """The kind a section names; ValueError if unknown."""
        kind = section_items(section).get("kind", self.default)
        if kind not in self.kinds:
            raise ValueError(f"{self.section}.kind must be one of {self.names()}, got {kind!r}")
        return kind

    def config(self, section: Any) -> SectionConfig:
        """The typed, validated config of a section: its kind's settings; the keys of the
        other registered kinds are ignored, any other key is an error naming it."""
        kind = self.kind_of(section)
        other = frozenset().union(*(k.config_cls.field_names() for k in self.kinds.values()))
        return self.kinds[kind].config_cls.from_config(section, kind, other)
