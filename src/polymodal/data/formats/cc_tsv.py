"""Conceptual-Captions-style TSV: one ``caption<TAB>image`` line per sample.

``image`` is a local path (relative to ``images``, or to the TSV's folder when ``images`` is not
set, or absolute) or a URL. A URL is resolved to a local file through ``url_map`` (a TSV of
``url<TAB>local file``; relative local files start at ``images``, else at the map's folder) or,
failing that, to the URL's base name under ``images``. A URL that cannot be resolved is a
``missing_image`` problem and the line is skipped. Existence is not checked here (that is
``polymodal data check``'s job), so reading stays fast on millions of lines.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from polymodal.data.formats._common import local_path, origin, require_dir, require_file, text_lines
from polymodal.data.report import DataReport
from polymodal.data.sample import Sample
from polymodal.data.sources import CcTsvSource

FORMAT = "cc_tsv"


def is_url(value: str) -> bool:
    scheme = urlsplit(value).scheme
    return len(scheme) > 1 and "://" in value  # 'C:\\x' has a one-letter scheme; it is a path


def read(spec: CcTsvSource, report: DataReport) -> Iterator[Sample]:
    require_file(spec.path, FORMAT, "path")
    if spec.images is not None:
        require_dir(spec.images, FORMAT, "images")
    url_map = _read_url_map(spec, report) if spec.url_map is not None else {}
    return _samples(spec, url_map, report)


def _read_url_map(spec: CcTsvSource, report: DataReport) -> dict[str, Path]:
    assert spec.url_map is not None
    base = spec.images if spec.images is not None else spec.url_map.parent
    mapping: dict[str, Path] = {}
    for lineno, line in text_lines(spec.url_map, FORMAT, "url_map"):
        where = origin(spec.url_map, f"line {lineno}")
        if line is None:
            report.add("bad_record", where, "line is not UTF-8 text")
            continue
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or not parts[0].strip() or not parts[1].strip():
            report.add("bad_record", where, "expected 'url<TAB>local file'")
            continue
        mapping[parts[0].strip()] = local_path(parts[1].strip(), base)
    return mapping


def _resolve(image: str, spec: CcTsvSource, url_map: dict[str, Path]) -> Path | None:
    if not is_url(image):
        return local_path(image, spec.images if spec.images is not None else spec.path.parent)
    if image in url_map:
        return url_map[image]
    if spec.images is None:
        return None
    name = PurePosixPath(unquote(urlsplit(image).path)).name
    return spec.images / name if name else None


def _samples(spec: CcTsvSource, url_map: dict[str, Path], report: DataReport) -> Iterator[Sample]:
    first = True
    # URLs found by their file name in the images folder: two URLs ending in one name ('.../0.jpg' on two
    # hosts) would both get that one file, so the second is a problem, not a silent alias
    named_by: dict[Path, tuple[str, str]] = {}
    for lineno, line in text_lines(spec.path, FORMAT, "path"):
        if first and spec.has_header:
            first = False
            continue
        first = False
        where = origin(spec.path, f"line {lineno}")
        if line is None:
            report.add("bad_record", where, "line is not UTF-8 text")
            continue
        if not line.strip():
            continue  # blank lines (a trailing newline) are not records
        parts = line.split("\t")
        if len(parts) < 2:
            report.add("bad_record", where, "expected 'caption<TAB>image'")
            continue
        caption, image = parts[0].strip(), parts[1].strip()
        if not caption:
            report.add("empty_text", where, "empty caption")
            continue
        if not image:
            report.add("bad_record", where, "empty image column")
            continue
        image_path = _resolve(image, spec, url_map)
        if image_path is None:
            why = "it is not in url_map" if spec.url_map is not None else "no url_map is set"
            why += (
                ", and no images folder is set" if spec.images is None else ", and the URL has no file name"
            )
            report.add("missing_image", where, f"cannot resolve {image} to a local file: {why}")
            continue
        if is_url(image) and image not in url_map:
            url, first_where = named_by.setdefault(image_path, (image, where))
            if url != image:
                report.add(
                    "duplicate_id", where,
                    f"{image} and {url} ({first_where}) both end in {image_path.name!r}, so both would be {image_path}; "
                    "the first keeps it. Give a url_map that names each URL's own file",
                )
                continue
        yield Sample(
            sample_id=str(lineno),
            origin=where,
            image_path=image_path,
            image_id=image,
            text=caption,
        )
