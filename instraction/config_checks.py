"""The validation helpers every component config uses: a leaf module (it imports nothing of ours), so component
configs never import the root config that assembles them (instraction/config.py)."""

from __future__ import annotations

from typing import Any, Iterable


class ConfigError(ValueError):
    """A configuration that cannot be used: unknown key, wrong type or invalid value."""


def check_choice(path: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"{path}={value!r} is not valid; choose one of {choices}")


def check_range(path: str, value: float, lo: float | None = None, hi: float | None = None) -> None:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{path}={value!r} is out of range [{lo}, {hi}]")
