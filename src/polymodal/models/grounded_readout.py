"""Grounded readout: the question selects image cells, and the answer heads read the count and the
features of what it selected.

A VQA label ("3", "cube") tells the fusion layers only whether they reasoned right, not where they
went wrong, and a pooled [CLS] vector is a poor counter: attention averages, so "how many objects
are left of the cube?" has to be solved by a softmax that cannot add. This head makes selection and
counting explicit, as counting modules for VQA do:

* every grid cell gets a selection score from the pooled fused question against the cell's feature
  and its place (so "left of x" is a linear function of the cell's position);
* the soft count is the sum of the cells' selection probabilities, given to the heads as a few
  radial features around 0, 1, 2, ...; the selected cells' mean feature says what was selected;
* both are added to the fused question through a zero-initialised projection, so a model starts
  exactly as one without the readout.

When the data says which objects each text is about (the built-in world's programs; GQA's
annotations), the ``ground`` objective supervises the selection map directly: 1 on the cells that
hold those objects' centres, 0 on every other cell. Without annotations the readout still trains
through the answer losses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polymodal.losses.mlm import IGNORE_INDEX
from polymodal.losses.objects import objectness_targets
from polymodal.models.object_head import token_grid


@dataclass
class GroundingLossOutput:
    loss: Tensor
    exact: Tensor  # share of annotated texts whose every cell is classified right, detached


@dataclass
class Readout:
    pooled: Tensor  # [R, W] the fused question with its count and selection added
    selection: Tensor  # [R, s, s] selection logits per grid cell


class GroundedReadout(nn.Module):
    def __init__(self, text_width: int, image_width: int, dim: int = 128, max_count: int = 10) -> None:
        super().__init__()
        self.query = nn.Linear(text_width, dim)
        self.key = nn.Linear(image_width, dim)
        self.place = nn.Linear(2, dim)
        self.read = nn.Linear(image_width, text_width)
        self.register_buffer("count_centres", torch.arange(max_count + 1, dtype=torch.float32), persistent=False)
        self.out = nn.Linear(text_width + max_count + 1, text_width)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.dim = dim

    def forward(self, fused: Tensor, image_tokens: Tensor) -> Readout:
        """``fused [R, W]`` pooled texts, each with its image's tokens ``image_tokens [R, N, C]``."""
        if image_tokens.shape[0] != fused.shape[0]:
            raise ValueError(f"grounded readout: {fused.shape[0]} texts but image tokens for {image_tokens.shape[0]}")
        grid = token_grid(image_tokens)  # [R, C, s, s]
        side = grid.shape[-1]
        cells = grid.flatten(2).transpose(1, 2).float()  # [R, s*s, C], row-major like the grid
        centres = (torch.arange(side, device=cells.device, dtype=cells.dtype) + 0.5) / side
        ys, xs = torch.meshgrid(centres, centres, indexing="ij")
        places = torch.stack([xs.flatten(), ys.flatten()], dim=-1)  # [s*s, 2] as (x, y) fractions
        keys = self.key(cells) + self.place(places)
        logits = torch.einsum("rd,rnd->rn", self.query(fused.float()), keys) / math.sqrt(self.dim)
        weights = torch.sigmoid(logits)
        count = weights.sum(-1, keepdim=True)
        near_count = torch.exp(-2.0 * (count - self.count_centres) ** 2)  # [R, max_count + 1]
        selected = torch.einsum("rn,rnc->rc", weights, cells) / (count + 1.0)
        extra = self.out(torch.cat([self.read(selected), near_count], dim=-1))
        return Readout(pooled=fused + extra.to(fused.dtype), selection=logits.view(-1, side, side))

    @staticmethod
    def loss(selection: Tensor, xy: Tensor, targets: Tensor) -> GroundingLossOutput:
        """Selection logits ``[R, s, s]`` against the annotation: ``targets [R, M]`` is 1 for the objects
        (centres ``xy [R, M, 2]``) a text is about, 0 for its image's other objects, ignored for padding;
        rows with no annotated object are left out."""
        if targets.shape != xy.shape[:2] or selection.shape[0] != targets.shape[0]:
            raise ValueError(
                f"grounding: expected selection [R, s, s], xy [R, M, 2] and targets [R, M] with one R; got "
                f"{list(selection.shape)}, {list(xy.shape)} and {list(targets.shape)}"
            )
        annotated = (targets != IGNORE_INDEX).any(-1)
        if not bool(annotated.any()):
            zero = selection.sum() * 0.0
            return GroundingLossOutput(zero, zero.detach())
        cells = objectness_targets(xy[annotated], targets[annotated] == 1, selection.shape[1], selection.shape[2])
        logits = selection[annotated].float()
        loss = F.binary_cross_entropy_with_logits(logits, cells)
        exact = ((logits > 0) == (cells > 0.5)).flatten(1).all(-1).float().mean().detach()
        return GroundingLossOutput(loss, exact)
