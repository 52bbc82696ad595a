"""Scene graphs: per image, its objects' attributes and where they are (CLEVR ``*_scenes.json`` layout).

``{"scenes": [{"image_filename", "image_index" | "image_id", "objects": [{...}]}]}``. An object gives
its categorical attributes (``color``, ``shape``, ``size``, ``material`` in CLEVR; any string-valued
keys are kept) and its centre, either as ``x``/``y`` fractions of the image (the built-in world) or
as CLEVR's ``pixel_coords: [x, y, depth]`` in pixels of an ``image_size: [width, height]`` canvas.

One :class:`Sample` per image, with no text: ``meta["objects"]`` holds
``{"x": float, "y": float, "attributes": {name: value}}`` records. Object-level supervision of this
kind is what lets a small vision tower learn *what is where* in minutes rather than hours (the
bottom-up features of VQA models are trained the same way, on Visual Genome's object attributes).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from polymodal.data.formats._common import check_record, clevr_records, origin
from polymodal.data.report import DataReport
from polymodal.data.sample import Sample
from polymodal.data.sources import ScenesSource

FORMAT = "scenes"
# Keys of a CLEVR object that are geometry or bookkeeping, not categorical attributes.
_NOT_ATTRIBUTES = frozenset({"x", "y", "pixel_coords", "3d_coords", "rotation", "id", "mask", "bbox"})


def read(spec: ScenesSource, report: DataReport) -> Iterator[Sample]:
    scenes, split = clevr_records(spec.path, "scenes", spec.images, FORMAT, "path")
    return _samples(spec, scenes, split, report)


def _samples(spec: ScenesSource, scenes: list[Any], file_split: str | None, report: DataReport) -> Iterator[Sample]:
    for i, scene in enumerate(scenes):
        where = origin(spec.path, f"scene {i}")
        if not check_record(scene, ("image_filename", "objects"), report, where):
            continue
        if not isinstance(scene["objects"], list):
            report.add("bad_record", where, f"'objects' must be a list, got {type(scene['objects']).__name__}")
            continue
        objects = []
        for j, obj in enumerate(scene["objects"]):
            parsed = _object(obj, spec, report, f"{where}, object {j}")
            if parsed is None:
                break
            objects.append(parsed)
        else:
            image_id = scene.get("image_id", scene.get("image_index", scene["image_filename"]))
            yield Sample(
                sample_id=f"scene:{image_id}",
                origin=where,
                image_path=spec.images / str(scene["image_filename"]),
                image_id=str(image_id),
                split=scene.get("split", file_split),
                meta={"objects": tuple(objects)},
            )


def _object(obj: Any, spec: ScenesSource, report: DataReport, where: str) -> dict[str, Any] | None:
    """An object's centre (fractions of the image) and string attributes, or None after reporting why not."""
    if not isinstance(obj, dict):
        report.add("bad_record", where, f"an object must be a mapping, got {type(obj).__name__}")
        return None
    pixels: tuple[int, int] | None = None  # the image size when the centre is given in pixels
    if "x" in obj and "y" in obj:
        x, y = obj["x"], obj["y"]
    elif "pixel_coords" in obj:
        if spec.image_size is None:
            report.add("bad_record", where, "object gives 'pixel_coords' but the source sets no image_size: [width, height]")
            return None
        coords = obj["pixel_coords"]
        if not isinstance(coords, (list, tuple)) or len(coords) < 2:
            report.add("bad_record", where, f"'pixel_coords' must be [x, y, ...], got {coords!r}")
            return None
        x, y = coords[0], coords[1]
        pixels = spec.image_size
    else:
        report.add("bad_record", where, "object has neither 'x'/'y' nor 'pixel_coords'")
        return None
    try:
        x, y = float(x), float(y)
    except (TypeError, ValueError):
        report.add("bad_record", where, f"object centre must be numbers, got x={x!r}, y={y!r}")
        return None
    if pixels is not None:  # pixel_coords: to fractions of the image
        x, y = x / pixels[0], y / pixels[1]
    if not (math.isfinite(x) and math.isfinite(y) and 0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
        report.add("bad_record", where, f"object centre ({x}, {y}) lies outside the image (expected fractions in [0, 1])")
        return None
    attributes = {k: v for k, v in obj.items() if k not in _NOT_ATTRIBUTES and isinstance(v, str)}
    if not attributes:
        report.add("bad_record", where, "object has no string attributes (such as color or shape)")
        return None
    return {"x": x, "y": y, "attributes": attributes}
