"""Batched embedding into an index, resumable after a kill, never duplicating an entry.

Each batch is embedded, then committed to the store in one transaction (metadata and vectors
together), then added to the in-memory FAISS index. A kill loses at most the batch in flight; a re-run
of the same command skips what is already there:

* an image whose relative path is indexed with the same size and mtime is skipped without reading it;
  one whose bytes still hash to the stored sha256 is skipped too; one whose bytes changed is
  re-embedded and *replaces* its entry (``updated``);
* a text already in the index (the same text after stripping whitespace) is skipped.

Unreadable images (missing, truncated, not an image, too large) are skipped, each logged as a warning
that names it and counted in the returned :class:`AddReport`: never fatal, never silent.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from polymodal.data.images import open_image
from polymodal.errors import DataError
from polymodal.index.errors import SearchIndexError
from polymodal.index.paths import describe_skipped, list_images, require_images
from polymodal.index.store import NewEntry

if TYPE_CHECKING:
    from polymodal.index.search_index import SearchIndex

__all__ = ["AddReport", "add_images", "add_texts", "clean_texts"]

log = logging.getLogger(__name__)


@dataclass
class AddReport:
    """What one add did: entries added, replaced (changed files), already present, and the failures."""

    kind: str
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    seconds: float = 0.0
    not_images: Counter[str] = field(default_factory=Counter)  # files the folder walks passed over, by extension
    unmatched_captions: list[str] = field(default_factory=list)  # captions whose image is not among those added

    def summary(self) -> str:
        what = "images" if self.kind == "image" else "texts"
        line = f"{what}: {self.added} added, {self.updated} updated, {self.unchanged} already indexed"
        if self.failed:
            line += f", {len(self.failed)} skipped as unreadable"
            shown = "\n".join(f"  {p}: {why}" for p, why in self.failed[:20])
            more = f"\n  ... and {len(self.failed) - 20} more" if len(self.failed) > 20 else ""
            line += f"\n{shown}{more}"
        line += f" ({self.seconds:.1f} s)"
        if self.not_images:
            line += f"\n  passed over {describe_skipped(self.not_images)}"
        if self.unmatched_captions:
            n = len(self.unmatched_captions)
            line += f"\n  {n} caption{'' if n == 1 else 's'} named no image among these (e.g. {', '.join(map(repr, self.unmatched_captions[:3]))})"
        return line

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "added": self.added, "updated": self.updated, "unchanged": self.unchanged,
                "failed": [{"path": p, "error": e} for p, e in self.failed], "seconds": round(self.seconds, 3),
                "not_images": dict(self.not_images), "unmatched_captions": list(self.unmatched_captions)}


def _bar(total: int, desc: str, unit: str, progress: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, disable=not progress, dynamic_ncols=True)


def _targets(index: SearchIndex, paths: Iterable[str | os.PathLike[str]], report: AddReport) -> list[tuple[Path, str]]:
    """``(absolute path, relative key)`` of every image to consider, deduplicated, in order.

    A path named explicitly outside the root (or with ``..``) raises before anything is embedded; a
    file met while walking a folder that resolves outside the root (a symlink) is skipped and counted.
    """
    out: dict[str, Path] = {}
    for item in paths:
        given = Path(os.path.abspath(item))
        if given != index.root.root:
            index.root.relative(given)  # a file or folder outside the root raises here
        found = 0
        for f in list_images([given], report.not_images):
            found += 1
            try:
                rel = index.root.relative(f)
            except SearchIndexError as e:
                if f == given:
                    raise
                report.failed.append((str(f), str(e)))
                log.warning("skipped %s: %s", f, e)
                continue
            out.setdefault(rel, f)
        if not found and given.is_dir():
            require_images(given)  # raises, saying what the folder holds
    if report.not_images:
        log.info("passed over %s", describe_skipped(report.not_images))
    return [(f, rel) for rel, f in out.items()]


def add_images(
    index: SearchIndex,
    paths: Iterable[str | os.PathLike[str]],
    *,
    captions: Mapping[str, str] | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> AddReport:
    """Embed and add images (files, or folders walked for image files); see the module docstring."""
    if batch_size < 1:
        raise SearchIndexError(f"batch_size must be at least 1, got {batch_size}")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    report = AddReport("image")
    start = time.perf_counter()
    targets = _targets(index, paths, report)
    caps = {index.root.relative(k): v for k, v in (captions or {}).items()}
    keys = {rel for _, rel in targets}
    report.unmatched_captions = [k for k in caps if k not in keys]
    if report.unmatched_captions:
        log.warning("%d of %d captions name no image among those added (e.g. %s); they are not stored",
                    len(report.unmatched_captions), len(caps), report.unmatched_captions[0])
    bar = _bar(len(targets), "indexing images", "img", progress)
    try:
        for i in range(0, len(targets), batch_size):
            _image_batch(index, targets[i : i + batch_size], caps, report)
            bar.update(len(targets[i : i + batch_size]))
            bar.set_postfix(added=report.added + report.updated, skipped=len(report.failed), refresh=False)
    finally:
        bar.close()
        report.seconds = time.perf_counter() - start
    if report.failed:
        log.warning("skipped %d unreadable image(s); the first: %s (%s)", len(report.failed), *report.failed[0])
    return report


def _image_batch(index: SearchIndex, batch: Sequence[tuple[Path, str]], captions: Mapping[str, str], report: AddReport) -> None:
    known = index.store.image_records([rel for _, rel in batch])
    images, rows, replaced = [], [], []
    for path, rel in batch:
        try:
            st = path.stat()
            rec = known.get(rel)
            if rec is not None and rec.size == st.st_size and rec.mtime_ns == st.st_mtime_ns:
                report.unchanged += 1
                continue
            data = path.read_bytes()
            checksum = hashlib.sha256(data).hexdigest()
            if rec is not None and rec.checksum == checksum:
                index.store.touch(rec.id, st.st_size, st.st_mtime_ns)
                report.unchanged += 1
                continue
            image = open_image(data, name=str(path))
        except OSError as e:
            why = f"cannot read it ({e.strerror or e})"
        except DataError as e:
            why = str(e)
        else:
            images.append(image)
            rows.append(NewEntry("image", rel, checksum, None, captions.get(rel), st.st_size, st.st_mtime_ns))  # type: ignore[arg-type]
            if rec is not None:
                replaced.append(rec.id)
            continue
        report.failed.append((str(path), why))
        log.warning("skipped %s: %s", path, why)
    if not rows:
        return
    vectors = index._encode_images(images)
    rows = [NewEntry(r.kind, r.key, r.checksum, v, r.caption, r.size, r.mtime_ns) for r, v in zip(rows, vectors)]
    index._commit("image", rows, replaced)
    report.updated += len(replaced)
    report.added += len(rows) - len(replaced)


def clean_texts(texts: Iterable[str]) -> list[str]:
    """The texts stripped and deduplicated (first occurrence kept); an empty or non-string one raises, naming it."""
    out: dict[str, None] = {}
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise SearchIndexError(f"text #{i} is a {type(t).__name__}, not a string")
        if not t.strip():
            raise SearchIndexError(f"text #{i} is empty; every text to index must hold at least one non-space character")
        out.setdefault(t.strip(), None)
    return list(out)


def add_texts(index: SearchIndex, texts: Iterable[str], *, batch_size: int = 256, progress: bool = True) -> AddReport:
    """Embed and add texts (whitespace-stripped); texts already in the index are skipped."""
    if batch_size < 1:
        raise SearchIndexError(f"batch_size must be at least 1, got {batch_size}")
    if isinstance(texts, str):
        texts = [texts]
    report = AddReport("text")
    start = time.perf_counter()
    items = clean_texts(texts)
    bar = _bar(len(items), "indexing texts", "text", progress)
    try:
        for i in range(0, len(items), batch_size):
            batch = items[i : i + batch_size]
            known = index.store.existing_texts(batch)
            new = [t for t in batch if t not in known]
            report.unchanged += len(batch) - len(new)
            if new:
                vectors = index._encode_texts(new)
                index._commit("text", [NewEntry("text", t, hashlib.sha256(t.encode()).hexdigest(), v) for t, v in zip(new, vectors)], [])
                report.added += len(new)
            bar.update(len(batch))
    finally:
        bar.close()
        report.seconds = time.perf_counter() - start
    return report
