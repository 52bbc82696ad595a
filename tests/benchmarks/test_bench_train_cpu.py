"""The CPU training benchmark (benchmarks/bench_train_cpu.py) runs end to end at tiny shapes.

It guards the script rather than the numbers: both models build from the quickstart config, take a
full training step on the synthetic batch, report positive throughput, and the `transformers` peer
stays the same size as polymodal's model (so the ratio compares like with like).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("transformers")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_train_cpu.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_train_cpu", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_tiny_run_writes_rows(tmp_path: Path) -> None:
    bench = _load()
    out = tmp_path / "train_cpu.json"
    record = bench.main(["--quick", "--batch-size", "4", "--steps", "1", "--warmup", "1", "--repeats", "1", "--threads", "1", "--result", str(out)])
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert saved["rows"] == record["rows"]
    rows = {r["model"]: r for r in saved["rows"]}
    assert set(rows) == {"polymodal", "polymodal, SDPA attention", "peer (sdpa)", "peer (eager)"}
    for row in rows.values():
        assert row["samples_per_s_median"] > 0 and row["ms_per_step_median"] > 0
        assert row["last_loss"] == row["last_loss"]  # finite, not NaN
    for name in ("peer (sdpa)", "peer (eager)"):
        assert abs(rows[name]["params"] - rows["polymodal"]["params"]) / rows["polymodal"]["params"] < 0.05
    assert saved["fastest_peer"] in rows and saved["ratio_polymodal_to_fastest_peer"] > 0
    assert saved["batch"]["images"] == 4 and saved["batch"]["questions"] == 12
    assert saved["machine"]["cores"] and saved["machine"]["torch"] and saved["machine"]["transformers"]


def test_peer_uses_transformers_stacks() -> None:
    """The peer's text tower, fusion and decoder are `transformers` modules; the image tower is shared code."""
    bench = _load()
    cfg = bench.quickstart_config()
    poly = bench.build_polymodal(cfg["model"], 1000, 0)
    peer = bench.to_peer(poly, cfg["model"], 1000, "sdpa")
    modules = {type(m).__module__ for m in peer.modules()}
    assert "transformers.models.bert.modeling_bert" in modules
    assert not any(type(m).__name__ == "TransformerBlock" for m in peer.modules())
    assert peer.captioner.image_encoder is peer.pretrain.backbone.image_encoder
    assert type(peer.pretrain.backbone.image_encoder) is type(poly.pretrain.backbone.image_encoder)
