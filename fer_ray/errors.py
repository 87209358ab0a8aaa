"""Errors fer-ray raises for bad input. CLIs turn them into one line on stderr and exit 2."""

from __future__ import annotations


class FerRayError(Exception):
    """Base class: a problem the user can fix (bad file, bad config key, missing path)."""


class DataError(FerRayError):
    """Input data is missing, malformed or inconsistent. The message names the file (and row)."""


class ConfigError(FerRayError):
    """A configuration value, key or search space is invalid. The message names the key."""


def reason(exc: BaseException) -> str:
    """The first line of an exception's message (or its type name), to quote in one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
