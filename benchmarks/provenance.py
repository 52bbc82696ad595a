"""Where a benchmark ran: the CPU's model name and the commit, for every results JSON.

Shared by the benchmark scripts (each is run as ``python benchmarks/NAME.py``, which puts this folder
on ``sys.path``; the tests add it in ``tests/benchmarks/conftest.py``).
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent


def ensure_polymodal_importable(root: Path = ROOT) -> None:
    """Put ``<repo>/src`` first on ``sys.path``: the benchmark measures this checkout's code.

    The rented GPU machine gets a bare copy of the checkout and its own torch + transformers
    environment, and needs nothing of polymodal's beyond its source tree; where another polymodal is
    installed, the results (stamped with this checkout's commit) must still measure this one.
    """
    src = str(root / "src")
    if src in sys.path:
        sys.path.remove(src)
    sys.path.insert(0, src)


def cpu_model() -> str:
    """``lscpu``'s model name (e.g. "AMD EPYC"), or what ``platform`` knows."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        out = ""
    for line in out.splitlines():
        if line.startswith("Model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def git_commit() -> str:
    """The short commit hash, with ``-dirty`` when tracked files have uncommitted changes."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True, check=False)
    except OSError:
        return "unknown"
    if sha.returncode != 0 or not sha.stdout.strip():
        return "unknown"
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def write_result(path: Path, record: object, default: Callable[[Any], Any] | None = None) -> None:
    """Write a results JSON, creating its folder (results land in ``benchmarks/results/`` by default).

    Atomically (a temporary file, then a rename): a benchmark that rewrites its JSON as it goes and is
    killed mid-write keeps the previous complete file. ``default`` as in ``json.dumps``.
    """
    import json

    from polymodal.atomic import write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(record, indent=1, default=default) + "\n")
