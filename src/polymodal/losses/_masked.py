"""Means over a mask that never read the batch back to the host.

``loss(x[mask])`` copies the selected rows, and finding them (``nonzero``) waits for the device and makes
the shapes depend on the data: a compiled graph breaks there, and a GPU step stalls. ``mean_where`` and
``ignoring_mean_cross_entropy`` compute the same means over the whole tensors, and a term with nothing
selected is a zero that still reaches its inputs' parameters, as DDP needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from polymodal.losses.mlm import IGNORE_INDEX


def mean_where(values: Tensor, mask: Tensor) -> Tensor:
    """The mean of ``values`` where ``mask`` (same shape), 0 where nothing is selected. Entries outside the
    mask may be infinite (an empty slot's logit): they are replaced before the sum, so they make no NaN."""
    kept = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return kept.sum() / mask.sum().clamp(min=1)


def ignoring_mean_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy of ``logits [N, C]`` over the ``targets [N]`` that are not ``IGNORE_INDEX``: 0 when
    all are (where torch's mean gives NaN). A mean over this rank's targets only."""
    counted = (targets != IGNORE_INDEX).sum()
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum") / counted.clamp(min=1)
