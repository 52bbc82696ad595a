"""Run one ``polymodal`` command as a step of an end-to-end benchmark: its output to a log, its wall time back.

The end-to-end benchmarks (the assistant and audio-visual world recipes) drive the public CLI, so what
they measure is exactly what a user types; a failed step stops the benchmark and names its log.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def run_polymodal(args: list[str], cwd: Path, log: Path) -> float:
    """Seconds ``polymodal ARGS`` took in ``cwd``; SystemExit naming ``log`` when it fails."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-m", "polymodal.cli", *args], cwd=cwd, stdout=f, stderr=subprocess.STDOUT, check=False)
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - t0


def prepare_workdir(workdir: Path, configs: list[str], quickstart_out: Path | None) -> tuple[Path, dict[str, float]]:
    """A fresh ``workdir`` with copies of the shipped ``configs`` in ``configs/`` (their ``../`` paths then
    point inside it) and a finished quickstart in ``quickstart_out/``, whose image tower the world recipes
    start from: linked when ``quickstart_out`` is given, else run (its seconds are returned)."""
    from provenance import ROOT

    work = workdir.resolve()
    if work.exists():
        shutil.rmtree(work)
    (work / "configs").mkdir(parents=True)
    for name in configs:
        shutil.copy(ROOT / "configs" / name, work / "configs" / name)
    if quickstart_out is not None:
        os.symlink(quickstart_out.resolve(), work / "quickstart_out")
        return work, {}
    return work, {"quickstart": run_polymodal(["quickstart", "--out", "quickstart_out"], work, work / "quickstart.log")}
