"""Object-level supervision of an image tower's token grid: what is at each object's centre, and where objects are.

Two terms, both on the grid of image tokens (``[B, C, H, W]``):

* attribute cross-entropy on features read at each annotated object's centre (bilinear, so a centre
  between cells mixes its neighbours), one classifier per attribute;
* objectness: a logistic map that is 1 on the cell holding an object's centre, 0 elsewhere, which
  teaches the grid to say *how many* things there are, not only what they look like.

Targets use ``IGNORE_INDEX`` (-100) for padded objects and for attributes an object does not state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from polymodal.losses._checks import LossInputError
from polymodal.losses._masked import ignoring_mean_cross_entropy, mean_where
from polymodal.losses.mlm import IGNORE_INDEX


@dataclass
class ObjectLossOutput:
    loss: Tensor
    attribute_accuracy: Tensor  # over every annotated (object, attribute) pair of the batch, detached


def features_at(grid: Tensor, xy: Tensor) -> Tensor:
    """``[B, M, C]`` features of ``grid [B, C, H, W]`` at centres ``xy [B, M, 2]`` given as image fractions."""
    if grid.dim() != 4 or xy.dim() != 3 or xy.shape[-1] != 2 or xy.shape[0] != grid.shape[0]:
        raise LossInputError(f"object features: expected grid [B, C, H, W] and xy [B, M, 2], got {tuple(grid.shape)} and {tuple(xy.shape)}")
    # grid_sample's align_corners=False maps -1/1 to the outer edges of the border cells, as fractions do
    points = (xy.to(grid.dtype) * 2 - 1).unsqueeze(1)  # [B, 1, M, 2]
    return F.grid_sample(grid, points, mode="bilinear", align_corners=False).squeeze(2).transpose(1, 2)


def objectness_targets(xy: Tensor, valid: Tensor, height: int, width: int) -> Tensor:
    """``[B, H, W]`` with 1 on every cell that holds an (unpadded) object's centre."""
    target = torch.zeros(xy.shape[0], height, width, device=xy.device)
    col = (xy[..., 0] * width).long().clamp(0, width - 1)
    row = (xy[..., 1] * height).long().clamp(0, height - 1)
    batch = torch.arange(xy.shape[0], device=xy.device).unsqueeze(1).expand_as(col)
    # every object adds its validity and the sum is capped, rather than writing only the valid ones: a
    # boolean index reads the batch back to the host, which breaks a compiled graph (and syncs a GPU)
    target.index_put_((batch, row, col), valid.to(target.dtype), accumulate=True)
    return target.clamp_(max=1.0)


def object_loss(
    attribute_logits: Mapping[str, Tensor],
    attribute_targets: Tensor,
    objectness_logits: Tensor,
    xy: Tensor,
    annotated: Tensor | None = None,
) -> ObjectLossOutput:
    """Sum of the per-attribute cross-entropies and the objectness BCE.

    ``attribute_logits[name]`` is ``[B, M, V_name]`` in the order of ``attribute_targets [B, M, A]``'s
    last axis; ``objectness_logits`` is ``[B, H, W]``; ``xy`` is ``[B, M, 2]``. An object is padding when
    all its attribute targets are ``IGNORE_INDEX``. ``annotated [B]`` marks the images that have a scene
    graph at all: only those teach objectness (an unannotated image is not an empty one). With no
    annotated image the loss is a zero that still reaches every parameter, as DDP needs.
    """
    names = list(attribute_logits)
    if attribute_targets.dim() != 3 or attribute_targets.shape[-1] != len(names):
        raise LossInputError(f"object loss: targets must be [B, M, {len(names)}] (one column per attribute {names}), got {tuple(attribute_targets.shape)}")
    valid = (attribute_targets != IGNORE_INDEX).any(-1)
    total = objectness_logits.new_zeros((), dtype=torch.float32)
    correct = attribute_targets.new_zeros((), dtype=torch.float32)
    counted = attribute_targets.new_zeros((), dtype=torch.float32)
    # means over masks, never over boolean-indexed rows (see _masked): the loss compiles with the model
    for a, name in enumerate(names):
        logits, target = attribute_logits[name].float(), attribute_targets[..., a]
        known = target != IGNORE_INDEX
        total = total + ignoring_mean_cross_entropy(logits.flatten(0, -2), target.flatten())
        correct = correct + ((logits.argmax(-1) == target) & known).sum().float()
        counted = counted + known.sum().float()
    h, w = objectness_logits.shape[-2:]
    here = objectness_targets(xy, valid, h, w)
    if annotated is None:
        annotated = torch.ones(here.shape[0], dtype=torch.bool, device=here.device)
    cells = F.binary_cross_entropy_with_logits(objectness_logits.float(), here, reduction="none")
    total = total + mean_where(cells, annotated[:, None, None].expand_as(cells))
    return ObjectLossOutput(total, (correct / counted.clamp(min=1)).detach())
