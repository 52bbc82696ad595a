"""Benchmark: polymodal's vector search (FAISS, the kinds ``auto`` chooses) against exact numpy search.

Run ``python benchmarks/bench_search.py`` (1,000,000 x 512-d vectors, 1,000 queries; about 2 GB for the
vectors plus one index at a time, so peak memory stays near 5 GB), or ``--quick`` for a smoke run
(20,000 vectors, 100 queries, well under a minute). ``--n``, ``--queries``, ``--dim``, ``--kinds``
(default ``auto,flat,hnsw``) and ``--threads`` change the set-up. It writes
``benchmarks/results/search.json`` with the machine, the date and the commit.

**What is measured.** Each index is built with polymodal's own code path, the one ``SearchIndex`` uses
(``vectors.choose_kind`` picks the kind for ``auto`` at this N, ``vectors.build`` builds it, and
``VectorIndex.search`` queries it), so the numbers are what users get, not what a hand-tuned FAISS
index would give. Per kind: build time (IVF training included), single-query latency p50/p99 (one
``search`` call per query, as ``SearchIndex.search_vector`` makes), batch throughput (all queries in
one call), recall@10 and the size of the index as polymodal saves it. The baseline is exact search in
numpy (one ``db @ q`` matrix-vector product plus ``argpartition`` per query; batched, a matrix product
over blocks of the database); its top 10 is the ground truth. The speed-up column is numpy's p50
latency over the index's.

**Which queries.** Uniformly random unit vectors in 512-d are nearly orthogonal (their cosines with
each other are ~N(0, 1/512)), so the 10 "nearest" neighbours of a random query are barely nearer than
the rest of the collection: every approximate index looks bad on them, which says more about the data
than about the index. Real embedding queries have a few clearly relevant items. So the main query set
is *near-duplicates*: database vectors plus Gaussian noise (``--noise`` 0.5 of the vector's norm,
cosine ~0.89 with its source), for which the source is the clear nearest neighbour; recall@1 (is the
exact top-1 found) measures that, and recall@10 stays demanding because neighbours 2-10 are still the
random tail. Fresh random queries are reported too, as the worst case.

**Clustered data.** ``--clusters C`` (e.g. ``n / 100``) replaces the random vectors with ``C`` clusters
(``--spread`` sets how loose), the structure real embeddings have and IVF relies on; the second query
set is then *fresh* members of random clusters, new items like the indexed ones. Synthetic clusters
are cleaner than real embeddings, so this bounds IVF's recall from above as random vectors bound it
from below.

**Recall.** recall@10 is the share of the returned 10 whose exact score reaches the exact 10th score
(minus 1e-5), as ann-benchmarks counts it: a neighbour tied with the 10th, which float rounding may
order either way, is not counted as a miss.

**Cost.** At the default size most of the time goes into building: IVF trains ~4 sqrt(n) = 4,000
centroids on all 1M vectors, and HNSW inserts 1M vectors into its graph; on 2 cores expect each to take
several minutes, and the single-query loops (numpy and flat scan 2 GB per query) a few more. The
machine is recorded with the numbers: timings from a shared or busy machine are not results. In
particular the ``IDMap2`` wrapper polymodal puts around flat and HNSW indexes maps result ids in an
OpenMP loop on every search; on a quiet machine that costs microseconds, but when other work holds the
cores (a model serving on them) a single query waits a scheduler slice (~20 ms) for the second thread.
Compare ``--threads 1`` to see it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import functools
import gc
import os
import platform
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from provenance import cpu_model, git_commit, write_result

from polymodal.index import vectors as V

K = 10
RECALL_TOL = 1e-5  # a returned neighbour scoring within this of the exact k-th score counts as a hit
DB_BLOCK = 32_768  # database rows per block: exact batched search and data generation stay O(block) in memory
DEFAULT_RESULT = Path(__file__).resolve().parent / "results" / "search.json"


# ------------------------------------------------------------------------------------------ data


def make_database(n: int, dim: int, seed: int) -> np.ndarray:
    """``n`` seeded unit vectors, generated in place block by block (no float64 copy of 2 GB)."""
    rng = np.random.default_rng(seed)
    db = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, DB_BLOCK):
        block = db[start : start + DB_BLOCK]
        rng.standard_normal(out=block, dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    return db


def make_clustered_database(n: int, dim: int, seed: int, clusters: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors around ``clusters`` random unit centres (Gaussian offsets of ``spread`` times
    a unit vector's norm), and the centres: data with the structure IVF relies on, as embeddings of
    related items have. At spread 1 a vector's cosine with its centre is ~0.71, with another member
    of its cluster ~0.5, and with anything else ~0 (+-0.044 at 512-d)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    db = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, DB_BLOCK):
        block = db[start : start + DB_BLOCK]
        rng.standard_normal(out=block, dtype=np.float32)
        block *= np.float32(spread / np.sqrt(dim))
        block += centres[rng.integers(0, clusters, len(block))]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    return db, centres


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def make_queries(db: np.ndarray, q: int, noise: float, seed: int, centres: np.ndarray | None = None, spread: float = 1.0) -> dict[str, np.ndarray]:
    """The two query sets (see the module docstring): noisy copies of database vectors, and random
    ones; over clustered data (``centres`` given) the second set is *fresh* members of random clusters
    instead, new items like those indexed."""
    rng = np.random.default_rng(seed + 1)
    n, dim = db.shape
    src = rng.choice(n, size=q, replace=n < q)
    near = db[src] + rng.standard_normal((q, dim), dtype=np.float32) * np.float32(noise / np.sqrt(dim))
    if centres is None:
        return {"near_duplicate": _unit_rows(near), "random": _unit_rows(rng.standard_normal((q, dim), dtype=np.float32))}
    fresh = centres[rng.integers(0, len(centres), q)] + rng.standard_normal((q, dim), dtype=np.float32) * np.float32(spread / np.sqrt(dim))
    return {"near_duplicate": _unit_rows(near), "fresh": _unit_rows(fresh)}


# ------------------------------------------------------------------------------- exact (numpy)


def exact_one(db: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top ``k`` for one query: what a user without an index would write."""
    scores = db @ q
    top = np.argpartition(-scores, k - 1)[:k]
    order = np.argsort(-scores[top], kind="stable")
    return scores[top][order], top[order]


