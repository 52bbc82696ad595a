"""The quickstart, measured: wall time per stage and every target metric (benchmarks/RESULTS.md).

    python benchmarks/bench_quickstart.py [--out /tmp/qs] [--steps N]

Runs exactly what `polymodal quickstart` runs and writes benchmarks/results/quickstart.json with the
machine, the commit, the seconds per stage and the targets with their measured values.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from provenance import git_commit, write_result

from polymodal.quickstart import run_quickstart


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--result", type=Path, default=Path(__file__).parent / "results" / "quickstart.json")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="pm_quickstart_"))
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    summary = run_quickstart(out, steps=args.steps)
    commit = git_commit()
    record = {
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit,
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "load_average_before": load_before},
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "seconds": summary["seconds"],
        "steps": summary["steps"],
        "targets": summary["targets"],
        "metrics": summary["metrics"],
    }
    write_result(args.result, record)
    print(f"wrote {args.result}")


if __name__ == "__main__":
    main()
