"""Errors raised by :mod:`polymodal.metrics`.

Both subclass :class:`polymodal.errors.PolymodalError` so the CLI prints them as one clean paragraph.
"""

from __future__ import annotations

from polymodal.errors import PolymodalError


class MetricUnavailableError(PolymodalError):
    """A metric needs an external tool (Java, the METEOR jar) that is not installed.

    Raised instead of silently returning a number computed some other way: a METEOR score that is
    not the official jar's is a wrong number.
    """


class MetricInputError(PolymodalError, ValueError):
    """Predictions and references do not fit together (unknown ids, missing predictions, bad types)."""