def exact_batch(db: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top ``k`` for every query, ``(scores [q, k], ids [q, k])``: one matrix product per database
    block, keeping a running top ``k``, so memory is ``block x q`` scores, not ``n x q``."""
    nq = len(queries)
    best_s = np.full((nq, k), -np.inf, dtype=np.float32)
    best_i = np.full((nq, k), -1, dtype=np.int64)
    qt = np.ascontiguousarray(queries.T)
    for start in range(0, len(db), DB_BLOCK):
        s = (db[start : start + DB_BLOCK] @ qt).T  # [q, block]
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, part, axis=1)], axis=1)
        cand_i = np.concatenate([best_i, part + start], axis=1)
        keep = np.argpartition(-cand_s, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, keep, axis=1), np.take_along_axis(cand_i, keep, axis=1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_s, order, axis=1), np.take_along_axis(best_i, order, axis=1)


# ------------------------------------------------------------------------------------- measures


def recall_at(db: np.ndarray, queries: np.ndarray, found: np.ndarray, true_scores: np.ndarray, k: int) -> float:
    """Mean share of the returned top ``k`` whose exact score reaches the exact ``k``-th score (tie-tolerant)."""
    found = found[:, :k]
    valid = found >= 0
    vecs = db[np.where(valid, found, 0)]  # [q, k, dim]
    scores = np.einsum("qkd,qd->qk", vecs, queries)
    hits = valid & (scores >= true_scores[:, k - 1 : k] - RECALL_TOL)
    return float(hits.sum(axis=1).mean() / k)


def latencies_ms(search_one: Callable[[np.ndarray], Any], queries: np.ndarray) -> np.ndarray:
    """Wall time of one call per query, in ms (after one warm-up call)."""
    search_one(queries[0])
    out = np.empty(len(queries))
    for j, q in enumerate(queries):
        t = time.perf_counter()
        search_one(q)
        out[j] = (time.perf_counter() - t) * 1e3
    return out


def index_bytes(vi: V.VectorIndex) -> int:
    """Bytes of the index as polymodal saves it (``faiss.serialize_index``), counted without a copy."""
    faiss = V.import_faiss()
    total = 0

    def count(chunk: bytes) -> None:
        nonlocal total
        total += len(chunk)

    faiss.write_index(vi.index, faiss.PyCallbackIOWriter(count))
    return total


def rss_bytes() -> int:
    """Resident memory of this process (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (0 where ``resource`` is missing), to check the run
    stays well below the machine's memory: at 1M x 512 it should be about 2.5x the 2 GB database."""
    try:
        import resource
    except ImportError:
        return 0
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


@contextlib.contextmanager
def thread_limit(threads: int) -> Iterator[str]:
    """Limit FAISS (OpenMP) and numpy (BLAS, through threadpoolctl when installed) to ``threads``."""
    faiss = V.import_faiss()
    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            yield "not limited (threadpoolctl is not installed)"
        else:
            with threadpool_limits(limits=threads):
                yield str(threads)
    finally:
        faiss.omp_set_num_threads(old)


def _search_one(vi: V.VectorIndex, q: np.ndarray, **effort: int) -> tuple[np.ndarray, np.ndarray]:
    return vi.search(q[None, :], K, **effort)


SWEEP_FACTORS = (0.25, 1, 4, 8, 16)  # times the index's own nprobe / efSearch


def effort_sweep(vi: V.VectorIndex, factors: tuple[float, ...] = SWEEP_FACTORS) -> list[dict[str, int]]:
    """The per-call settings to sweep for an IVF (``nprobe``) or HNSW (``ef_search``) index: multiples
    of its own, each at least 1, IVF's capped at its list count; none for exact search."""
    params = vi.describe()
    if vi.kind == "ivf":
        own, cap, knob = params["nprobe"], params["nlist"], "nprobe"
    elif vi.kind == "hnsw":
        own, cap, knob = params["efSearch"], None, "ef_search"
    else:
        return []
    values = sorted({max(1, round(own * f)) if cap is None else min(cap, max(1, round(own * f))) for f in factors})
    return [{knob: v} for v in values]


def _pct(ms: np.ndarray) -> dict[str, float]:
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean())}


