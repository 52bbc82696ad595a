"""The grounded readout on its own: slots for the annotated objects while training, detected ones at
inference, a count that follows the selection, and a detector the grounding loss can teach."""

from __future__ import annotations

import pytest
import torch

from polymodal.losses.mlm import IGNORE_INDEX
from polymodal.models.grounded_readout import GroundedReadout, KnownObjects, PlanTargets, Readout, split_plan
from polymodal.models.relations import RELATIONS
from polymodal.modules.encoders.base import EncoderOutput

SIDE = 4  # a 4 x 4 token grid


def texts(rows: int, width: int = 8, length: int = 3) -> EncoderOutput:
    return EncoderOutput(tokens=torch.randn(rows, length, width), pooled=torch.randn(rows, width), mask=torch.ones(rows, length, dtype=torch.bool))


def cell_centre(col: int, row: int) -> list[float]:
    return [(col + 0.5) / SIDE, (row + 0.5) / SIDE]


def small_readout(**changes: int) -> GroundedReadout:
    torch.manual_seed(0)
    return GroundedReadout(**({"text_width": 8, "image_width": 4, "dim": 8, "depth": 1, "heads": 2, "max_objects": 5} | changes))


def test_readout_starts_as_a_no_op() -> None:
    readout = small_readout()
    fused = texts(3)
    found = readout(fused, torch.randn(3, SIDE * SIDE, 4))
    torch.testing.assert_close(found.pooled, fused.pooled)
    assert found.objectness.shape == (3, SIDE, SIDE) and found.offset.shape == (3, SIDE, SIDE, 2)


def test_teacher_forcing_puts_annotated_object_j_in_slot_j() -> None:
    readout = small_readout()
    xy = torch.tensor([[cell_centre(0, 0), cell_centre(3, 2), cell_centre(1, 1)], [cell_centre(2, 2), [0.0, 0.0], [0.0, 0.0]]])
    valid = torch.tensor([[True, True, True], [True, False, False]])
    rows = torch.tensor([0, 0, 1])  # two texts about image 0, one about image 1
    found = readout(texts(3), torch.randn(2, SIDE * SIDE, 4), KnownObjects(xy, valid, torch.ones(2, dtype=torch.bool)), rows)
    # every image annotated: exactly as many slots as annotated objects, padding slots empty
    assert found.slots.tolist() == valid[rows].tolist()
    assert torch.isinf(found.selection[~found.slots]).all() and torch.isfinite(found.selection[found.slots]).all()
    # an image without a scene graph gets the detector's slots (up to max_objects) even while training
    found = readout(texts(3), torch.randn(2, SIDE * SIDE, 4), KnownObjects(xy, valid, torch.tensor([True, False])), rows)
    assert found.selection.shape == (3, 5) and found.slots[:2, :3].all() and not found.slots[:2, 3:].any()


def test_detect_keeps_adjacent_objects_most_confident_first() -> None:
    readout = small_readout(max_objects=3)
    objectness = torch.full((1, SIDE, SIDE), -5.0)
    objectness[0, 1, 1], objectness[0, 1, 2], objectness[0, 3, 0], objectness[0, 0, 3] = 2.0, 3.0, 1.0, 0.5
    cells, present = readout.detect(objectness)
    assert cells.tolist() == [[1 * SIDE + 2, 1 * SIDE + 1, 3 * SIDE + 0]]  # two neighbours both kept; capped at 3
    assert present.tolist() == [[True, True, True]]
    cells, present = readout.detect(torch.full((1, SIDE, SIDE), -1.0))
    assert not present.any()


def test_an_image_with_no_detected_object_reads_finite_features() -> None:
    """All slots empty (nothing above 0.5 objectness): the question still attends to itself, the count
    is zero and nothing turns NaN."""
    readout = small_readout()
    torch.nn.init.normal_(readout.out.weight)
    with torch.no_grad():
        readout.detector[-1].bias.fill_(-100.0)
    found = readout(texts(2), torch.randn(2, SIDE * SIDE, 4))
    assert not found.slots.any() and float(torch.sigmoid(found.selection.detach()).sum()) == 0.0
    assert torch.isfinite(found.pooled).all()


def force(readout: GroundedReadout, first: float, second: float = -1.0, hops: int = 0, relation: str = "left") -> None:
    """Make the readout select every slot (``first > 0``) or none, likewise the second selection, and follow
    ``hops`` times ``relation``, whatever the question says."""
    with torch.no_grad():
        for query, key, sign in ((readout.select_query, readout.select_key, first), (readout.second_query, readout.second_key, second)):
            query.weight.zero_()
            key.weight.zero_()
            query.bias.fill_(1.0)
            key.bias.fill_(20.0 * sign)
        readout.plan.weight.zero_()
        bias = torch.zeros_like(readout.plan.bias).unsqueeze(0)
        per_slot, hop_count = split_plan(bias)  # views of bias
        per_slot[..., RELATIONS.index(relation)] = 50.0
        hop_count[:, hops] = 50.0
        readout.plan.bias.copy_(bias[0])


