"""Helpers shared by the format readers: file checks, JSON loading and record access.

Every file-level failure (missing file, malformed JSON, wrong top-level shape) raises
:class:`~polymodal.errors.DataError` naming the format, the config field and the file; every
record-level failure is added to the :class:`~polymodal.data.report.DataReport` instead.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from polymodal.data.report import DataReport
from polymodal.errors import DataError


def require_file(path: Path, fmt: str, field: str) -> Path:
    """Fail with a message naming the field when a configured file is not there."""
    if not path.is_file():
        what = "is a folder, expected a file" if path.is_dir() else "file not found"
        raise DataError(f"{fmt} source: {field} {what}: {path}")
    return path


def require_dir(path: Path, fmt: str, field: str) -> Path:
    if not path.is_dir():
        what = "is a file, expected a folder" if path.is_file() else "folder not found"
        raise DataError(f"{fmt} source: {field} {what}: {path}")
    return path


def load_json(path: Path, fmt: str, field: str) -> Any:
    """Load a whole JSON file; a syntax error names the file and the position of the error."""
    require_file(path, fmt, field)
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{fmt} source: {field} file is not valid JSON: {path}: {e.msg} "
            f"at line {e.lineno} column {e.colno} (char {e.pos})"
        ) from None
    except UnicodeDecodeError as e:
        raise DataError(f"{fmt} source: {field} file is not UTF-8 text: {path}: byte {e.start}") from None
    except OSError as e:
        raise DataError(f"{fmt} source: cannot read {field} file {path}: {e}") from None


def json_list(tree: Any, key: str, path: Path, fmt: str, field: str) -> list[Any]:
    """``tree[key]`` when ``tree`` is an object holding a list there, else a DataError on the file."""
    if not isinstance(tree, Mapping) or not isinstance(tree.get(key), list):
        got = f"keys {sorted(tree)[:8]}" if isinstance(tree, Mapping) else f"a JSON {type(tree).__name__}"
        raise DataError(
            f"{fmt} source: {field} file {path} should be a JSON object with a '{key}' list, got {got}"
        )
    return tree[key]


def clevr_records(path: Path, key: str, images: Path, fmt: str, field: str) -> tuple[list[Any], str | None]:
    """The ``key`` list of a CLEVR-layout file (questions or scenes) and the split its ``info`` names,
    after checking that the images folder exists."""
    tree = load_json(path, fmt, field)
    records = json_list(tree, key, path, fmt, field)
    require_dir(images, fmt, "images")
    info = tree.get("info") if isinstance(tree.get("info"), dict) else {}
    return records, info.get("split")


def origin(path: Path | str, record: Any) -> str:
    return f"{path}:{record}"


def missing_keys(record: Any, keys: tuple[str, ...]) -> list[str]:
    """The required keys a record lacks (all of them when it is not a JSON object)."""
    if not isinstance(record, Mapping):
        return list(keys)
    return [k for k in keys if k not in record or record[k] is None]


def check_record(record: Any, keys: tuple[str, ...], report: DataReport, where: str) -> bool:
    """True when ``record`` has all ``keys``; otherwise add a ``bad_record`` problem and return False."""
    if not isinstance(record, Mapping):
        report.add("bad_record", where, f"expected a JSON object, got {type(record).__name__}")
        return False
    missing = missing_keys(record, keys)
    if missing:
        report.add("bad_record", where, f"missing required key(s) {', '.join(repr(k) for k in missing)}")
        return False
    return True


def value_kind(value: Any) -> str:
    """A wrong value for a problem message: its type and a repr cut to 40 characters."""
    shown = repr(value)
    return f"{type(value).__name__} {shown if len(shown) <= 40 else shown[:37] + '...'}"


def text_field(record: Mapping[str, Any], key: str, report: DataReport, where: str) -> str | None:
    """``record[key]`` as text with surrounding whitespace removed (COCO captions end in '\\n'); a value that is not a string (a list of
    words, a number, null) is a ``bad_record`` and gives None, where ``str()`` would have trained on
    "['a red', 'square']" or "None"."""
    value = record[key]
    if not isinstance(value, str):
        report.add("bad_record", where, f"'{key}' should be a string, got {value_kind(value)}")
        return None
    return value.strip()


def answer_text(value: Any, key: str, report: DataReport, where: str) -> str | None:
    """One answer as text: a string, or a number (a count answered as 2); anything else (null, a list, an
    object) is a ``bad_record`` and gives None."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return str(value)
    report.add("bad_record", where, f"'{key}' should be a string or a number, got {value_kind(value)}")
    return None


def id_field(record: Mapping[str, Any], key: str, report: DataReport, where: str) -> bool:
    """Is ``record[key]`` usable as an id (a string or an integer)? Otherwise a ``bad_record``: a list or an
    object cannot key the joins the readers make (questions to annotations, captions to images)."""
    value = record[key]
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return True
    report.add("bad_record", where, f"'{key}' should be a string or an integer id, got {value_kind(value)}")
    return False


def extras(record: Mapping[str, Any], known: frozenset[str] | set[str]) -> dict[str, Any]:
    """The keys of a record a reader does not map to a Sample field: kept in ``Sample.meta``."""
    return {k: v for k, v in record.items() if k not in known}


def text_lines(path: Path, fmt: str, field: str) -> Iterator[tuple[int, str | None]]:
    """Yield ``(line number, text)`` of a text file; ``text`` is None for a line that is not UTF-8.

    Lines are decoded one by one so that one bad byte costs one record, not the whole file.
    """
    require_file(path, fmt, field)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark (Windows editors), not text
                raw = raw[3:]
            try:
                yield lineno, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                yield lineno, None


def local_path(value: Any, base: Path) -> Path:
    """A path from a record: absolute as given, relative ones anchored at ``base``."""
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else base / p
