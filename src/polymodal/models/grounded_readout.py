"""Grounded readout: the image's objects become a handful of slots, the question selects among them,
and the answer heads read the count and the features of what it selected.

A VQA label ("3", "cube") tells the fusion layers only whether they reasoned right, not where they
went wrong, and a pooled [CLS] vector over a grid of cells is a poor counter and a poorer judge of
"left of": attention averages, so it cannot add, and an object spans several cells. Object-centric
VQA models (NS-VQA, relation networks, counting modules) read objects instead of cells; this head
does so with the image tower it is given:

* a small convolutional detector on the token grid marks the cells that hold an object's centre and
  refines each centre inside its cell; while training, the annotated objects' cells are used instead
  (teacher forcing), so the reasoning layers never train on missed objects;
* each object becomes a slot: its cell's feature plus an embedding of its (x, y) position, so
  "left of x" and "nearest to x" are functions the slots can compute from each other;
* a small transformer runs over [question, slots]: the question finds its anchor object, the
  slots compare their positions with it;
* every slot gets a selection score against the question; the soft count is the sum of the
  selection probabilities, given to the heads as radial features around 0, 1, 2, ...; the
  selected slots' mean feature says what was selected;
* all of it is added to the fused question through a zero-initialised projection, so a model starts
  exactly as one without the readout.

When the data says which objects each text is about (the built-in world's programs; GQA's
annotations), the ``ground`` objective supervises the selection per object and trains the detector
on the scene graph's centres.
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
from polymodal.modules.encoders.base import EncoderOutput
from polymodal.modules.transformer import Transformer


@dataclass
class KnownObjects:
    """Annotated objects per image: centres ``xy [B, M, 2]`` (image fractions), ``valid [B, M]``
    (False for padding) and ``known [B]`` (False where the image has no scene graph: its objects are
    detected, as at inference)."""

    xy: Tensor
    valid: Tensor
    known: Tensor


@dataclass
class GroundingLossOutput:
    loss: Tensor
    exact: Tensor  # share of annotated texts whose every object is selected right, detached


@dataclass
class Readout:
    pooled: Tensor  # [R, W] the fused question with its count and selection added
    selection: Tensor  # [R, K] selection logits per slot (-inf on empty slots)
    slots: Tensor  # [R, K] True where a slot holds an object
    objectness: Tensor  # [B, s, s] detector logits per image
    offset: Tensor  # [B, s, s, 2] each cell's centre estimate inside the cell, in [0, 1]


class GroundedReadout(nn.Module):
    def __init__(
        self, text_width: int, image_width: int, dim: int = 128, depth: int = 1, heads: int = 4, max_count: int = 10, max_objects: int = 10, detector_width: int = 64
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"grounded readout: dim {dim} must be a multiple of heads {heads}")
        # objectness and in-cell offset from each cell and its 8 neighbours: seeing the neighbours lets the
        # detector keep two objects in adjacent cells apart and one object spread over two cells whole,
        # which a 3 x 3 non-maximum suppression cannot do both of
        self.detector = nn.Sequential(nn.Conv2d(image_width, detector_width, 3, padding=1), nn.GELU(), nn.Conv2d(detector_width, 3, 1))
        self.feature = nn.Linear(image_width, dim)
        self.place = nn.Sequential(nn.Linear(2, dim), nn.GELU(), nn.Linear(dim, dim))
        self.question = nn.Linear(text_width, dim)
        self.reason = Transformer(dim, depth, heads, mlp_ratio=2.0, cross_attention=True, context_dim=text_width)
        self.norm = nn.LayerNorm(dim)
        self.select_query = nn.Linear(dim, dim)
        self.select_key = nn.Linear(dim, dim)
        self.register_buffer("count_centres", torch.arange(max_count + 1, dtype=torch.float32), persistent=False)
        self.out = nn.Linear(2 * dim + max_count + 1, text_width)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.dim, self.max_objects = dim, max_objects

    def detect(self, objectness: Tensor) -> tuple[Tensor, Tensor]:
        """Flat cell indices ``[B, K]`` of the cells whose objectness is above 0.5 probability, most
        confident first, and which of the ``K = max_objects`` slots hold one."""
        score = objectness.flatten(1).masked_fill(objectness.flatten(1) <= 0, float("-inf"))
        top, cells = score.topk(min(self.max_objects, score.shape[1]), dim=1)
        return cells, torch.isfinite(top)

    def forward(self, fused: EncoderOutput, image_tokens: Tensor, known: KnownObjects | None = None, rows: Tensor | None = None) -> Readout:
        """``fused`` texts (``pooled [R, W]`` and their fused ``tokens``) about images with tokens
        ``image_tokens [B, N, C]``: text ``r`` is about image ``rows[r]`` (``rows=None``: text ``r``
        about image ``r``). While training, ``known`` are the images' annotated objects."""
        pooled = fused.pooled
        rows = torch.arange(pooled.shape[0], device=pooled.device) if rows is None else rows
        if rows.shape != pooled.shape[:1] or (rows.numel() and int(rows.max()) >= image_tokens.shape[0]):
            raise ValueError(f"grounded readout: {pooled.shape[0]} texts but image tokens for {image_tokens.shape[0]} images (row index {list(rows.shape)})")
        grid = token_grid(image_tokens)  # [B, C, s, s]
        side = grid.shape[-1]
        cells = grid.flatten(2).transpose(1, 2)  # [B, s*s, C], row-major like the grid
        detected = self.detector(grid).float()  # [B, 3, s, s]
        objectness, offset = detected[:, 0], torch.sigmoid(detected[:, 1:].permute(0, 2, 3, 1))
        index, present = self.detect(objectness.detach())
        if known is not None:
            index, present = self._teacher_forced(index, present, known, side)
        images = torch.arange(cells.shape[0], device=cells.device).unsqueeze(1)
        inside = offset.detach().flatten(1, 2)[images, index]  # [B, K, 2] as (x, y) within the cell
        xy = (torch.stack([index % side, index // side], dim=-1).to(inside.dtype) + inside) / side
        objects = (self.feature(cells[images, index]) + self.place(xy))[rows]
        slots = present[rows]
        question = self.question(pooled).unsqueeze(1)
        # the question and the slots attend to each other and read the question's words
        states = self.reason(
            torch.cat([question, objects.to(question.dtype)], dim=1),
            mask=torch.cat([torch.ones_like(slots[:, :1]), slots], dim=1),
            context=fused.tokens,
            context_mask=fused.mask,
        )
        states = self.norm(states)
        asked, objects = states[:, 0], states[:, 1:]
        logits = torch.einsum("rd,rkd->rk", self.select_query(asked).float(), self.select_key(objects).float()) / math.sqrt(self.dim)
        logits = logits.masked_fill(~slots, float("-inf"))
        weights = torch.sigmoid(logits)
        count = weights.sum(-1, keepdim=True)
        near_count = torch.exp(-2.0 * (count - self.count_centres) ** 2)  # [R, max_count + 1]
        selected = torch.einsum("rk,rkd->rd", weights, objects.float()) / count.clamp(min=1.0)
        extra = self.out(torch.cat([asked.float(), selected, near_count], dim=-1))
        return Readout(pooled + extra.to(pooled.dtype), logits, slots, objectness, offset)

    def _teacher_forced(self, index: Tensor, present: Tensor, known: KnownObjects, side: int) -> tuple[Tensor, Tensor]:
        """The annotated objects' cells, in annotation order (so slot j is object j), for images that
        have them; the detector's slots elsewhere."""
        if known.xy.shape[0] != index.shape[0]:
            raise ValueError(f"grounded readout: annotated objects for {known.xy.shape[0]} images but tokens for {index.shape[0]}")
        m = known.xy.shape[1]
        if bool(known.known.all()):  # no detected slots needed: only as many slots as annotated objects (cheaper)
            index, present = index[:, :m], present[:, :m]
        if m > index.shape[1]:  # more annotated objects than the detector's slots: widen for this batch
            index, present = F.pad(index, (0, m - index.shape[1])), F.pad(present, (0, m - present.shape[1]), value=False)
        col = (known.xy[..., 0] * side).long().clamp(0, side - 1)
        row = (known.xy[..., 1] * side).long().clamp(0, side - 1)
        given = F.pad(row * side + col, (0, index.shape[1] - m))
        valid = F.pad(known.valid, (0, index.shape[1] - m), value=False)
        use = known.known.unsqueeze(1)
        return torch.where(use, given, index), torch.where(use, valid, present)

    @staticmethod
    def loss(found: Readout, known: KnownObjects, targets: Tensor) -> GroundingLossOutput:
        """The detector against the annotated centres, and the selection against the annotation:
        ``targets [R, M]`` is 1 for the objects a text is about, 0 for its image's other objects,
        ignored for padding and unannotated texts (the slots must be the teacher-forced ones, so slot
        ``j`` is object ``j``)."""
        m = targets.shape[1]
        if known.xy.shape[1] != m or known.xy.shape[0] != found.objectness.shape[0] or found.selection.shape[0] != targets.shape[0] or found.selection.shape[1] < m:
            raise ValueError(
                f"grounding: expected selection [R, >=M], targets [R, M] and xy [B, M, 2] for the readout's B images; got "
                f"{list(found.selection.shape)}, {list(targets.shape)} and {list(known.xy.shape)} (objectness {list(found.objectness.shape)})"
            )
        # every part reaches the loss even when nothing is annotated, as DDP needs
        loss = found.objectness.sum() * 0.0 + found.offset.sum() * 0.0 + found.selection[found.slots].sum() * 0.0
        exact = loss.detach()
        if bool(known.known.any()):
            xy, valid = known.xy[known.known], known.valid[known.known]
            side = found.objectness.shape[-1]
            loss = loss + F.binary_cross_entropy_with_logits(found.objectness[known.known], objectness_targets(xy, valid, side, side))
            cell = xy * side
            col, row = cell[..., 0].long().clamp(0, side - 1), cell[..., 1].long().clamp(0, side - 1)
            image = torch.arange(xy.shape[0], device=xy.device).unsqueeze(1).expand_as(col)
            predicted = found.offset[known.known][image[valid], row[valid], col[valid]]
            loss = loss + F.l1_loss(predicted, (cell - cell.floor())[valid])
        annotated = targets != IGNORE_INDEX
        if bool(annotated.any()):
            selection = found.selection[:, :m]
            loss = loss + F.binary_cross_entropy_with_logits(selection[annotated], targets[annotated].float())
            right = ((selection > 0) == (targets == 1)) | ~annotated
            exact = right[annotated.any(-1)].all(-1).float().mean().detach()
        return GroundingLossOutput(loss, exact)