def test_count_follows_the_selection() -> None:
    """Selecting every slot or none moves the selection's probability mass from 0 to the object count,
    and the heads see the difference once the output projection is trained."""
    readout = small_readout()
    xy = torch.tensor([[cell_centre(0, 0), cell_centre(2, 1), cell_centre(3, 3)]])
    known = KnownObjects(xy, torch.ones(1, 3, dtype=torch.bool), torch.ones(1, dtype=torch.bool))
    fused, tokens = texts(1), torch.randn(1, SIDE * SIDE, 4)
    pooled = {}
    with torch.no_grad():
        torch.nn.init.normal_(readout.out.weight)
        for name, sign in (("none", -1.0), ("all", 1.0)):
            force(readout, first=sign)
            found = readout(fused, tokens, known)
            pooled[name] = found.pooled
            assert float(torch.sigmoid(found.selection).sum()) == pytest.approx(3.0 if sign > 0 else 0.0, abs=1e-3)
    assert not torch.allclose(pooled["none"], pooled["all"])


@pytest.mark.parametrize(("hops", "relation", "expected"), [
    (1, "left", [1.0, 1.0, 0.0]),  # everything left of something: all but the rightmost
    (1, "directly above", [1.0, 1.0, 0.0]),  # for each object, the nearest one above it
    (2, "directly right", [0.0, 0.0, 1.0]),  # right of what is right of something: the rightmost
])
def test_hops_follow_the_relation_from_the_slots_positions(hops: int, relation: str, expected: list[float]) -> None:
    readout = small_readout()
    # three objects down a diagonal: 0 top left, 1 middle, 2 bottom right
    xy = torch.tensor([[cell_centre(0, 0), cell_centre(1, 1), cell_centre(3, 3)]])
    known = KnownObjects(xy, torch.ones(1, 3, dtype=torch.bool), torch.ones(1, dtype=torch.bool))
    force(readout, first=1.0, hops=hops, relation=relation)
    with torch.no_grad():
        found = readout(texts(1), torch.randn(1, SIDE * SIDE, 4), known)
    assert torch.sigmoid(found.selection)[0].tolist() == pytest.approx(expected, abs=1e-3)
    assert torch.sigmoid(found.first)[0].tolist() == pytest.approx([1.0] * 3, abs=1e-3)  # the words' selection, before the hops


def test_plan_targets_teach_both_selections_and_the_relations() -> None:
    """Texts with a plan are taught each selection, the hop count and each relation (not the union);
    texts without one keep the union target."""
    readout = small_readout()
    xy = torch.tensor([[cell_centre(0, 0), cell_centre(2, 1), cell_centre(3, 3)]])
    known = KnownObjects(xy, torch.ones(1, 3, dtype=torch.bool), torch.ones(1, dtype=torch.bool))
    rows = torch.zeros(2, dtype=torch.long)
    found = readout(texts(2), torch.randn(1, SIDE * SIDE, 4), known, rows)
    union = torch.tensor([[1.0, 0.0, 1.0], [float(IGNORE_INDEX)] * 3])
    plan = PlanTargets(
        first=torch.tensor([[float(IGNORE_INDEX)] * 3, [0.0, 1.0, 0.0]]),
        second=torch.tensor([[float(IGNORE_INDEX)] * 3, [0.0, 0.0, 1.0]]),
        hops=torch.tensor([IGNORE_INDEX, 1]),
        relations=torch.tensor([[IGNORE_INDEX] * 3, [RELATIONS.index("directly left"), IGNORE_INDEX, RELATIONS.index("above")]]),
    )
    GroundedReadout.loss(found, known, union, plan).loss.backward()
    for name in ("select_key", "second_key", "plan"):
        assert getattr(readout, name).weight.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="plan targets"):
        GroundedReadout.loss(found, known, union, PlanTargets(plan.first[:1], plan.second, plan.hops, plan.relations))


