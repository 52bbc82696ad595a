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
* two selections are read off the slots: the objects the question's words describe, and a second set
  (the other side of "more cubes than spheres" or "is the cube left of the sphere");
* the first selection may follow up to two spatial relations ("the object directly left of the
  object above the cube"), computed exactly from the slots' positions (``relations.py``); the question
  only picks which relations and how many hops, so the layer never has to learn to compare coordinates;
* the heads read each selection's soft count (radial features around 0, 1, 2, ...), their difference,
  their mean features and the features' product, how many of the first stand in the asked relation to
  the second, and how many are in both;
* all of it is added to the fused question through a zero-initialised projection, so a model starts
  exactly as one without the readout.

When the data says which objects each text is about (the built-in world's programs; GQA's
annotations), the ``ground`` objective supervises the selection per object and trains the detector
on the scene graph's centres; a ``plan`` annotation (the program read as the two selections, the hops
and the relations) supervises each part on its own, which is what made spatial and compositional
questions learnable in 900 CPU steps (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polymodal.losses.mlm import IGNORE_INDEX
from polymodal.losses._masked import ignoring_mean_cross_entropy, mean_where
from polymodal.losses.objects import objectness_targets
from polymodal.models.object_head import token_grid
from polymodal.models.relations import RELATIONS, relate, relation_matrices
from polymodal.modules.encoders.base import EncoderOutput
from polymodal.modules.transformer import Transformer, indexes_beyond

MAX_HOPS = 2  # a selection follows up to 2 relations ("the object directly left of the object above the cube")
HOPS = MAX_HOPS + 1  # the choices: 0, 1 or 2 hops
RELATION_SLOTS = MAX_HOPS + 1  # a relation for each hop, then the one asked between the two selections


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
class PlanTargets:
    """Per text row, what its reasoning plan says (see ``tasks.multitask.plan_targets``): ``first``/``second
    [R, M]`` 1/0 per annotated object, ``hops [R]`` and ``relations [R, RELATION_SLOTS]`` (each hop's relation,
    then the one asked between the selections) as indices; ``IGNORE_INDEX`` where not annotated or unused."""

    first: Tensor
    second: Tensor
    hops: Tensor
    relations: Tensor

    def to(self, device: torch.device | str) -> PlanTargets:
        return PlanTargets(self.first.to(device), self.second.to(device), self.hops.to(device), self.relations.to(device))


@dataclass
class Readout:
    pooled: Tensor  # [R, W] the fused question with its count and selection added
    selection: Tensor  # [R, K] logits of "the text is about this slot": either selection (-inf on empty slots)
    slots: Tensor  # [R, K] True where a slot holds an object
    objectness: Tensor  # [B, s, s] detector logits per image
    offset: Tensor  # [B, s, s, 2] each cell's centre estimate inside the cell, in [0, 1]
    first: Tensor  # [R, K] logits of the selection the words describe, before any hop (-inf on empty slots)
    second: Tensor  # [R, K] logits of the second selection (-inf on empty slots)
    plan: Tensor  # [R, RELATION_SLOTS * len(RELATIONS) + HOPS] relation logits per hop and for the pair, then hop-count logits (see split_plan)

    def split_plan(self) -> tuple[Tensor, Tensor]:
        """``plan`` as relation logits ``[R, RELATION_SLOTS, len(RELATIONS)]`` and hop-count logits ``[R, HOPS]``."""
        return split_plan(self.plan)


def split_plan(plan: Tensor) -> tuple[Tensor, Tensor]:
    """Plan logits ``[R, RELATION_SLOTS * len(RELATIONS) + HOPS]`` as per-slot relation logits and hop-count logits."""
    cut = RELATION_SLOTS * len(RELATIONS)
    return plan[:, :cut].view(-1, RELATION_SLOTS, len(RELATIONS)), plan[:, cut:]


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
        # two selections: "a" may follow up to two relation hops from what the words describe ("the object
        # directly left of the cube"), "b" is a second phrase (the other side of a comparison or relation)
        self.select_query = nn.Linear(dim, dim)
        self.select_key = nn.Linear(dim, dim)
        self.second_query = nn.Linear(dim, dim)
        self.second_key = nn.Linear(dim, dim)
        # per text: the relation of each hop, the relation checked between "a" and "b", and how many hops
        self.plan = nn.Linear(dim, RELATION_SLOTS * len(RELATIONS) + HOPS)
        with torch.no_grad():  # start as the one-selection readout: no hop
            self.plan.bias[-HOPS:] = torch.tensor([2.0] + [0.0] * (HOPS - 1))
        self.register_buffer("count_centres", torch.arange(max_count + 1, dtype=torch.float32), persistent=False)
        self.register_buffer("difference_centres", torch.arange(-4, 5, dtype=torch.float32), persistent=False)
        # asked, both selections' features and their product; both counts, their difference, and the
        # relation and overlap counts (around 0, 1, 2)
        reads = 4 * dim + 2 * self.count_centres.numel() + self.difference_centres.numel() + 2 * 3
        self.out = nn.Linear(reads, text_width)
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
        if rows.shape != pooled.shape[:1] or indexes_beyond(rows, image_tokens.shape[0]):
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
        # selections, relations and counts in float32: under bf16 autocast a probability of 0.9999 rounds to 1,
        # and its logit to infinity
        with torch.autocast(device_type=states.device.type, enabled=False):
            states = states.float()
            asked, objects = states[:, 0], states[:, 1:]
            first = self._scores(self.select_query(asked), self.select_key(objects), slots)
            second_logits = self._scores(self.second_query(asked), self.second_key(objects), slots)
            second = torch.sigmoid(second_logits)
            matrices = relation_matrices(self._annotated_where_known(xy, known), present)[rows]  # [R, P, K, K]
            plan = self.plan(asked)
            relation_logits, hop_logits = split_plan(plan)
            hop_relations = relation_logits.softmax(-1)  # [R, RELATION_SLOTS, len(RELATIONS)]
            hops = hop_logits.softmax(-1)  # [R, HOPS]: 0, 1 or 2 relation hops
            step = torch.sigmoid(first)
            chosen = hops[:, :1] * step
            for h in range(1, HOPS):
                step = relate(step, matrices, hop_relations[:, h - 1])
                chosen = chosen + hops[:, h : h + 1] * step
            related = (chosen * relate(second, matrices, hop_relations[:, MAX_HOPS])).sum(-1, keepdim=True)  # "a" <rel> "b"?
            both = (chosen * second).sum(-1, keepdim=True)
            count, second_count = chosen.sum(-1, keepdim=True), second.sum(-1, keepdim=True)
            selected = torch.einsum("rk,rkd->rd", chosen, objects) / count.clamp(min=1.0)
            second_selected = torch.einsum("rk,rkd->rd", second, objects) / second_count.clamp(min=1.0)
            extra = self.out(torch.cat([
                asked, selected, second_selected, selected * second_selected,
                self._near(count, self.count_centres), self._near(second_count, self.count_centres),
                self._near(count - second_count, self.difference_centres),
                self._near(related, self.count_centres[:3]), self._near(both, self.count_centres[:3]),
            ], dim=-1))
            union = 1.0 - (1.0 - chosen) * (1.0 - second)  # what the grounding annotation names: both selections
            union = union.clamp(1e-6, 1.0 - 1e-6)
            logits = (torch.log(union) - torch.log1p(-union)).masked_fill(~slots, float("-inf"))
        return Readout(pooled + extra.to(pooled.dtype), logits, slots, objectness, offset, first, second_logits, plan)

    def _scores(self, query: Tensor, keys: Tensor, slots: Tensor) -> Tensor:
        return (torch.einsum("rd,rkd->rk", query, keys) / math.sqrt(self.dim)).masked_fill(~slots, float("-inf"))

    @staticmethod
    def _near(value: Tensor, centres: Tensor) -> Tensor:
        """``value [R, 1]`` as radial features around ``centres``: a head reads "exactly 2" off one input."""
        return torch.exp(-2.0 * (value - centres) ** 2)

    @staticmethod
    def _annotated_where_known(xy: Tensor, known: KnownObjects | None) -> Tensor:
        """The slots' positions for the relations: while training, the annotated centres (exact, so a hop
        is taught the true geometry while the detector's offsets are still rough); detected ones elsewhere."""
        if known is None:
            return xy
        given = F.pad(known.xy.to(xy.dtype), (0, 0, 0, xy.shape[1] - known.xy.shape[1]))
        return torch.where(known.known[:, None, None], given, xy)

    def _teacher_forced(self, index: Tensor, present: Tensor, known: KnownObjects, side: int) -> tuple[Tensor, Tensor]:
        """The annotated objects' cells, in annotation order (so slot j is object j), for images that
        have them; the detector's slots elsewhere."""
        if known.xy.shape[0] != index.shape[0]:
            raise ValueError(f"grounded readout: annotated objects for {known.xy.shape[0]} images but tokens for {index.shape[0]}")
        m = known.xy.shape[1]
        # no detected slots needed: only as many slots as annotated objects (cheaper). Not while compiling: a
        # graph's shapes must not depend on the batch's values, and the extra slots are empty, so masked
        if not torch.compiler.is_compiling() and bool(known.known.all()):
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
    def loss(found: Readout, known: KnownObjects, targets: Tensor, plan: PlanTargets | None = None) -> GroundingLossOutput:
        """The detector against the annotated centres, and the selections against the annotation:
        ``targets [R, M]`` is 1 for the objects a text is about, 0 for its image's other objects,
        ignored for padding and unannotated texts (the slots must be the teacher-forced ones, so slot
        ``j`` is object ``j``). Texts with a ``plan`` are taught its parts instead (each selection, the
        number of hops and each relation), which says more than the union of what they select."""
        m = targets.shape[1]
        if known.xy.shape[1] != m or known.xy.shape[0] != found.objectness.shape[0] or found.selection.shape[0] != targets.shape[0] or found.selection.shape[1] < m:
            raise ValueError(
                f"grounding: expected selection [R, >=M], targets [R, M] and xy [B, M, 2] for the readout's B images; got "
                f"{list(found.selection.shape)}, {list(targets.shape)} and {list(known.xy.shape)} (objectness {list(found.objectness.shape)})"
            )
        if plan is not None and (plan.first.shape != targets.shape or plan.second.shape != targets.shape or plan.hops.shape != targets.shape[:1]):
            raise ValueError(f"grounding: plan targets {list(plan.first.shape)}, {list(plan.second.shape)}, {list(plan.hops.shape)} do not match the {list(targets.shape)} grounding targets")
        # every term is a mean over a mask, never over boolean-indexed rows (see losses._masked): nothing is
        # read back to the host, so the loss compiles with the model, and with nothing annotated every part
        # of the readout still reaches the loss, as DDP needs
        annotated_images = known.known
        side = found.objectness.shape[-1]
        cells = F.binary_cross_entropy_with_logits(found.objectness, objectness_targets(known.xy, known.valid, side, side), reduction="none")
        loss = mean_where(cells, annotated_images[:, None, None].expand_as(cells))
        cell = known.xy * side
        col, row = cell[..., 0].long().clamp(0, side - 1), cell[..., 1].long().clamp(0, side - 1)
        image = torch.arange(cell.shape[0], device=cell.device).unsqueeze(1).expand_as(col)
        offset_error = (found.offset[image, row, col] - (cell - cell.floor())).abs()  # [B, M, 2]
        placed = known.valid & annotated_images.unsqueeze(1)
        loss = loss + mean_where(offset_error, placed.unsqueeze(-1).expand_as(offset_error))
        planned = torch.zeros_like(targets[:, 0], dtype=torch.bool) if plan is None else plan.hops != IGNORE_INDEX
        selections = [(found.selection, targets, (targets != IGNORE_INDEX) & ~planned.unsqueeze(1))]
        if plan is not None:
            selections += [(logits, target, (target != IGNORE_INDEX) & planned.unsqueeze(1)) for logits, target in ((found.first, plan.first), (found.second, plan.second))]
            relation_logits, hop_logits = found.split_plan()
            loss = loss + ignoring_mean_cross_entropy(hop_logits, torch.where(planned, plan.hops, IGNORE_INDEX))
            used = torch.where(planned.unsqueeze(1), plan.relations, IGNORE_INDEX)
            loss = loss + ignoring_mean_cross_entropy(relation_logits.flatten(0, 1), used.flatten())
        right = counted = torch.zeros((), device=targets.device)
        for logits, target, annotated in selections:
            part, right_rows, rows = _selection_loss(logits[:, :m], target, annotated)
            loss, right, counted = loss + part, right + right_rows, counted + rows
        exact = (right / counted.clamp(min=1)).detach()
        return GroundingLossOutput(loss, exact)


def _selection_loss(logits: Tensor, targets: Tensor, annotated: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """BCE of per-slot ``logits [R, M]`` against 1/0 ``targets`` where ``annotated``; how many rows with an
    annotated slot selected every slot right, and how many rows have one."""
    given = torch.where(annotated, targets, 0).float()
    bce = F.binary_cross_entropy_with_logits(torch.where(annotated, logits, 0.0), given, reduction="none")  # empty slots' -inf left out
    right = ((logits > 0) == (targets == 1)) | ~annotated
    rows = annotated.any(-1)
    return mean_where(bce, annotated), (right.all(-1) & rows).sum(), rows.sum()
