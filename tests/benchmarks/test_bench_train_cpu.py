"""The CPU training benchmark (benchmarks/bench_train_cpu.py) runs end to end at tiny shapes.

It guards the script rather than the numbers: both models build from the quickstart config, take a
full training step on the synthetic batch, report positive throughput, and the `transformers` peer
stays the same size as polymodal's model (so the ratio compares like with like).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("transformers")

BENCHMARK = "bench_train_cpu"


def test_tiny_run_writes_rows(bench: ModuleType, tmp_path: Path) -> None:
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
    assert saved["heap"] == (os.environ.get("GLIBC_TUNABLES") or "glibc defaults")


@pytest.mark.parametrize("fresh", [False, True])
def test_timed_steps_meet_only_warmed_up_batches_unless_fresh(bench: ModuleType, tmp_path: Path, monkeypatch, fresh: bool) -> None:
    """Pooled (the default), every batch a timed step runs was run by the same model in its warm-up, so
    kernels for its shapes exist; with --fresh no timed batch was seen before."""
    seeds: dict[int, int] = {}
    make_batch = bench.make_batch

    def recording_batch(*args, **kwargs):
        batch = make_batch(*args, **kwargs)
        seeds[id(batch)] = args[-1]
        return batch

    steps: dict[str, list[int]] = {}
    step = bench.Runner.step

    def recording_step(self, batch):
        steps.setdefault(self.name, []).append(seeds[id(batch)])
        return step(self, batch)

    monkeypatch.setattr(bench, "make_batch", recording_batch)
    monkeypatch.setattr(bench.Runner, "step", recording_step)
    args = ["--quick", "--batch-size", "2", "--steps", "2", "--warmup", "1", "--repeats", "2", "--pool", "2", "--threads", "1",
            "--peer-attn", "eager", "--no-what-if", "--result", str(tmp_path / "train_cpu.json")]
    record = bench.main(args + (["--fresh"] if fresh else []))
    assert set(steps) == {"polymodal", "peer (eager)"}
    warmup = record["warmup"]
    assert warmup == (1 if fresh else 2)
    for name, seen in steps.items():
        warm, timed = seen[:warmup], seen[warmup:]
        assert len(timed) == 4, name
        assert set(timed).isdisjoint(warm) if fresh else set(timed) <= set(warm), (name, seen)
    assert steps["polymodal"] == steps["peer (eager)"]  # both sides run the same batches in the same order
    assert record["timed_batches"] == ("fresh" if fresh else "pool of 2, each run in the warm-up")


def test_steady_heap_env_only_where_glibc_reads_it_and_nothing_is_set() -> None:
    from provenance import STEADY_HEAP_TUNABLES, steady_heap_env

    env = steady_heap_env({"PATH": "/bin"}, "linux")
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": STEADY_HEAP_TUNABLES}
    assert steady_heap_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "linux") is None  # the user's own
    assert steady_heap_env({"PATH": "/bin"}, "darwin") is None


@pytest.mark.skipif(sys.platform != "linux", reason="the re-run sets a glibc variable")
@pytest.mark.parametrize("flag", [[], ["--glibc-defaults"]])
def test_the_script_reruns_itself_with_the_heap_kept_unless_told_not_to(tmp_path: Path, flag: list[str], script_heap) -> None:
    from provenance import STEADY_HEAP_TUNABLES

    out = tmp_path / "train_cpu.json"
    args = ["--quick", "--batch-size", "2", "--steps", "1", "--warmup", "1", "--repeats", "1", "--threads", "1",
            "--peer-attn", "eager", "--no-what-if", "--result", str(out), *flag]
    heap, printed = script_heap(args, out)
    assert heap == ("glibc defaults" if flag else STEADY_HEAP_TUNABLES)
    assert f"heap: {heap}" in printed


def test_peer_uses_transformers_stacks(bench: ModuleType) -> None:
    """The peer's text tower, fusion and decoder are `transformers` modules; the image tower is shared code."""
    cfg = bench.quickstart_config()
    poly = bench.build_polymodal(cfg["model"], 1000, 0)
    peer = bench.to_peer(poly, cfg["model"], 1000, "sdpa")
    modules = {type(m).__module__ for m in peer.modules()}
    assert "transformers.models.bert.modeling_bert" in modules
    assert not any(type(m).__name__ == "TransformerBlock" for m in peer.modules())
    assert peer.captioner.image_encoder is peer.pretrain.backbone.image_encoder
    assert type(peer.pretrain.backbone.image_encoder) is type(poly.pretrain.backbone.image_encoder)
