"""One exception family so the CLI can print a clean one-paragraph message instead of a traceback."""

from __future__ import annotations


class PolymodalError(Exception):
    """A user-facing error: the message names the file, field or option and what was expected."""


class ConfigError(PolymodalError):
    """A run or data config is invalid (unknown key, wrong type, missing file)."""


class DataError(PolymodalError):
    """A data source cannot be read (missing file, malformed record, corrupt image)."""
