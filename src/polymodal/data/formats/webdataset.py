"""WebDataset tar shards, streamed member by member (``tarfile`` stream mode ``r|*``).

Following the WebDataset convention, the members of one sample are adjacent in the tar and share a
key: the member's path up to the first dot of its base name (``d/0001.jpg`` and ``d/0001.json``
form sample ``d/0001``). The extension after that dot picks the field: an image key (jpg, png ...)
gives ``image_bytes``, a text key (txt, caption) the text, a label key (cls, label) the label, and
the JSON member is parsed into ``meta`` (its ``caption`` / ``text`` and ``label`` / ``cls`` fill
the text and label when no member does).

``urls`` is a path, a brace pattern such as ``shards-{000..009}.tar`` or a list of either.
Shards are read in order; :func:`shard_list` and :func:`iter_shards` let an IterableDataset give
each DataLoader worker its own shards. Only local files are read (``file://`` is accepted).
"""

from __future__ import annotations

import json
import posixpath
import re
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from polymodal.data.formats._common import value_kind
from polymodal.data.report import DataReport
from polymodal.data.sample import Sample
from polymodal.data.sources import WebDatasetSource
from polymodal.errors import DataError

FORMAT = "webdataset"
_NUM_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?")
_CHAR_RANGE = re.compile(r"([A-Za-z])\.\.([A-Za-z])")


# --- brace expansion ---------------------------------------------------------------------------


def _matching_brace(text: str, start: int) -> int:
    depth = 0
    for k in range(start, len(text)):
        if text[k] == "{":
            depth += 1
        elif text[k] == "}":
            depth -= 1
            if depth == 0:
                return k
    return -1


def _split_top_level(inner: str) -> list[str]:
    parts, depth, last = [], 0, 0
    for k, ch in enumerate(inner):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(inner[last:k])
            last = k + 1
    parts.append(inner[last:])
    return parts


def _padded(token: str) -> bool:
    digits = token.lstrip("-")
    return len(digits) > 1 and digits.startswith("0")


def _alternatives(inner: str) -> list[str] | None:
    """What one ``{...}`` group stands for, or None when it is not a range or a list (kept literally)."""
    m = _NUM_RANGE.fullmatch(inner)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        step = abs(int(m.group(3))) if m.group(3) else 1
        step = step or 1
        width = max(len(m.group(1)), len(m.group(2))) if _padded(m.group(1)) or _padded(m.group(2)) else 0
        numbers = range(a, b + 1, step) if a <= b else range(a, b - 1, -step)
        return [f"{n:0{width}d}" for n in numbers]
    m = _CHAR_RANGE.fullmatch(inner)
    if m:
        a, b = ord(m.group(1)), ord(m.group(2))
        codes = range(a, b + 1) if a <= b else range(a, b - 1, -1)
        return [chr(c) for c in codes]
    parts = _split_top_level(inner)
    return parts if len(parts) > 1 else None


def expand_braces(pattern: str) -> list[str]:
    """Shell-style brace expansion: ``a-{00..02}.tar`` -> a-00.tar, a-01.tar, a-02.tar.

    Supports numeric ranges (zero-padded when a bound has a leading zero, optional step
    ``{0..10..5}``), letter ranges ``{a..c}``, comma lists ``{x,y}``, several groups and nesting.
    A group that is neither (``{x}``) is kept literally.
    """
    i = pattern.find("{")
    while i != -1:
        j = _matching_brace(pattern, i)
        if j == -1:
            return [pattern]
        alternatives = _alternatives(pattern[i + 1 : j])
        if alternatives is not None:
            head, tail = pattern[:i], pattern[j + 1 :]
            return [head + rest for alt in alternatives for rest in expand_braces(alt + tail)]
        i = pattern.find("{", i + 1)
    return [pattern]


# --- shards ------------------------------------------------------------------------------------


