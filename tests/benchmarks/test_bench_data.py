"""The data-pipeline benchmark (benchmarks/bench_data.py) runs end to end at tiny sizes.

It guards the script, not the numbers: every image set x implementation gets a positive rate, the
eval-mode paths agree pixel for pixel, and the training runs report per-step data wait and compute
read back from the trainer's own log.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

BENCHMARK = "bench_data"


def test_tiny_run_writes_rows(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "data.json"
    args = ["--images", "4", "--repeats", "1", "--scenes", "20", "--steps", "2", "--batch", "4", "--workers", "0", "2",
            "--runs", "world", "jpeg", "--profile-images", "4", "--tmp", str(tmp_path / "work"), "--out", str(out)]
    assert bench.main(args) == 0
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert saved["machine"]["cores"] and saved["versions"]["pillow"] and saved["commit"]
    rows = saved["throughput"]
    assert {r["images"] for r in rows} == {"world PNG 64px -> 64", "JPEG 640x480 -> 224"}
    assert {"polymodal, train", "polymodal, eval", "plain PIL loop, train", "plain PIL loop, eval"} <= {r["impl"] for r in rows}
    assert all(r["images_per_s"] > 0 and r["ms_per_image"] > 0 for r in rows)
    assert all(r["vs_plain"] > 0 for r in rows if r["impl"].startswith("polymodal"))
    for profile in saved["profiles"].values():
        assert profile["eval_max_abs_diff_vs_plain"] < 1e-5 and profile["polymodal_train_top"]
    runs = saved["training"]
    assert [(r["num_workers"]) for r in runs] == [0, 2, 0, 2]
    for r in runs:
        assert r["steps"] == 2
        assert r["mean_step_s"] > 0 and r["mean_data_s"] > 0 and 0 < r["data_share_steady"] < 1
        assert r["epochs"] >= 1 and r["epoch_start_data_s"] > 0
