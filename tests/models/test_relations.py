"""The fixed spatial relations agree with the world's own program interpreter on random scenes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polymodal.data.world.programs import Undefined, resolve
from polymodal.data.world.scene import RELATIONS as WORLD_RELATIONS
from polymodal.data.world.scene import holds, sample_scene
from polymodal.models.relations import DIRECTIONS, RELATIONS, relate, relation_matrices


def scene_tensors(scenes, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    xy = torch.zeros(len(scenes), k, 2)
    present = torch.zeros(len(scenes), k, dtype=torch.bool)
    for b, scene in enumerate(scenes):
        for i, obj in enumerate(scene.objects):
            xy[b, i] = torch.tensor([obj.x, obj.y])
            present[b, i] = True
    return xy, present


def test_relations_match_the_world_interpreter() -> None:
    assert DIRECTIONS == WORLD_RELATIONS
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng, i, 2, 6) for i in range(40)]
    k = 7  # one padding slot at least
    matrices = relation_matrices(*scene_tensors(scenes, k))
    assert matrices.shape == (40, len(RELATIONS), k, k)
    for b, scene in enumerate(scenes):
        objs = scene.objects
        assert not matrices[b, :, len(objs):].any() and not matrices[b, :, :, len(objs):].any()  # padding relates to nothing
        for p, rel in enumerate(DIRECTIONS):
            for j, anchor in enumerate(objs):
                expected = [i != j and holds(o, rel, anchor) for i, o in enumerate(objs)]
                assert matrices[b, p, : len(objs), j].bool().tolist() == expected
                try:  # "the object directly <rel> the anchor", as the world's programs resolve it
                    nearest = objs.index(resolve(scene, {"nearest": rel, "of": {"filter": {"x": anchor.x}}}))
                except Undefined:
                    nearest = None
                column = matrices[b, len(DIRECTIONS) + p, : len(objs), j]
                assert column.nonzero().flatten().tolist() == ([] if nearest is None else [nearest])


def test_relate_follows_the_anchors_and_the_chosen_relation() -> None:
    # three objects in a row, left to right: 0, 1, 2 (and one empty slot)
    xy = torch.tensor([[[0.1, 0.5], [0.5, 0.4], [0.9, 0.6], [0.0, 0.0]]])
    present = torch.tensor([[True, True, True, False]])
    matrices = relation_matrices(xy, present)
    left, directly_left = torch.eye(len(RELATIONS))[[RELATIONS.index("left"), RELATIONS.index("directly left")]]
    anchor_2 = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    assert relate(anchor_2, matrices, left[None])[0].tolist() == pytest.approx([1.0, 1.0, 0.0, 0.0], abs=1e-3)
    assert relate(anchor_2, matrices, directly_left[None])[0].tolist() == pytest.approx([0.0, 1.0, 0.0, 0.0], abs=1e-3)
    # two half-sure anchors: their common left neighbour by a noisy-or, not a sum
    unsure = torch.tensor([[0.0, 0.5, 0.5, 0.0]])
    assert relate(unsure, matrices, left[None])[0, 0].item() == pytest.approx(0.75, abs=1e-3)
    # a mixture of relations and anchors is differentiable in both
    mixture = torch.full((1, len(RELATIONS)), 1.0 / len(RELATIONS), requires_grad=True)
    anchors = unsure.clone().requires_grad_(True)
    relate(anchors, matrices, mixture).sum().backward()
    assert mixture.grad.abs().sum() > 0 and anchors.grad.abs().sum() > 0


def test_relation_matrices_name_the_expected_shapes() -> None:
    with pytest.raises(ValueError, match=r"xy \[B, K, 2\]"):
        relation_matrices(torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool))
