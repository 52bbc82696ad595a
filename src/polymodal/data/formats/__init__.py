"""On-disk data formats: each module turns one layout of files into :class:`~polymodal.data.Sample` records.

The registry is the explicit :data:`READERS` dict below (no registration by import side effects).
A reader is ``read(spec, report) -> Iterable[Sample]``: it raises :class:`~polymodal.errors.DataError`
at once when a configured file is missing or unreadable, and adds record-level problems (missing
key, empty text, question without annotation ...) to ``report`` while it streams the samples.
Readers never open images: existence and decoding are checked by :mod:`polymodal.data.check`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from polymodal.data.formats import (
    affect,
    cc_tsv,
    clevr,
    coco_captions,
    gqa,
    image_folder,
    karpathy,
    llava,
    scenes,
    table,
    vqa_v2,
    webdataset,
)
from polymodal.data.report import DataReport
from polymodal.data.sample import Sample
from polymodal.errors import ConfigError

Reader = Callable[[Any, DataReport], Iterable[Sample]]

READERS: dict[str, Reader] = {
    "coco_captions": coco_captions.read,
    "vqa_v2": vqa_v2.read,
    "clevr": clevr.read,
    "gqa": gqa.read,
    "scenes": scenes.read,
    "cc_tsv": cc_tsv.read,
    "karpathy": karpathy.read,
    "jsonl": table.read,
    "csv": table.read,
    "mosi": affect.read,
    "llava": llava.read,
    "image_folder": image_folder.read,
    "webdataset": webdataset.read,
}

# The config field that names each format's main file (used in report titles and messages).
MAIN_FIELD: dict[str, str] = {
    "coco_captions": "annotations",
    "vqa_v2": "questions",
    "clevr": "questions",
    "gqa": "questions",
    "scenes": "path",
    "cc_tsv": "path",
    "karpathy": "path",
    "jsonl": "path",
    "csv": "path",
    "mosi": "path",
    "llava": "path",
    "image_folder": "root",
    "webdataset": "urls",
}


def main_file(spec: Any) -> str:
    """The file (or folder, or shard pattern) that identifies a source, for messages."""
    value = getattr(spec, MAIN_FIELD.get(spec.format, ""), None)
    if isinstance(value, list):
        if not value:
            return "(an empty list)"
        return str(value[0]) + (f" (+{len(value) - 1} more)" if len(value) > 1 else "")
    return str(value) if isinstance(value, (str, Path)) else "?"


def describe(spec: Any) -> str:
    return f"{spec.format} {main_file(spec)}"


def read_source(spec: Any, report: DataReport | None = None) -> Iterable[Sample]:
    """Read any data source spec (see :mod:`polymodal.data.sources`) into samples.

    Problems found on the way go to ``report`` (a fresh one named after the source when None;
    pass one in to see them).
    """
    reader = READERS.get(getattr(spec, "format", None))
    if reader is None:
        raise ConfigError(
            f"unknown data format {getattr(spec, 'format', None)!r}; known formats: {', '.join(READERS)}"
        )
    return reader(spec, report if report is not None else DataReport(source=describe(spec)))


__all__ = ["READERS", "Reader", "describe", "main_file", "read_source"]
