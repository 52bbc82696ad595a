"""The collection root: every image an index holds lies under it, stored by its path relative to it.

Why: the server built on an index reads image files by the paths it stores. Storing them relative to
one recorded root, refusing ``..`` and refusing anything that resolves (symlinks included) outside the
root means a stored path, or one a client sends, can never name a file outside the collection.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from polymodal.index.errors import SearchIndexError

__all__ = [
    "IMAGE_EXTENSIONS",
    "CollectionRoot",
    "describe_skipped",
    "list_images",
    "read_captions_file",
    "read_texts_file",
    "require_images",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class CollectionRoot:
    """A folder that bounds an index's collection; turns paths into safe relative keys and back."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(os.path.abspath(root))
        self._real = Path(os.path.realpath(self.root))

    def __str__(self) -> str:
        return str(self.root)

    def relative(self, path: str | os.PathLike[str]) -> str:
        """The POSIX path of ``path`` relative to the root.

        ``path`` is absolute, or relative to the root (the form search results show). It may not hold a
        ``..`` component, and it must stay inside the root once symlinks are resolved.
        """
        raw = os.fspath(path)
        if not raw.strip():
            raise SearchIndexError("an empty path was given; give an image path inside the collection root")
        p = Path(raw)
        if ".." in p.parts:
            raise SearchIndexError(f"{raw}: paths may not contain '..'; give it absolute or relative to the collection root {self.root}")
        full = p if p.is_absolute() else self.root / p
        real = Path(os.path.realpath(full))
        try:
            rel = full.relative_to(self.root)
        except ValueError:
            try:  # the root reached through another name (a symlinked parent)
                rel = real.relative_to(self._real)
            except ValueError:
                raise SearchIndexError(f"{raw} is outside the index's collection root {self.root}; an index only holds files under its root") from None
        if real != self._real and self._real not in real.parents:
            raise SearchIndexError(f"{raw} resolves to {real}, outside the index's collection root {self.root} (a symlink?); it cannot be indexed")
        if not rel.parts:
            raise SearchIndexError(f"{raw} is the collection root itself, not an image file")
        return rel.as_posix()

    def absolute(self, rel: str) -> Path:
        """The file a stored (or client-sent) relative path names, checked to lie inside the root."""
        pure = PurePosixPath(rel)
        if pure.is_absolute() or ".." in pure.parts or not pure.parts:
            raise SearchIndexError(f"{rel!r} is not a path relative to the collection root {self.root}")
        self.relative(rel)  # the symlink check
        return self.root.joinpath(*pure.parts)


def list_images(paths: Iterable[str | os.PathLike[str]], not_images: Counter[str] | None = None) -> Iterator[Path]:
    """The image files among ``paths``: files as given, folders walked (sorted, hidden entries skipped)
    for files with an image extension. Files a walk passes over are counted by extension in
    ``not_images``. A missing path raises, naming it."""
    for item in paths:
        p = Path(os.path.abspath(item))
        if p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p, followlinks=False):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if name.startswith("."):
                        continue
                    suffix = Path(name).suffix.lower()
                    if suffix in IMAGE_EXTENSIONS:
                        yield Path(dirpath) / name
                    elif not_images is not None:
                        not_images[suffix or "no extension"] += 1
        elif p.exists():
            yield p
        else:
            raise SearchIndexError(f"image path not found: {item}")


def describe_skipped(not_images: Counter[str]) -> str:
    """``'12 files that are not images by their extension (.json 10, .txt 2)'``."""
    total = sum(not_images.values())
    kinds = ", ".join(f"{suffix} {n}" for suffix, n in not_images.most_common(5))
    return f"{total} file{'' if total == 1 else 's'} that {'is' if total == 1 else 'are'} not an image by {'its' if total == 1 else 'their'} extension ({kinds}{', ...' if len(not_images) > 5 else ''})"


