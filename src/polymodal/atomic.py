"""Atomic writes: build a file or a folder under a temporary name, then rename it into place.

A crash at any instant leaves either the old file (folder) or the new one, never a half-written mix;
for folders the rename itself is fsynced, or a crash could bring back the old name. Checkpoints,
exports, run summaries, reports, annotation files and index manifests use this.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder: the renames inside it); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_dir(tmp: Path, final: Path) -> None:
    """Rename the finished folder ``tmp`` to ``final``; an existing ``final`` is moved aside to
    ``<final>.old-<pid>`` first and deleted afterwards (restored if the rename fails)."""
    root = final.parent
    if not final.exists():
        os.replace(tmp, final)
        fsync_path(root)
        return
    old = root / f"{final.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(old, final)
        raise
    fsync_path(root)
    shutil.rmtree(old, ignore_errors=True)


def write_text(path: Path, text: str, *, durable: bool = False) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file beside it and a rename: a reader, or a
    run killed mid-write, finds the old content or the new, never part of it. ``durable`` also fsyncs
    the file and its folder, so the new content survives a power cut too (a manifest naming other
    files). The temporary name is unique to the writer and removed if the write fails."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_path(path.parent)
