"""benchmarks/bench_accumulation.py runs end to end at a tiny size, and its rows mean what they say.

Timings are only checked for being positive (this tests the script, not the machine); the loss check
and the negatives per row are checked for real.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARK = "bench_accumulation"


def test_quick_run_writes_every_row(bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "accumulation.json"
    assert bench.main(["--quick", "--threads", "1", "--out", str(out)]) == 0
    assert "cached, 2 x 8" in capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert [(r["mode"], r["splits"]) for r in rows] == [("full", 1), ("cached", 2), ("summed", 2)]
    assert [r["negatives_per_row"] for r in rows] == [15, 15, 7]
    assert all(r["seconds_per_step"] > 0 for r in rows)
    full, cached, summed = rows
    assert cached["first_loss"] == pytest.approx(full["first_loss"], rel=1e-4)  # same loss: the whole batch scored
    assert summed["first_loss"] != pytest.approx(full["first_loss"], rel=1e-3)  # fewer negatives, another loss


def test_one_configuration_in_process(bench: ModuleType) -> None:
    row = bench.measure("dual_encoder-tiny", 8, "cached", 4, steps=1, warmup=0, threads=1)
    assert row["negatives_per_row"] == 7 and row["added_peak_mib"] >= 0