# --------------------------------------------------------------------------------------- machine


def machine_info(threads: str) -> dict[str, Any]:
    """What the numbers depend on: CPU, cores, threads used, library versions, load before the run."""
    faiss = V.import_faiss()
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = "not installed"
    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "threads": threads, "python": platform.python_version(),
        "numpy": np.__version__, "faiss": getattr(faiss, "__version__", "unknown"), "torch": torch_version,
        "platform": platform.platform(), "load_average_before": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


# ------------------------------------------------------------------------------------------ run


def resolve_kinds(kinds: list[str], n: int, flat_max: int) -> list[tuple[str, str]]:
    """``(label, kind)`` rows for the requested kinds; ``auto`` becomes the kind ``choose_kind`` picks at
    ``n`` (labelled "ivf (auto)"), and a kind asked for twice is measured once."""
    labels: dict[str, str] = {}  # kind -> label, in the order asked
    for k in kinds:
        kind = V.choose_kind(k, n, flat_max=flat_max)
        if k == "auto":
            labels[kind] = f"{kind} (auto)"
        else:
            labels.setdefault(kind, kind)
    return [(label, kind) for kind, label in labels.items()]


def run(n: int, queries: int, dim: int, kinds: list[str], threads: int, noise: float = 0.5, seed: int = 0,
        flat_max: int = V.FLAT_MAX, log: Callable[[str], None] = print, sweep: bool = False,
        clusters: int = 0, spread: float = 1.0) -> dict[str, Any]:
    """Build every requested index over the same data and measure it against exact numpy search; with
    ``sweep``, also each approximate index at several per-call ``nprobe`` / ``ef_search`` settings;
    with ``clusters``, over clustered data (:func:`make_clustered_database`) instead of random."""
    if n < K:
        raise ValueError(f"--n must be at least {K}")
    result: dict[str, Any] = {
        "benchmark": "vector search: polymodal (FAISS via polymodal.index.vectors) vs exact numpy",
        "date": _dt.date.today().isoformat(), "commit": git_commit(),
        "config": {"n": n, "queries": queries, "dim": dim, "k": K, "kinds": kinds, "noise": noise, "seed": seed,
                   "flat_max": flat_max, "recall_tolerance": RECALL_TOL,
                   "data": f"clustered ({clusters:,} clusters, spread {spread})" if clusters else "random"},
    }
    with thread_limit(threads) as numpy_threads:
        result["machine"] = machine_info(f"faiss {threads}, numpy BLAS {numpy_threads}")
        t = time.perf_counter()
        if clusters:
            db, centres = make_clustered_database(n, dim, seed, clusters, spread)
            qsets = make_queries(db, queries, noise, seed, centres, spread)
        else:
            db = make_database(n, dim, seed)
            qsets = make_queries(db, queries, noise, seed)
        log(f"data: {n:,} x {dim}-d unit vectors, {queries:,} queries per set ({time.perf_counter() - t:.1f} s)")

        truth: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        exact: dict[str, Any] = {"label": "numpy exact", "kind": "exact", "build_s": 0.0, "index_mb": float(db.nbytes / 2**20), "sets": {}}
        for name, qs in qsets.items():
            t = time.perf_counter()
            truth[name] = exact_batch(db, qs, K)
            batch_s = time.perf_counter() - t
            lat = latencies_ms(functools.partial(exact_one, db, k=K), qs)
            exact["sets"][name] = {"latency_ms": _pct(lat), "batch_qps": len(qs) / batch_s, "recall@1": 1.0, "recall@10": 1.0}
            log(f"  numpy exact, {name}: p50 {exact['sets'][name]['latency_ms']['p50']:.2f} ms")
        rows = [exact]

        ids = np.arange(n, dtype=np.int64)
        for label, kind in resolve_kinds(kinds, n, flat_max):
            gc.collect()
            rss0 = rss_bytes()
            t = time.perf_counter()
            vi = V.build(kind, dim, ids, db, generation=0)
            build_s = time.perf_counter() - t
            row: dict[str, Any] = {"label": label, "kind": kind, "build_s": build_s, "index_mb": index_bytes(vi) / 2**20,
                                   "rss_growth_mb": (rss_bytes() - rss0) / 2**20, "params": vi.describe(), "sets": {}}
            log(f"  {label}: built in {build_s:.1f} s ({row['params']})")
            for name, qs in qsets.items():
                lat = latencies_ms(functools.partial(_search_one, vi), qs)
                t = time.perf_counter()
                _, found = vi.search(qs, K)
                batch_s = time.perf_counter() - t
                true_s = truth[name][0]
                row["sets"][name] = {
                    "latency_ms": _pct(lat), "batch_qps": len(qs) / batch_s,
                    "recall@1": recall_at(db, qs, found, true_s, 1), "recall@10": recall_at(db, qs, found, true_s, K),
                }
            if sweep:
                row["sweep"] = []
                for effort in effort_sweep(vi):
                    point: dict[str, Any] = {**effort, "sets": {}}
                    for name, qs in qsets.items():
                        lat = latencies_ms(functools.partial(_search_one, vi, **effort), qs)
                        _, found = vi.search(qs, K, **effort)
                        true_s = truth[name][0]
                        point["sets"][name] = {"latency_ms": _pct(lat), "recall@1": recall_at(db, qs, found, true_s, 1),
                                               "recall@10": recall_at(db, qs, found, true_s, K)}
                    log(f"    {effort}: " + ", ".join(f"{n} p50 {p['latency_ms']['p50']:.2f} ms recall@10 {p['recall@10']:.3f}"
                                                    for n, p in point["sets"].items()))
                    row["sweep"].append(point)
            rows.append(row)
            del vi  # free it before the next one is built: one index in memory at a time

    for row in rows:
        for name, s in row["sets"].items():
            s["speedup_p50_vs_numpy"] = exact["sets"][name]["latency_ms"]["p50"] / s["latency_ms"]["p50"]
    result["rows"] = rows
    result["peak_rss_mb"] = peak_rss_bytes() / 2**20
    return result


