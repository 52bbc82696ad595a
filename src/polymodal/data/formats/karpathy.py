"""Karpathy splits: ``dataset_coco.json`` / ``dataset_flickr30k.json`` / ``dataset_flickr8k.json``.

``images`` is a list of {filepath (COCO only), filename, imgid, split, sentences, cocoid?}; each
sentence is {raw, tokens, sentid}. One :class:`Sample` per sentence: text is ``raw``, image_id is
``cocoid`` when present (so it matches COCO annotations) else ``imgid``. With ``restval_as_train``
the COCO ``restval`` images count as ``train`` (the usual 113k training set).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from polymodal.data.formats._common import check_record, json_list, load_json, origin, require_dir, text_field
from polymodal.data.report import DataReport
from polymodal.data.sample import Sample
from polymodal.data.sources import KarpathySource

FORMAT = "karpathy"


def read(spec: KarpathySource, report: DataReport) -> Iterator[Sample]:
    tree = load_json(spec.path, FORMAT, "path")
    images = json_list(tree, "images", spec.path, FORMAT, "path")
    require_dir(spec.images, FORMAT, "images")
    return _samples(spec, images, report)


KARPATHY_SPLITS = ("train", "val", "test", "restval")


def effective_split(split: str, restval_as_train: bool) -> str:
    return "train" if split == "restval" and restval_as_train else split


def _wanted(split: str, spec: KarpathySource) -> bool:
    if spec.split == "all":
        return True
    if spec.split == "restval":
        return split == "restval"
    return effective_split(split, spec.restval_as_train) == spec.split


def _samples(spec: KarpathySource, images: list[Any], report: DataReport) -> Iterator[Sample]:
    for i, img in enumerate(images):
        where = origin(spec.path, f"record {i}")
        if not check_record(img, ("filename", "imgid", "split", "sentences"), report, where):
            continue
        split = str(img["split"]).strip().lower()  # "Train" or "test " must not drop the record unseen
        if split not in KARPATHY_SPLITS:
            report.add("bad_record", where, f"split {img['split']!r} is none of {', '.join(KARPATHY_SPLITS)}")
            continue
        if not _wanted(split, spec):
            continue
        if not isinstance(img["sentences"], list):
            report.add("bad_record", where, "'sentences' should be a list")
            continue
        folder = spec.images / str(img["filepath"]) if img.get("filepath") else spec.images
        image_path = folder / str(img["filename"])
        image_id = str(img["cocoid"] if img.get("cocoid") is not None else img["imgid"])
        for j, sent in enumerate(img["sentences"]):
            swhere = origin(spec.path, f"record {i} sentence {j}")
            if not check_record(sent, ("raw",), report, swhere):
                continue
            text = text_field(sent, "raw", report, swhere)
            if text is None:
                continue
            if not text:
                report.add("empty_text", swhere, "empty sentence")
                continue
            meta: dict[str, Any] = {"karpathy_split": split}
            if isinstance(sent.get("tokens"), list):
                meta["tokens"] = tuple(sent["tokens"])
            yield Sample(
                sample_id=str(sent.get("sentid", f"{img['imgid']}_{j}")),
                origin=swhere,
                image_path=image_path,
                image_id=image_id,
                text=text,
                split=effective_split(split, spec.restval_as_train),
                meta=meta,
            )
