"""Input validation shared by the objectives: wrong shapes become messages, not torch tracebacks."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from polymodal.errors import PolymodalError


class LossInputError(PolymodalError, ValueError):
    """An objective received tensors of the wrong shape, dtype or content.

    Also a ``ValueError`` so that generic callers catching bad values keep working.
    """


def fmt_shape(shape: Sequence[object]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def check_rank(name: str, tensor: torch.Tensor, expected: Sequence[str]) -> None:
    """Raise unless ``tensor`` has ``len(expected)`` dims; ``expected`` names them for the message."""
    if not isinstance(tensor, torch.Tensor):
        raise LossInputError(f"{name}: expected a tensor {fmt_shape(expected)}, got {type(tensor).__name__}")
    if tensor.dim() != len(expected):
        raise LossInputError(f"{name}: expected {fmt_shape(expected)}, got {fmt_shape(tuple(tensor.shape))}")


def check_same_dim(what: str, name_a: str, a: int, name_b: str, b: int) -> None:
    if a != b:
        raise LossInputError(f"{what}: {name_a} has {a} but {name_b} has {b}; they must match")
