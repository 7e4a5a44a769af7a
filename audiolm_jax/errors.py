"""Errors that several layers raise and the command line reports as one line; the lowest layer
of the package (it imports nothing of it)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value, or a workdir, that cannot work; the message names the key (its dotted
    name) or the folder."""