def require_images(folder: str | os.PathLike[str]) -> None:
    """Raise, naming the folder and what it holds, when a walk of it finds no image file: indexing it
    would make an index without images and report success."""
    not_images: Counter[str] = Counter()
    if next(list_images([folder], not_images), None) is None:
        held = describe_skipped(not_images) if not_images else "no files"
        raise SearchIndexError(
            f"{folder}: no image files in this folder (looked for {', '.join(IMAGE_EXTENSIONS)}); it holds {held}"
        )


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SearchIndexError(f"texts file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SearchIndexError(f"cannot read {path} as UTF-8 JSON: {e}") from None


def read_texts_file(path: str | os.PathLike[str]) -> list[str]:
    """Texts to index from a file: ``.txt`` (one per line; blank lines skipped), ``.json`` (a list of
    strings, or COCO captions: every ``annotations[].caption``) or ``.jsonl`` (``{"text": ...}`` per line).

    An empty or non-string text inside a JSON file is an error naming the file and the record, since it
    means the file is not what it claims to be.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".txt":
        try:
            return [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        except FileNotFoundError:
            raise SearchIndexError(f"texts file not found: {p}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise SearchIndexError(f"cannot read the texts file {p} as UTF-8 text: {e}") from None
    if suffix == ".jsonl":
        records: list[tuple[str, object]] = []
        try:
            lines = p.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise SearchIndexError(f"texts file not found: {p}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise SearchIndexError(f"cannot read the texts file {p} as UTF-8 text: {e}") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise SearchIndexError(f"{p} line {n}: not JSON ({e})") from None
            if not isinstance(rec, dict) or "text" not in rec:
                raise SearchIndexError(f"{p} line {n}: expected an object with a 'text' field")
            records.append((f"line {n}", rec["text"]))
        return _checked(records, p)
    if suffix == ".json":
        data = _read_json(p)
        if isinstance(data, dict) and isinstance(data.get("annotations"), list):
            anns = data["annotations"]
            bad = [i for i, a in enumerate(anns) if not isinstance(a, dict) or "caption" not in a]
            if bad:
                raise SearchIndexError(f"{p}: annotations[{bad[0]}] has no 'caption' (expected COCO captions)")
            return _checked([(f"annotations[{i}].caption", a["caption"]) for i, a in enumerate(anns)], p)
        if isinstance(data, list):
            return _checked([(f"item [{i}]", t) for i, t in enumerate(data)], p)
        raise SearchIndexError(f"{p}: expected a JSON list of strings or COCO captions ({{'annotations': [{{'caption': ...}}]}})")
    raise SearchIndexError(f"{p}: texts files must be .txt (one per line), .json (a list, or COCO captions) or .jsonl; got {suffix or 'no extension'}")


def _checked(texts: list[tuple[str, object]], path: Path) -> list[str]:
    out: list[str] = []
    for where, t in texts:
        if not isinstance(t, str) or not t.strip():
            kind = "an empty text" if isinstance(t, str) else f"a {type(t).__name__}, not a text"
            raise SearchIndexError(f"{path} {where} is {kind}; remove it or give a text")
        out.append(t.strip())
    return out


def read_captions_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """``{image file name: caption}`` from COCO captions JSON (the first caption of each image) or a JSON
    object mapping image paths to captions. Keys are paths as the file gives them."""
    p = Path(path)
    data = _read_json(p)
    if isinstance(data, dict) and isinstance(data.get("images"), list) and isinstance(data.get("annotations"), list):
        names = {im.get("id"): im.get("file_name") for im in data["images"] if isinstance(im, dict)}
        out: dict[str, str] = {}
        for a in data["annotations"]:
            if isinstance(a, dict) and isinstance(a.get("caption"), str) and names.get(a.get("image_id")):
                out.setdefault(str(names[a["image_id"]]), a["caption"].strip())
        return out
    if isinstance(data, dict) and all(isinstance(v, str) for v in data.values()):
        return {str(k): v.strip() for k, v in data.items()}
    raise SearchIndexError(f"{p}: expected COCO captions JSON (images + annotations) or an object {{image path: caption}}")