def _local(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "file":
        return parts.path
    if (len(parts.scheme) > 1 and "://" in url) or url.startswith("pipe:"):
        raise DataError(
            f"{FORMAT} source: urls entry {url!r} is not a local file; polymodal reads local shards "
            f"only - download them first and point urls at the files"
        )
    return url


def shard_list(spec: WebDatasetSource, check_exists: bool = True) -> list[str]:
    """Every shard path that ``spec.urls`` names, brace patterns expanded, in order."""
    patterns = [spec.urls] if isinstance(spec.urls, str) else list(spec.urls)
    if not patterns:
        raise DataError(f"{FORMAT} source: urls is empty")
    shards = [_local(s) for p in patterns for s in expand_braces(p)]
    if check_exists:
        for shard in shards:
            if not Path(shard).is_file():
                raise DataError(f"{FORMAT} source: shard not found: {shard} (from urls {spec.urls!r})")
    return shards


def read(spec: WebDatasetSource, report: DataReport) -> Iterator[Sample]:
    return iter_shards(shard_list(spec), spec, report)


def iter_shards(shards: Iterable[str], spec: WebDatasetSource, report: DataReport) -> Iterator[Sample]:
    """Stream the samples of ``shards`` (a subset of :func:`shard_list`, e.g. one worker's share)."""
    for shard in shards:
        for key, files in _groups(shard, report):
            sample = _to_sample(shard, key, files, spec, report)
            if sample is not None:
                yield sample


def _groups(shard: str, report: DataReport) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {extension: bytes})`` for each run of adjacent members sharing a key."""
    if not Path(shard).is_file():
        raise DataError(f"{FORMAT} source: shard not found: {shard}")
    where = "at the start of the archive"
    key: str | None = None  # the key of the current run of adjacent members
    files: dict[str, bytes] = {}
    done: set[str] = set()  # keys whose members have all been read: a later run of one is a second sample
    repeated = False  # the current run is such a second sample
    try:
        with open(shard, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                where = f"in member {member.name!r}"
                if not member.isfile():
                    continue
                base = posixpath.basename(member.name)
                dot = base.find(".")
                if base.startswith(".") or dot <= 0:
                    report.count("skipped_members")  # e.g. '__index__' or '._x' resource forks
                    continue
                extracted = tar.extractfile(member)
                data = extracted.read() if extracted is not None else b""
                if len(data) != member.size:
                    raise tarfile.ReadError(f"unexpected end of data ({len(data)} of {member.size} bytes)")
                where = f"after member {member.name!r}"
                member_key = posixpath.join(posixpath.dirname(member.name), base[:dot])
                if member_key != key:
                    if key is not None and not repeated:
                        done.add(key)
                        yield key, files
                    key, files, repeated = member_key, {}, member_key in done
                    if repeated:
                        report.add("duplicate_id", f"{shard}:{key}", "the key appears again after other samples; this second sample is left out")
                if repeated:
                    continue
                ext = base[dot + 1 :].lower()
                if ext in files:  # a second member would replace the first's bytes
                    report.add("duplicate_id", f"{shard}:{key}", f"the sample has two {ext!r} members; the first is kept")
                    continue
                files[ext] = data
            marked = _check_end(tar, f)
    except (tarfile.TarError, EOFError, zlib.error, OSError, TypeError) as e:  # TypeError: tarfile on a gzip of a few bytes
        raise DataError(f"{FORMAT} source: corrupt shard {shard} {where}: {e}") from None
    if key is not None and not repeated:
        yield key, files
    if not marked:
        report.add(
            "truncated_shard", shard,
            f"the archive stops {where} without tar's end-of-archive blocks: a download or copy cut at a member boundary "
            "loses the members after it unseen (the members before were read)",
        )


def _check_end(tar: tarfile.TarFile, raw: Any) -> bool:
    """Fail unless the archive ended cleanly; False when it ends without the end-of-archive blocks.

    ``tarfile`` stops quietly at a truncated or damaged header after the first member, which would
    drop the rest of a half-downloaded shard without a word. Anything but zero blocks after the last
    member read is damage. Tar writers (tarfile, GNU tar, webdataset's TarWriter) end an archive with
    zero blocks, so one that stops right after a member was most likely cut there; it is reported,
    not refused, since tar itself reads such archives.
    """
    end = tar.offset  # where the header that stopped the iteration starts
    stream = tar.fileobj
    if getattr(stream, "comptype", "tar") == "tar":
        raw.seek(end)  # uncompressed: re-read that header and the rest from the file itself
        rest = raw
    else:
        consumed = stream.tell() - end  # the stopping header was consumed from the decompressed stream
        if 0 < consumed < tarfile.BLOCKSIZE:
            raise tarfile.ReadError(f"truncated header at byte {end}")
        rest = stream
    marked = False
    while True:
        chunk = rest.read(1 << 16)
        if not chunk:
            return marked
        if chunk.strip(b"\0"):
            raise tarfile.ReadError(f"truncated or damaged archive: unreadable header at byte {end}")
        marked = True


def _label(raw: str) -> str | int:
    raw = raw.strip()
    return int(raw) if re.fullmatch(r"[+-]?\d+", raw) else raw


def _to_sample(
    shard: str, key: str, files: dict[str, bytes], spec: WebDatasetSource, report: DataReport
) -> Sample | None:
    where = f"{shard}:{key}"
    meta: dict[str, Any] = {}
    try:
        if spec.json_key in files:
            parsed = json.loads(files[spec.json_key].decode("utf-8"))
            meta = dict(parsed) if isinstance(parsed, dict) else {"json": parsed}
        text_ext = next((k for k in spec.text_keys if k in files), None)
        text = files[text_ext].decode("utf-8").strip() if text_ext else None
        label_ext = next((k for k in spec.label_keys if k in files), None)
        label: Any = _label(files[label_ext].decode("utf-8")) if label_ext else None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        report.add("bad_record", where, f"cannot decode a text or JSON member: {e}")
        return None

    if text is None:
        field = "caption" if "caption" in meta else "text"
        from_json = meta.get(field)
        if from_json is not None and not isinstance(from_json, str):
            report.add("bad_record", where, f"the JSON member's {field!r} should be a string, got {value_kind(from_json)}")
            return None
        text = from_json.strip() if from_json is not None else None
    if label is None:
        field = "label" if "label" in meta else "cls"
        from_json = meta.get(field)
        if from_json is not None and (isinstance(from_json, bool) or not isinstance(from_json, (str, int, float))):
            report.add("bad_record", where, f"the JSON member's {field!r} should be a class name or number, got {value_kind(from_json)}")
            return None
        label = from_json
    if text is not None and not text:
        report.add("empty_text", where, "empty caption")
        return None

    image_ext = next((k for k in spec.image_keys if k in files), None)
    if image_ext is None and text is None and label is None:
        report.add(
            "bad_record", where, f"no image, text or label member (members: {', '.join(sorted(files))})"
        )
        return None
    return Sample(
        sample_id=key,
        origin=where,
        image_bytes=files[image_ext] if image_ext else None,
        image_id=key if image_ext else None,
        text=text,
        label=label,
        meta=meta,
    )
