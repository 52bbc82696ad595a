"""Scene graphs of the built-in world: objects with attributes and unambiguous positions.

Positions are sampled so that every pair of objects differs by a clear margin in x and in y. That
makes every spatial relation ("left of", "above") true or false with no borderline cases, which is
what lets a test recompute every answer from the scene graph alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 40),
    "blue": (40, 80, 215),
    "green": (40, 150, 40),
    "yellow": (235, 215, 50),
    "purple": (140, 50, 200),
    "cyan": (50, 205, 215),
    "gray": (120, 120, 120),
    "brown": (135, 80, 35),
}
SHAPES: tuple[str, ...] = ("cube", "sphere", "cylinder", "cone")
SIZES: tuple[str, ...] = ("small", "large")
MATERIALS: tuple[str, ...] = ("rubber", "metal")
ATTRIBUTES: tuple[str, ...] = ("size", "color", "material", "shape")
VALUES: dict[str, tuple[str, ...]] = {
    "color": tuple(COLORS),
    "shape": SHAPES,
    "size": SIZES,
    "material": MATERIALS,
}
# Radii as a fraction of the canvas side; the gap keeps objects apart so none hides another.
RADIUS = {"small": 0.075, "large": 0.115}
RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    size: str
    material: str
    x: float  # centre, fraction of the canvas width (0 = left edge)
    y: float  # centre, fraction of the canvas height (0 = top edge)

    @property
    def radius(self) -> float:
        return RADIUS[self.size]

    def attr(self, name: str) -> str:
        return getattr(self, name)


@dataclass(frozen=True)
class Scene:
    image_id: int
    objects: tuple[SceneObject, ...]

    def to_json(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "objects": [asdict(o) for o in self.objects]}

    @staticmethod
    def from_json(d: dict[str, Any]) -> "Scene":
        return Scene(int(d["image_id"]), tuple(SceneObject(**o) for o in d["objects"]))


def holds(a: SceneObject, rel: str, b: SceneObject) -> bool:
    """Is ``a`` <rel> ``b``? Image coordinates: y grows downwards, so 'above' means a smaller y."""
    if rel == "left":
        return a.x < b.x
    if rel == "right":
        return a.x > b.x
    if rel == "above":
        return a.y < b.y
    if rel == "below":
        return a.y > b.y
    raise ValueError(f"unknown relation {rel!r}; expected one of {RELATIONS}")


def sample_scene(
    rng: np.random.Generator,
    image_id: int,
    min_objects: int,
    max_objects: int,
    margin: float = 0.07,
    max_tries: int = 200,
) -> Scene:
    """Draw objects one by one, rejecting positions that overlap or sit too close in x or y."""
    n = int(rng.integers(min_objects, max_objects + 1))
    for _ in range(max_tries):
        objects: list[SceneObject] = []
        for _ in range(n):
            size = SIZES[rng.integers(len(SIZES))]
            r = RADIUS[size]
            for _ in range(100):
                x, y = (float(v) for v in rng.uniform(r + 0.02, 1 - r - 0.02, size=2))
                if all(
                    abs(x - o.x) >= margin
                    and abs(y - o.y) >= margin
                    and (x - o.x) ** 2 + (y - o.y) ** 2 >= (r + o.radius + 0.02) ** 2
                    for o in objects
                ):
                    break
            else:
                break  # no room for this object: start the scene again
            objects.append(
                SceneObject(
                    shape=SHAPES[rng.integers(len(SHAPES))],
                    color=tuple(COLORS)[rng.integers(len(COLORS))],
                    size=size,
                    material=MATERIALS[rng.integers(len(MATERIALS))],
                    x=round(x, 4),
                    y=round(y, 4),
                )
            )
        if len(objects) == n:
            return Scene(image_id, tuple(objects))
    raise RuntimeError(f"could not place {n} objects without overlap; lower max_objects")