def markdown_table(result: dict[str, Any]) -> str:
    """One Markdown table: a row per (index, query set), near-duplicate queries first."""
    lines = [
        "| index | queries | build s | p50 ms | p99 ms | p50 speed-up | batch q/s | recall@1 | recall@10 | index MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = list(result["rows"][0]["sets"])  # near-duplicate, then random (or fresh, over clustered data)
    for name in names:
        for row in result["rows"]:
            s = row["sets"][name]
            lat = s["latency_ms"]
            lines.append(
                f"| {row['label']} | {name.replace('_', '-')} | {row['build_s']:.1f} | {lat['p50']:.3f} | {lat['p99']:.3f} | "
                f"{s['speedup_p50_vs_numpy']:.1f}x | {s['batch_qps']:,.0f} | {s['recall@1']:.3f} | {s['recall@10']:.3f} | "
                f"{row['index_mb']:,.0f} |"
            )
    sweeps = [row for row in result["rows"] if row.get("sweep")]
    if sweeps:
        other = names[1]
        lines += ["", f"| index | setting | near-dup p50 ms | near-dup recall@1 | near-dup recall@10 | {other} p50 ms | {other} recall@10 | p50 speed-up ({other}) |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        exact_p50 = result["rows"][0]["sets"][other]["latency_ms"]["p50"]
        for row in sweeps:
            for point in row["sweep"]:
                setting = ", ".join(f"{k}={v}" for k, v in point.items() if k != "sets")
                near, rand = point["sets"]["near_duplicate"], point["sets"][other]
                lines.append(
                    f"| {row['label']} | {setting} | {near['latency_ms']['p50']:.2f} | {near['recall@1']:.3f} | {near['recall@10']:.3f} | "
                    f"{rand['latency_ms']['p50']:.2f} | {rand['recall@10']:.3f} | {exact_p50 / rand['latency_ms']['p50']:.1f}x |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, run, print the table and write the JSON; returns the exit status."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="database vectors (default 1,000,000)")
    ap.add_argument("--queries", type=int, default=1_000, help="queries per query set (default 1,000)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--kinds", default="auto,flat,hnsw", help=f"comma-separated, of {', '.join(V.KINDS)} (default auto,flat,hnsw)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="FAISS and BLAS threads (default: all cores)")
    ap.add_argument("--noise", type=float, default=0.5, help="near-duplicate noise, relative to the vector's norm (default 0.5)")
    ap.add_argument("--flat-max", type=int, default=V.FLAT_MAX, help=f"auto's exact-search threshold (default {V.FLAT_MAX:,}, as SearchIndex)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run: n=20,000, 100 queries")
    ap.add_argument("--sweep", action="store_true", help="also measure IVF / HNSW at several per-call nprobe / ef_search settings")
    ap.add_argument("--clusters", type=int, default=0, help="clustered data with this many clusters instead of random vectors (e.g. n / 100)")
    ap.add_argument("--spread", type=float, default=1.0, help="clustered data: offset from the centre, relative to its norm (default 1.0)")
    ap.add_argument("--out", type=Path, default=DEFAULT_RESULT)
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.queries = 20_000, 100
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    bad = [k for k in kinds if k not in V.KINDS]
    if bad or not kinds:
        ap.error(f"--kinds must name some of {', '.join(V.KINDS)}; got {args.kinds!r}")
    if args.n < K or args.queries < 1 or args.dim < 1 or args.threads < 1:
        ap.error(f"--n must be >= {K}, and --queries, --dim and --threads >= 1")

    if args.clusters < 0 or args.spread <= 0:
        ap.error("--clusters must be >= 0 and --spread > 0")
    result = run(args.n, args.queries, args.dim, kinds, args.threads, args.noise, args.seed, args.flat_max, sweep=args.sweep,
                 clusters=args.clusters, spread=args.spread)
    print()
    print(markdown_table(result))
    write_result(args.out, result)
    print(f"\npeak memory {result['peak_rss_mb']:,.0f} MiB; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
