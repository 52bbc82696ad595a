"""One row per sample in a JSONL or CSV file, with configurable column names.

The file format of a custom dataset, so that a new dataset needs a file, not code:

* ``jsonl``: one JSON object per line; ``answers_field`` holds a list (a string is one answer).
* ``csv``: a header row, then one row per sample; ``answers_field`` holds answers separated by ``|``.
  Labels that look like numbers become int / float (regression targets, class indices).

Relative media paths start at ``root`` (default: the file's folder). Columns named ``split`` and
``image_id`` fill ``Sample.split`` and ``Sample.image_id`` (which defaults to the image path, so
texts of one image group together); every column not mapped to a field is kept in ``Sample.meta``. ``sample_id`` is
the ``id_field`` value, or the line number. A CSV header that lacks a column the config names
explicitly is a :class:`DataError`; a malformed row is a ``bad_record`` problem with its line.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from polymodal.data.formats._common import answer_text, local_path, origin, require_dir, require_file, text_field, text_lines, value_kind
from polymodal.data.report import DataReport
from polymodal.data.sample import Sample
from polymodal.data.sources import TableSource
from polymodal.errors import DataError

_FIELDS = (
    "id_field",
    "image_field",
    "text_field",
    "label_field",
    "answers_field",
    "audio_field",
    "video_field",
)
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")


def read(spec: TableSource, report: DataReport) -> Iterator[Sample]:
    require_file(spec.path, spec.format, "path")
    root = spec.root if spec.root is not None else spec.path.parent
    if spec.root is not None:
        require_dir(spec.root, spec.format, "root")
    if spec.format == "jsonl":
        return _samples(spec, _checked_keys(spec, _jsonl_rows(spec, report)), root, report)
    _check_header(spec, _csv_header(spec))  # fail on a misnamed column before any row is read
    return _samples(spec, _csv_rows(spec, report), root, report)


def _jsonl_rows(spec: TableSource, report: DataReport) -> Iterator[tuple[int, Mapping[str, Any]]]:
    for lineno, line in text_lines(spec.path, spec.format, "path"):
        where = origin(spec.path, f"line {lineno}")
        if line is None:
            report.add("bad_record", where, "line is not UTF-8 text")
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            report.add("bad_record", where, f"not valid JSON: {e.msg} at column {e.colno}")
            continue
        if not isinstance(row, dict):
            report.add("bad_record", where, f"expected a JSON object, got a JSON {type(row).__name__}")
            continue
        yield lineno, row


def _checked_keys(spec: TableSource, rows: Iterator[tuple[int, Mapping[str, Any]]]) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """JSONL rows, and at the end a :class:`DataError` for a field the config names explicitly that no row
    has: the JSONL twin of the CSV header check (a misspelt ``image_field`` read every row as text-only)."""
    named = {getattr(spec, n): n for n in _FIELDS if getattr(spec, n) is not None and n in spec.model_fields_set}
    seen: set[str] = set()
    any_row = False
    for lineno, row in rows:
        any_row = True
        if len(seen) < len(named):
            seen.update(k for k in named if k in row)
        yield lineno, row
    absent = [k for k in named if k not in seen]
    if any_row and absent:
        keys = sorted({k for _, row in _jsonl_rows(spec, DataReport(spec.format)) for k in row})[:12]
        raise DataError(
            f"{spec.format} source: " + ", ".join(f"{named[k]} '{k}'" for k in absent)
            + f" appears in no row of {spec.path} (keys seen: {', '.join(keys)})"
        )


def _csv_header(spec: TableSource) -> list[str]:
    try:
        with open(spec.path, encoding="utf-8-sig", newline="") as f:
            return [h.strip() for h in next(csv.reader(f), [])]
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{spec.format} source: cannot read the header row of {spec.path}: {e}") from None


def _csv_rows(spec: TableSource, report: DataReport) -> Iterator[tuple[int, Mapping[str, Any]]]:
    try:
        with open(spec.path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                return
            header = [h.strip() for h in header]
            end = reader.line_num
            for row in reader:
                start, end = end + 1, reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    report.add(
                        "bad_record",
                        origin(spec.path, f"line {start}"),
                        f"{len(row)} columns, the header has {len(header)}",
                    )
                    continue
                yield start, dict(zip(header, row))
    except UnicodeDecodeError as e:
        raise DataError(
            f"{spec.format} source: path file is not UTF-8 text: {spec.path}: {e.reason}"
        ) from None
    except csv.Error as e:
        raise DataError(f"{spec.format} source: path file {spec.path} is not valid CSV: {e}") from None


def _check_header(spec: TableSource, header: list[str]) -> None:
    """A column the config names explicitly must exist (defaults such as 'image' may be absent), and a
    column the source reads must be there once: with two 'text' columns the row kept the last one."""
    read = {getattr(spec, name) for name in _FIELDS} - {None}
    twice = sorted(column for column, n in Counter(header).items() if n > 1 and column in read)
    if twice:
        raise DataError(
            f"{spec.format} source: the header of {spec.path} has column {', '.join(map(repr, twice))} more than once; "
            "rename one (which of them should be read is ambiguous)"
        )
    for name in _FIELDS:
        column = getattr(spec, name)
        if column is not None and name in spec.model_fields_set and column not in header:
            raise DataError(
                f"{spec.format} source: {name} '{column}' is not a column of {spec.path} "
                f"(columns: {', '.join(header)})"
            )


def _number_or_text(value: str) -> str | int | float:
    v = value.strip()
    if _INT.fullmatch(v):
        return int(v)
    if _FLOAT.fullmatch(v):
        return float(v)
    return v


def _present(row: Mapping[str, Any], column: str | None) -> Any:
    """The value of ``column`` or None when the column is not configured, absent or empty."""
    if column is None:
        return None
    value = row.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return value


def _samples(
    spec: TableSource, rows: Iterator[tuple[int, Mapping[str, Any]]], root: Path, report: DataReport
) -> Iterator[Sample]:
    is_csv = spec.format == "csv"
    mapped = {getattr(spec, name) for name in _FIELDS} | {"split", "image_id"}
    for lineno, row in rows:
        where = origin(spec.path, f"line {lineno}")
        sample_id: Any = str(lineno)
        if spec.id_field is not None:
            sample_id = _present(row, spec.id_field)
            if sample_id is None:
                report.add("bad_record", where, f"no value in id_field '{spec.id_field}'")
                continue

        text = None
        if spec.text_field is not None and spec.text_field in row:
            text = "" if row[spec.text_field] is None else text_field(row, spec.text_field, report, where)
            if text is None:
                continue
            if not text:
                report.add("empty_text", where, f"empty '{spec.text_field}'")
                continue

        label = _present(row, spec.label_field)
        if isinstance(label, str) and is_csv:
            label = _number_or_text(label)
        elif label is not None and not isinstance(label, (str, int, float)):
            report.add(
                "bad_record", where, f"'{spec.label_field}' should be a string or a number, got {label!r}"
            )
            continue
        if isinstance(label, float) and not math.isfinite(label):
            report.add("bad_record", where, f"'{spec.label_field}' is {label}, not a finite number")
            continue

        answers: tuple[str, ...] = ()
        raw_answers = _present(row, spec.answers_field)
        if raw_answers is not None:
            if is_csv:
                answers = tuple(a.strip() for a in str(raw_answers).split("|") if a.strip())
            else:
                listed = [answer_text(a, spec.answers_field, report, where) for a in (raw_answers if isinstance(raw_answers, list) else [raw_answers])]  # type: ignore[arg-type]
                if any(a is None for a in listed):
                    continue
                answers = tuple(listed)  # type: ignore[arg-type]

        image, audio, video = (
            _present(row, c) for c in (spec.image_field, spec.audio_field, spec.video_field)
        )
        paths = {spec.image_field: image, spec.audio_field: audio, spec.video_field: video}
        wrong = next((c for c, v in paths.items() if v is not None and not isinstance(v, str)), None)
        if wrong is not None:
            report.add("bad_record", where, f"'{wrong}' should be a file path (a string), got {value_kind(paths[wrong])}")
            continue
        if (
            image is None
            and audio is None
            and video is None
            and text is None
            and label is None
            and not answers
        ):
            configured = [f"'{getattr(spec, n)}'" for n in _FIELDS[1:] if getattr(spec, n) is not None]
            report.add("bad_record", where, f"row has none of the configured columns {', '.join(configured)}")
            continue

        split, row_image_id = _present(row, "split"), _present(row, "image_id")
        yield Sample(
            sample_id=str(sample_id),
            origin=where,
            image_path=local_path(image, root) if image is not None else None,
            image_id=str(row_image_id)
            if row_image_id is not None
            else (str(image) if image is not None else None),
            text=text,
            answers=answers,
            label=label,
            audio_path=local_path(audio, root) if audio is not None else None,
            video_path=local_path(video, root) if video is not None else None,
            split=str(split) if split is not None else None,
            meta={k: v for k, v in row.items() if k not in mapped},
        )
