"""The GPU training benchmark runs end to end at tiny shapes on a CPU, and its accumulation is exact.

The real run (CLIP ViT-B/32, batch 256, bf16, H100) is measured in benchmarks/RESULTS.md; here the same
code path runs with ``--quick`` so a broken script is caught before anyone books a GPU for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("transformers")

BENCHMARK = "bench_train_gpu"


def test_quick_run_writes_every_row(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "train_gpu.json"
    rc = bench.main(["--quick", "--device", "cpu", "--max-batch-limit", "16", "--out", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    for key in ("device", "date", "commit", "versions", "matmul_peak", "params", "throughput", "max_batch"):
        assert key in result, key
    assert result["versions"]["torch"] and result["versions"]["transformers"]
    assert result["matmul_peak"]["tflops"] > 0
    # the two sides are the same network, and the FLOP formula counts exactly their matmul weights
    params = result["params"]
    assert params["ok"] and params["polymodal"] == params["transformers"]
    assert params["matmul_formula"] == params["matmul_counted_polymodal"] == params["matmul_counted_transformers"]
    names = [row["name"] for row in result["throughput"]]
    assert names == ["polymodal eager", "transformers eager"]  # --quick compiles nothing unless asked
    for row in result["throughput"]:
        assert row["samples_per_s"] > 0 and row["mfu"] > 0 and len(row["ms_per_step_all"]) == 2
    searches = {row["name"]: row for row in result["max_batch"]}
    assert len(searches) == 5
    assert all(row["max_batch"] >= 1 for row in searches.values())
    accum = searches["polymodal contrastive_accum (local_loss + gather)"]
    assert accum["accumulation"] and accum["max_batch"] >= accum["micro_batch"]
    assert set(result["max_effective_contrastive_batch"]) == {"polymodal", "transformers"}
    check = result["accum_equivalence"]
    assert check["ok"] and check["max_param_diff"] <= 1e-5


def test_accumulated_step_updates_parameters_like_the_full_batch_step(bench: ModuleType) -> None:
    check = bench.check_accum_equivalence(batch=8, k=2)
    assert check["loss_accum"] == pytest.approx(check["loss_full"], rel=1e-6)
    assert check["max_param_update"] > 1e-5  # the step moved the weights, so the comparison can fail
    assert check["max_param_diff"] <= 1e-5


def test_model_flops_formula(bench: ModuleType) -> None:
    """6 N T + attention + logits for CLIP ViT-B/32 at batch 256: about 11.3 TFLOP per step."""
    flops = bench.model_flops(bench.CLIP_B32, 256)
    n = bench.matmul_params(bench.CLIP_B32)
    assert n["vision_blocks"] == 12 * 12 * 768**2 and n["text_blocks"] == 12 * 12 * 512**2
    assert flops["total"] == flops["matmul"] + flops["attention"] + flops["logits"]
    assert 11.0e12 < flops["total"] < 11.6e12


def test_max_batch_search_brackets_the_limit(bench: ModuleType) -> None:
    """Doubling then bisection finds the largest fitting batch without any GPU (a fake OOM at 100)."""
    search = bench.find_max(lambda b: 1.0 if b <= 100 else None, start=8, limit=10_000, deadline=float("inf"))
    assert search.fits <= 100 < search.fails and search.fails - search.fits <= max(1, search.fits // 16)
    capped = bench.find_max(lambda b: 1.0, start=8, limit=48, deadline=float("inf"))
    assert capped.fits == 48 and capped.capped
    unit = bench.find_max(lambda b: 1.0 if b <= 100 else None, start=8, limit=10_000, deadline=float("inf"), unit=12)
    assert unit.fits == 96 and unit.fails == 108
