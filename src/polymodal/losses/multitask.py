"""Weighted sum of named objectives (e.g. ITC + ITM + MLM in ALBEF-style pre-training).

The weights live in one place, are checked once at construction, and every call returns the
unweighted parts detached for logging, so the trainer never has to know which objectives exist.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from polymodal.losses._checks import LossInputError

__all__ = ["MultiTaskLoss", "MultiTaskOutput"]


@dataclass
class MultiTaskOutput:
    """``total`` carries the graph; ``parts`` are the unweighted objectives, detached, for logging.
    ``over_ranks``: the weighted sum, with graph, of the objectives named ``over_ranks`` at construction
    that are in ``total`` (None when none is)."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor]
    over_ranks: torch.Tensor | None = None


class MultiTaskLoss(nn.Module):
    """``total = sum(weights[name] * losses[name])`` over the names passed in this call.

    Args:
        weights: name -> non-negative finite weight.
        strict: when True every weighted name must be present in each call; when False (default)
            absent names are skipped, so tasks may alternate between batches.
        over_ranks: the objectives that are means over the items of *every* rank under DDP (token
            losses, ``losses/_token_mean.py``) while the others are means over this rank's. The trainer
            weighs the two kinds differently when ranks or micro-batches hold different numbers of items
            (``train/accumulation.py``), so their weighted sum is also returned on its own.
    """

    def __init__(self, weights: Mapping[str, float], *, strict: bool = False, over_ranks: Collection[str] = ()) -> None:
        super().__init__()
        if not weights:
            raise LossInputError("multitask: weights is empty; give at least one name -> weight")
        for name, weight in weights.items():
            if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
                raise LossInputError(
                    f"multitask: weight of '{name}' must be a finite number >= 0, got {weight!r}"
                )
        self.weights: dict[str, float] = {name: float(w) for name, w in weights.items()}
        self.strict = strict
        self.over_ranks = frozenset(over_ranks)

    def forward(self, losses: Mapping[str, torch.Tensor]) -> MultiTaskOutput:
        known = sorted(self.weights)
        unknown = sorted(set(losses) - set(self.weights))
        if unknown:
            raise LossInputError(f"multitask: unknown loss name(s) {unknown}; expected names among {known}")
        if self.strict:
            missing = sorted(set(self.weights) - set(losses))
            if missing:
                raise LossInputError(f"multitask: loss(es) {missing} missing; expected all of {known}")
        if not losses:
            raise LossInputError(f"multitask: no losses given; expected names among {known}")
        total: torch.Tensor | None = None
        over_ranks: torch.Tensor | None = None
        parts: dict[str, torch.Tensor] = {}
        for name in sorted(losses):  # fixed order: the float sum does not depend on dict order
            value = losses[name]
            if not isinstance(value, torch.Tensor) or value.dim() != 0:
                shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise LossInputError(f"multitask: loss '{name}' must be a scalar tensor, got {shape}")
            term = self.weights[name] * value
            total = term if total is None else total + term
            if name in self.over_ranks:
                over_ranks = term if over_ranks is None else over_ranks + term
            parts[name] = value.detach()
        assert total is not None
        return MultiTaskOutput(total=total, parts=parts, over_ranks=over_ranks)
