"""benchmarks/bench_search.py runs end to end at a tiny size and writes the JSON the lead's full run will.

The script is not part of the package, so it is loaded from its file; the sizes keep it to a few
seconds. Timings are only checked for being positive: this is a test of the script, not a benchmark.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

pytest.importorskip("faiss")

BENCHMARK = "bench_search"


def test_main_writes_every_row(bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "search.json"
    # flat_max 1,000 makes `auto` choose IVF at 3,000 vectors, as it does at 1M with the default threshold
    argv = ["--n", "3000", "--dim", "32", "--queries", "20", "--threads", "1", "--flat-max", "1000", "--out", str(out)]
    assert bench.main(argv) == 0
    assert "| ivf (auto) | near-duplicate |" in capsys.readouterr().out

    result = json.loads(out.read_text())
    assert result["config"] | {"n": 3000, "dim": 32, "queries": 20} == result["config"]
    assert {"cpu", "cores", "numpy", "faiss", "torch"} <= result["machine"].keys()
    assert result["date"] and result["commit"]
    rows = {r["label"]: r for r in result["rows"]}
    assert list(rows) == ["numpy exact", "ivf (auto)", "flat", "hnsw"]
    assert rows["ivf (auto)"]["params"]["nlist"] >= 1
    for label, row in rows.items():
        assert row["build_s"] >= 0 and row["index_mb"] > 0
        assert set(row["sets"]) == {"near_duplicate", "random"}
        for s in row["sets"].values():
            assert s["latency_ms"]["p50"] > 0 and s["latency_ms"]["p99"] >= s["latency_ms"]["p50"]
            assert s["batch_qps"] > 0 and s["speedup_p50_vs_numpy"] > 0
            assert 0.0 <= s["recall@10"] <= 1.0 and 0.0 <= s["recall@1"] <= 1.0
            if label in ("numpy exact", "flat"):
                assert s["recall@10"] == 1.0 and s["recall@1"] == 1.0
    # a noisy copy's source is its clear nearest neighbour, and every index finds it at this size
    assert rows["hnsw"]["sets"]["near_duplicate"]["recall@1"] > 0.9


def test_auto_resolves_to_the_kind_choose_kind_picks(bench: ModuleType) -> None:
    assert bench.resolve_kinds(["auto", "flat", "hnsw"], 1_000_000, 10_000) == [("ivf (auto)", "ivf"), ("flat", "flat"), ("hnsw", "hnsw")]
    # below the threshold auto is flat: one row, labelled as auto's choice
    assert bench.resolve_kinds(["auto", "flat", "hnsw"], 5_000, 10_000) == [("flat (auto)", "flat"), ("hnsw", "hnsw")]


def test_exact_batch_matches_one_at_a_time(bench: ModuleType) -> None:
    db = bench.make_database(5_000, 16, seed=3)
    queries = bench.make_queries(db, 7, 0.5, seed=3)["random"]
    bench.DB_BLOCK, old = 1_024, bench.DB_BLOCK  # five blocks, the last one partial: the running top 10 is merged
    try:
        scores, ids = bench.exact_batch(db, queries, 10)
    finally:
        bench.DB_BLOCK = old
    for j, q in enumerate(queries):
        s1, i1 = bench.exact_one(db, q, 10)
        assert list(i1) == list(ids[j])
        assert s1 == pytest.approx(scores[j], abs=1e-6)


def test_sweep_measures_each_setting_and_more_effort_finds_more(bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "search.json"
    argv = ["--n", "4000", "--dim", "32", "--queries", "30", "--threads", "1", "--flat-max", "1000", "--kinds", "auto,hnsw",
            "--sweep", "--out", str(out)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| ivf (auto) | nprobe=" in printed and "| hnsw | ef_search=" in printed
    rows = {r["label"]: r for r in json.loads(out.read_text())["rows"]}
    ivf, hnsw = rows["ivf (auto)"], rows["hnsw"]
    nlist, own = ivf["params"]["nlist"], ivf["params"]["nprobe"]
    probes = [p["nprobe"] for p in ivf["sweep"]]
    assert probes == sorted(set(probes)) and own in probes and max(probes) <= nlist
    assert [p["ef_search"] for p in hnsw["sweep"]][1:3] == [hnsw["params"]["efSearch"], 4 * hnsw["params"]["efSearch"]]
    recalls = [p["sets"]["random"]["recall@10"] for p in ivf["sweep"]]
    assert recalls[-1] > recalls[0]  # probing more lists finds more of the true neighbours
    if max(probes) == nlist:
        assert recalls[-1] == 1.0  # every list probed: exact
    at_own = next(p for p in ivf["sweep"] if p["nprobe"] == own)["sets"]["random"]["recall@10"]
    assert at_own == ivf["sets"]["random"]["recall@10"]  # the per-call setting equal to the index's own gives the same answer


def test_no_sweep_for_exact_search(bench: ModuleType) -> None:
    import polymodal.index.vectors as V

    db = bench.make_database(200, 8, seed=0)
    assert bench.effort_sweep(V.build("flat", 8, np.arange(200), db, generation=0)) == []


def test_clustered_data_gives_fresh_queries_and_ivf_finds_their_neighbours(bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "search.json"
    argv = ["--n", "4000", "--dim", "32", "--queries", "30", "--threads", "1", "--flat-max", "1000", "--kinds", "auto",
            "--clusters", "40", "--out", str(out)]
    assert bench.main(argv) == 0
    assert "| ivf (auto) | fresh |" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["config"]["data"].startswith("clustered (40 clusters")
    rows = {r["label"]: r for r in result["rows"]}
    assert set(rows["ivf (auto)"]["sets"]) == {"near_duplicate", "fresh"}
    # with clusters to find, IVF's default probes reach most true neighbours (random vectors: a small share)
    assert rows["ivf (auto)"]["sets"]["fresh"]["recall@10"] > 0.8


def test_clustered_members_sit_near_their_centre(bench: ModuleType) -> None:
    db, centres = bench.make_clustered_database(2000, 64, seed=1, clusters=10, spread=1.0)
    assert db.shape == (2000, 64) and np.allclose(np.linalg.norm(db, axis=1), 1.0, atol=1e-5)
    best = (db @ centres.T).max(axis=1)
    assert 0.6 < float(np.median(best)) < 0.8  # ~1/sqrt(2) at spread 1
