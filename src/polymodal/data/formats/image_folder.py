"""``root/<class name>/<image>``: the class of an image is the sub-folder it sits in.

Classes are the sorted names of root's sub-folders (hidden ones excluded); ``meta['class_index']``
is the class's position in that order, as in torchvision's ImageFolder. Images may sit deeper
inside a class folder. Files whose extension is not in ``extensions`` are skipped and counted
(``non_image_files``), as are files directly under root (``unclassified_files``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from polymodal.data.formats._common import origin, require_dir
from polymodal.data.report import DataReport
from polymodal.data.sample import Sample
from polymodal.data.sources import ImageFolderSource
from polymodal.errors import DataError

FORMAT = "image_folder"


def class_names(root: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def read(spec: ImageFolderSource, report: DataReport) -> Iterator[Sample]:
    require_dir(spec.root, FORMAT, "root")
    classes = class_names(spec.root)
    if not classes:
        raise DataError(
            f"{FORMAT} source: root {spec.root} has no class sub-folders (expected root/<class>/<image>)"
        )
    return _samples(spec, classes, report)


def _samples(spec: ImageFolderSource, classes: list[str], report: DataReport) -> Iterator[Sample]:
    extensions = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in spec.extensions}
    unclassified = sum(1 for e in os.scandir(spec.root) if e.is_file() and not e.name.startswith("."))
    if unclassified:
        report.count("unclassified_files", unclassified)
    for index, name in enumerate(classes):
        class_dir = spec.root / name
        visited = {os.path.realpath(class_dir)}  # links are followed, but a folder is read once: a link loop ends
        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
            kept = []
            for d in sorted(d for d in dirnames if not d.startswith(".")):
                real = os.path.realpath(os.path.join(dirpath, d))
                if real in visited:
                    report.count("repeated_folders")
                    continue
                visited.add(real)
                kept.append(d)
            dirnames[:] = kept
            for filename in sorted(filenames):
                if filename.startswith("."):
                    continue
                path = Path(dirpath) / filename
                if path.suffix.lower() not in extensions:
                    report.count("non_image_files")
                    continue
                rel = path.relative_to(spec.root).as_posix()
                yield Sample(
                    sample_id=rel,
                    origin=origin(spec.root, rel),
                    image_path=path,
                    image_id=rel,
                    label=name,
                    meta={"class_index": index},
                )