def test_grounding_loss_teaches_the_detector_the_annotated_centres() -> None:
    """Image tokens mark their objects' cells with a feature; after training on the annotation alone, the
    detector finds exactly those cells at inference (no annotation given) and their in-cell position."""
    g = torch.Generator().manual_seed(0)
    images, objects = 32, 2
    picks = torch.stack([torch.randperm(SIDE * SIDE, generator=g)[:objects] for _ in range(images)])
    inside = torch.rand(images, objects, 2, generator=g) * 0.8 + 0.1
    xy = (torch.stack([picks % SIDE, picks // SIDE], dim=-1) + inside) / SIDE
    tokens = torch.randn(images, SIDE * SIDE, 4, generator=g) * 0.3
    tokens[torch.arange(images).unsqueeze(1), picks, 0] += 3.0
    tokens[torch.arange(images).unsqueeze(1), picks, 1] += inside[..., 0] * 3.0
    tokens[torch.arange(images).unsqueeze(1), picks, 2] += inside[..., 1] * 3.0
    known = KnownObjects(xy, torch.ones(images, objects, dtype=torch.bool), torch.ones(images, dtype=torch.bool))
    targets = torch.full((images, objects), IGNORE_INDEX)
    readout = small_readout()
    opt = torch.optim.Adam(readout.parameters(), lr=1e-2)
    fused = texts(images)
    for _ in range(150):
        loss = GroundedReadout.loss(readout(fused, tokens, known), known, targets).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        found: Readout = readout(fused, tokens)
        cells, present = readout.detect(found.objectness)
    assert present.sum(1).tolist() == [objects] * images
    assert sorted(map(tuple, cells[:, :objects].sort(1).values.tolist())) == sorted(map(tuple, picks.sort(1).values.tolist()))
    predicted = found.offset.flatten(1, 2)[torch.arange(images).unsqueeze(1), picks]
    assert float((predicted - inside).abs().mean()) < 0.1


def test_shape_errors_name_what_was_expected() -> None:
    readout = small_readout()
    with pytest.raises(ValueError, match="2 texts but image tokens for 1"):
        readout(texts(2), torch.randn(1, SIDE * SIDE, 4))
    with pytest.raises(ValueError, match="annotated objects for 2 images but tokens for 1"):
        known = KnownObjects(torch.rand(2, 3, 2), torch.ones(2, 3, dtype=torch.bool), torch.ones(2, dtype=torch.bool))
        readout(texts(1), torch.randn(1, SIDE * SIDE, 4), known)
    known = KnownObjects(torch.rand(1, 3, 2), torch.ones(1, 3, dtype=torch.bool), torch.ones(1, dtype=torch.bool))
    found = readout(texts(1), torch.randn(1, SIDE * SIDE, 4), known)
    with pytest.raises(ValueError, match="grounding: expected selection"):
        GroundedReadout.loss(found, known, torch.zeros(1, 4))


def boolean_indexed_grounding_loss(found: Readout, known: KnownObjects, targets: torch.Tensor, plan: PlanTargets) -> tuple[torch.Tensor, torch.Tensor]:
    """The grounding loss as first written, with means over boolean-indexed rows (each a host read-back):
    the reference the compile-friendly masked means must equal."""
    import torch.nn.functional as F

    from polymodal.losses.objects import objectness_targets

    m, side = targets.shape[1], found.objectness.shape[-1]
    xy, valid = known.xy[known.known], known.valid[known.known]
    loss = F.binary_cross_entropy_with_logits(found.objectness[known.known], objectness_targets(xy, valid, side, side))
    cell = xy * side
    col, row = cell[..., 0].long().clamp(0, side - 1), cell[..., 1].long().clamp(0, side - 1)
    image = torch.arange(xy.shape[0]).unsqueeze(1).expand_as(col)
    loss = loss + F.l1_loss(found.offset[known.known][image[valid], row[valid], col[valid]], (cell - cell.floor())[valid])
    planned = plan.hops != IGNORE_INDEX
    relation_logits, hop_logits = found.split_plan()
    loss = loss + F.cross_entropy(hop_logits[planned], plan.hops[planned])
    loss = loss + F.cross_entropy(relation_logits[planned].flatten(0, 1), plan.relations[planned].flatten(), ignore_index=IGNORE_INDEX)
    right_rows = []
    for logits, target, annotated in ((found.selection, targets, (targets != IGNORE_INDEX) & ~planned.unsqueeze(1)),
                                      (found.first, plan.first, (plan.first != IGNORE_INDEX) & planned.unsqueeze(1)),
                                      (found.second, plan.second, (plan.second != IGNORE_INDEX) & planned.unsqueeze(1))):
        logits = logits[:, :m]
        loss = loss + F.binary_cross_entropy_with_logits(logits[annotated], target[annotated].float())
        right_rows.append((((logits > 0) == (target == 1)) | ~annotated)[annotated.any(-1)].all(-1))
    return loss, torch.cat(right_rows).float().mean()


def mixed_grounding_batch() -> tuple[GroundedReadout, Readout, KnownObjects, torch.Tensor, PlanTargets]:
    """Three images (the last has no scene graph), five texts: two planned, two with a union target, one
    with nothing annotated. Slots beyond an image's objects are empty (their logits -inf)."""
    readout = small_readout()
    xy = torch.tensor([[cell_centre(0, 0), cell_centre(2, 1), cell_centre(3, 3)], [cell_centre(1, 2), cell_centre(1, 1), [0.0, 0.0]], [[0.0, 0.0]] * 3])
    valid = torch.tensor([[True, True, True], [True, True, False], [False, False, False]])
    known = KnownObjects(xy, valid, torch.tensor([True, True, False]))
    rows = torch.tensor([0, 0, 1, 1, 2])
    found = readout(texts(5), torch.randn(3, SIDE * SIDE, 4), known, rows)
    no = float(IGNORE_INDEX)
    union = torch.tensor([[1.0, 0.0, 1.0], [no] * 3, [0.0, 1.0, no], [no] * 3, [no] * 3])
    plan = PlanTargets(
        first=torch.tensor([[no] * 3, [0.0, 1.0, 0.0], [no] * 3, [1.0, 0.0, no], [no] * 3]),
        second=torch.tensor([[no] * 3, [0.0, 0.0, 1.0], [no] * 3, [0.0, 1.0, no], [no] * 3]),
        hops=torch.tensor([IGNORE_INDEX, 1, IGNORE_INDEX, 0, IGNORE_INDEX]),
        relations=torch.tensor([[IGNORE_INDEX] * 3, [RELATIONS.index("directly left"), IGNORE_INDEX, RELATIONS.index("above")], [IGNORE_INDEX] * 3, [IGNORE_INDEX, IGNORE_INDEX, RELATIONS.index("left")], [IGNORE_INDEX] * 3]),
    )
    return readout, found, known, union, plan


def test_grounding_loss_masked_means_equal_the_boolean_indexed_ones() -> None:
    """The loss reads nothing back to the host (so it compiles with the model), and is still the mean over
    the annotated images, objects and texts, with the same gradients."""
    readout, found, known, union, plan = mixed_grounding_batch()
    assert torch.isinf(found.selection[2:4, 2]).all()  # image 1's third slot is empty
    out = GroundedReadout.loss(found, known, union, plan)
    reference, exact = boolean_indexed_grounding_loss(found, known, union, plan)
    torch.testing.assert_close(out.loss, reference)
    assert float(out.exact) == pytest.approx(float(exact))
    params = [p for p in readout.parameters() if p.requires_grad]
    mine = torch.autograd.grad(out.loss, params, retain_graph=True, allow_unused=True)
    theirs = torch.autograd.grad(reference, params, allow_unused=True)
    for name, a, b in zip([n for n, p in readout.named_parameters() if p.requires_grad], mine, theirs):
        torch.testing.assert_close(a if a is not None else torch.zeros(()), b if b is not None else torch.zeros(()), msg=name)


def test_grounding_loss_with_nothing_annotated_is_a_zero_that_reaches_the_readout() -> None:
    """No scene graph and no target in the batch: a finite zero, a zero gradient for every part (DDP needs
    them all), not the NaN of a mean over nothing."""
    readout, found, known, union, plan = mixed_grounding_batch()
    nobody = KnownObjects(known.xy, known.valid, torch.zeros(3, dtype=torch.bool))
    no = torch.full_like(union, IGNORE_INDEX)
    out = GroundedReadout.loss(found, nobody, no, PlanTargets(no, no, torch.full_like(plan.hops, IGNORE_INDEX), torch.full_like(plan.relations, IGNORE_INDEX)))
    out.loss.backward()
    assert float(out.loss.detach()) == 0.0 and float(out.exact) == 0.0
    for name, p in readout.named_parameters():
        if name.startswith(("detector", "feature", "place", "select", "second", "plan")):
            assert p.grad is not None and torch.isfinite(p.grad).all() and float(p.grad.abs().sum()) == 0.0, name


def test_grounded_readout_training_step_compiles_without_a_graph_break() -> None:
    """Teacher forcing and the loss keep their shapes whatever the batch holds: the whole step is one graph."""
    import torch._dynamo

    readout, _, known, union, plan = mixed_grounding_batch()
    fused, tokens, rows = texts(5), torch.randn(3, SIDE * SIDE, 4), torch.tensor([0, 0, 1, 1, 2])

    def step(fused: EncoderOutput, tokens: torch.Tensor, known: KnownObjects, rows: torch.Tensor, union: torch.Tensor, plan: PlanTargets) -> torch.Tensor:
        return GroundedReadout.loss(readout(fused, tokens, known, rows), known, union, plan).loss

    torch._dynamo.reset()
    explained = torch._dynamo.explain(step)(fused, tokens, known, rows, union, plan)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(fused, tokens, known, rows, union, plan), step(fused, tokens, known, rows, union, plan))
