"""Where a benchmark ran: the CPU's model name and the commit, for every results JSON.

Shared by the benchmark scripts (each is run as ``python benchmarks/NAME.py``, which puts this folder
on ``sys.path``; the tests add it in ``tests/benchmarks/conftest.py``).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
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


# glibc returns freed memory above its thresholds to the OS and page-faults it back in on the next
# allocation; raised thresholds keep the heap, so no step pays for another's frees.
STEADY_HEAP_TUNABLES = "glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=1073741824"


def steady_heap_env(environ: Mapping[str, str], platform_name: str = sys.platform) -> dict[str, str] | None:
    """The environment to re-run a CPU benchmark in so that glibc keeps freed memory, or None when the
    process already runs that way (or under settings of the user's own, or off Linux).

    Why: a benchmark that times two models in one process, interleaved, lets each inherit the heap
    the other left. With glibc's defaults, large blocks go back to the OS when freed and are
    page-faulted in again when the next model allocates them; the model with the larger activations
    pays more. On the 2-core machine this made the `transformers` peer of bench_train_cpu.py 10%
    slower than it runs with the heap kept, and polymodal not at all (2026-11-24, fifteenth session).
    """
    if platform_name != "linux" or "GLIBC_TUNABLES" in environ:
        return None
    return {**environ, "GLIBC_TUNABLES": STEADY_HEAP_TUNABLES}


def rerun_with_steady_heap(argv: Sequence[str]) -> None:
    """Replace this process with ``python argv...`` under :func:`steady_heap_env`; returns if no re-run is needed.

    Environment variables for the allocator are read when the process starts, so setting one needs a
    new process. Call it first thing in ``if __name__ == "__main__"`` (never from a test: it replaces
    the interpreter)."""
    env = steady_heap_env(os.environ)
    if env is not None:
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *argv], env)


def heap_settings() -> str:
    """What the results JSON records about the allocator: the GLIBC_TUNABLES in force, or "glibc defaults"."""
    return os.environ.get("GLIBC_TUNABLES") or "glibc defaults"
