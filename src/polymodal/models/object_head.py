"""Object supervision for an image tower: attribute classifiers and an objectness map on its token grid.

Captions and questions tell a vision tower about objects only indirectly, through whatever the text
head manages to learn; a scene graph says it directly (this object, here, is a small red metal
cube). Reading attributes off the grid at each object's centre makes the grid cells *be* object
descriptors within a few hundred steps, and everything that cross-attends to them (VQA, captioning,
statement verification) starts from features that already separate colour, shape, size and place.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from polymodal.errors import ConfigError, DataError
from polymodal.losses.mlm import IGNORE_INDEX
from polymodal.losses.objects import ObjectLossOutput, features_at, object_loss


class ObjectVocab:
    """The categorical values of each object attribute, in a fixed order (saved with the checkpoint)."""

    def __init__(self, attributes: Mapping[str, Sequence[str]]) -> None:
        if not attributes or any(not values for values in attributes.values()):
            raise DataError(f"object attributes need at least one attribute with at least one value, got {dict(attributes)!r}")
        self.attributes = {name: list(values) for name, values in attributes.items()}
        self.index = {name: {v: i for i, v in enumerate(values)} for name, values in self.attributes.items()}

    @classmethod
    def build(cls, objects: Sequence[Mapping[str, Any]]) -> ObjectVocab:
        """From object records ``{"attributes": {name: value}, ...}``: every attribute and value seen, sorted."""
        seen: dict[str, set[str]] = {}
        for obj in objects:
            for name, value in obj["attributes"].items():
                seen.setdefault(name, set()).add(value)
        return cls({name: sorted(values) for name, values in sorted(seen.items())})

    def targets(self, images: Sequence[Sequence[Mapping[str, Any]] | None]) -> tuple[Tensor, Tensor, Tensor]:
        """``(attributes [B, M, A] long, xy [B, M, 2] float, annotated [B] bool)`` for the objects of each
        image (None: the image has no scene graph), padded to the batch's most objects with
        ``IGNORE_INDEX``; attribute values never seen in training are ignored too."""
        m = max(1, max((len(objs) for objs in images if objs is not None), default=0))
        # filled as numpy arrays: an element write to a tensor costs microseconds, and this runs in
        # the training loop's data path
        attrs = np.full((len(images), m, len(self.attributes)), IGNORE_INDEX, dtype=np.int64)
        xy = np.zeros((len(images), m, 2), dtype=np.float32)
        annotated = torch.tensor([objs is not None for objs in images], dtype=torch.bool)
        for i, objs in enumerate(images):
            for j, obj in enumerate(objs or ()):
                xy[i, j] = obj["x"], obj["y"]
                values = obj["attributes"]
                attrs[i, j] = [self.index[name].get(values.get(name), IGNORE_INDEX) for name in self.attributes]
        return torch.from_numpy(attrs), torch.from_numpy(xy), annotated

    def state(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.attributes.items()}


def token_grid(tokens: Tensor) -> Tensor:
    """``[B, N, C]`` image tokens as a ``[B, C, s, s]`` grid (a leading [CLS] token, as ViTs have, is dropped)."""
    n = tokens.shape[1]
    for skip in (0, 1):
        side = math.isqrt(n - skip)
        if side * side == n - skip and side > 0:
            grid = tokens[:, skip:]
            return grid.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)
    raise ConfigError(f"object supervision needs an image tower whose tokens form a square grid; got {n} tokens")


class ObjectHead(nn.Module):
    def __init__(self, width: int, vocab: ObjectVocab) -> None:
        super().__init__()
        self.vocab = vocab
        self.classifiers = nn.ModuleList(nn.Linear(width, len(values)) for values in vocab.attributes.values())
        self.objectness = nn.Linear(width, 1)

    def forward(self, tokens: Tensor, attribute_targets: Tensor, xy: Tensor, annotated: Tensor | None = None) -> ObjectLossOutput:
        grid = token_grid(tokens)
        at_objects = features_at(grid.float(), xy)
        logits = {name: clf(at_objects) for name, clf in zip(self.vocab.attributes, self.classifiers)}
        objectness = self.objectness(grid.permute(0, 2, 3, 1)).squeeze(-1)
        return object_loss(logits, attribute_targets, objectness, xy, annotated)

    @torch.no_grad()
    def describe(self, tokens: Tensor, xy: Tensor) -> list[list[dict[str, str]]]:
        """The predicted attributes of the objects centred at ``xy [B, M, 2]``."""
        at_objects = features_at(token_grid(tokens).float(), xy)
        names = list(self.vocab.attributes)
        best = [clf(at_objects).argmax(-1) for clf in self.classifiers]
        return [
            [{name: self.vocab.attributes[name][int(best[a][i, j])] for a, name in enumerate(names)} for j in range(xy.shape[1])]
            for i in range(xy.shape[0])
        ]
