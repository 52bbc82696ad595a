"""The search index's errors: user-fixable, so the CLI prints them as one paragraph (exit code 2)."""

from __future__ import annotations

from polymodal.errors import PolymodalError

__all__ = ["ModelMismatch", "SearchIndexError"]


class SearchIndexError(PolymodalError):
    """An index cannot be created, opened, updated or searched as asked; the message says why and where."""


class ModelMismatch(SearchIndexError):
    """The model given is not the one the index was built with (weights or preprocessing differ)."""
