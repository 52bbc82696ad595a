"""How long the built-in world takes to generate (target: 10,000 scenes well under a minute on 2 cores).

    python benchmarks/bench_world.py [--scenes 10000] [--workers 1 2]

Prints a table and writes benchmarks/results/world.json. The single-process run is the peer that
the multi-process run is compared with, measured in the same invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from polymodal.data.world import WorldConfig, generate_world


def _dir_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenes", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "world.json")
    args = ap.parse_args()
    rows = []
    for workers in args.workers:
        tmp = Path(tempfile.mkdtemp(prefix="pm_world_"))
        t0 = time.perf_counter()
        manifest = generate_world(tmp, WorldConfig(num_scenes=args.scenes, image_size=args.size), workers=workers)
        seconds = time.perf_counter() - t0
        rows.append(
            {
                "workers": workers,
                "scenes": args.scenes,
                "seconds": round(seconds, 2),
                "scenes_per_s": round(args.scenes / seconds, 1),
                "questions": sum(v for k, v in manifest.counts.items() if k.startswith("questions_")),
                "disk_mb": round(_dir_size(tmp) / 2**20, 1),
            }
        )
        shutil.rmtree(tmp)
    base = rows[0]["seconds"]
    print(f"{'workers':>7} {'scenes':>7} {'seconds':>8} {'scenes/s':>9} {'speedup':>8} {'questions':>10} {'disk MB':>8}")
    for r in rows:
        r["speedup_vs_1_worker"] = round(base / r["seconds"], 2)
        print(f"{r['workers']:>7} {r['scenes']:>7} {r['seconds']:>8} {r['scenes_per_s']:>9} {r['speedup_vs_1_worker']:>8} {r['questions']:>10} {r['disk_mb']:>8}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
