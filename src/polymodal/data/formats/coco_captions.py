"""COCO captions: ``captions_<split>.json`` with ``images`` (id, file_name) and ``annotations``.

One :class:`Sample` per caption; ``image_id`` groups the (usually five) captions of one image and
``sample_id`` is the annotation id. The split is taken from the file's ``info`` or name when known.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from polymodal.data.formats._common import check_record, id_field, json_list, load_json, origin, require_dir, text_field
from polymodal.data.report import DataReport
from polymodal.data.sample import Sample
from polymodal.data.sources import CocoCaptionsSource

FORMAT = "coco_captions"
_SPLIT_IN_NAME = re.compile(r"captions_([A-Za-z]+\d*)\.json$")


def read(spec: CocoCaptionsSource, report: DataReport) -> Iterator[Sample]:
    tree = load_json(spec.annotations, FORMAT, "annotations")
    images = json_list(tree, "images", spec.annotations, FORMAT, "annotations")
    annotations = json_list(tree, "annotations", spec.annotations, FORMAT, "annotations")
    require_dir(spec.images, FORMAT, "images")
    return _samples(spec, images, annotations, report)


def _samples(
    spec: CocoCaptionsSource, images: list[Any], annotations: list[Any], report: DataReport
) -> Iterator[Sample]:
    path = spec.annotations
    match = _SPLIT_IN_NAME.search(path.name)
    split = match.group(1) if match else None

    file_of: dict[Any, str] = {}
    for i, img in enumerate(images):
        iwhere = origin(path, f"images[{i}]")
        if check_record(img, ("id", "file_name"), report, iwhere) and id_field(img, "id", report, iwhere):
            if not isinstance(img["file_name"], str) or not img["file_name"].strip():
                report.add("bad_record", iwhere, f"'file_name' should be a file name, got {img['file_name']!r:.40}")
                continue
            if img["id"] in file_of:  # replacing would give the first image's captions to another file
                report.add("duplicate_id", iwhere, f"image id {img['id']!r} is listed again (first as {file_of[img['id']]!r}); the first is kept")
                continue
            file_of[img["id"]] = img["file_name"]

    for i, ann in enumerate(annotations):
        where = origin(path, f"record {i}")
        if not check_record(ann, ("id", "image_id", "caption"), report, where):
            continue
        if not (id_field(ann, "id", report, where) and id_field(ann, "image_id", report, where)):
            continue
        image_id = ann["image_id"]
        file_name = file_of.get(image_id)
        if file_name is None:
            report.add("missing_image", where, f"image_id {image_id!r} is not listed in 'images'")
            continue
        text = text_field(ann, "caption", report, where)
        if text is None:
            continue
        if not text:
            report.add("empty_text", where, f"annotation {ann['id']} has an empty caption")
            continue
        yield Sample(
            sample_id=str(ann["id"]),
            origin=where,
            image_path=spec.images / file_name,
            image_id=str(image_id),
            text=text,
            split=split,
        )
