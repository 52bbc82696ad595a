"""Atomic folder writes: build everything in a temp folder, then rename it into place durably.

A crash at any instant leaves either the old folder or the new one, never a half-written mix; the
rename itself is fsynced, or a crash could bring back the old name. Checkpoints and exports use this.
"""

from __future__ import annotations

import os
import shutil
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
