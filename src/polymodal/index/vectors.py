"""FAISS indexes over one modality's vectors: which kind, building it, and saving it atomically.

**Which kind.** Exact search (``flat``) is the right answer for small collections: it is exact and a
10,000 x 512 scan takes about a millisecond. Past ``flat_max`` vectors, ``auto`` switches to ``ivf``
(an inverted file of ``~4 sqrt(n)`` clusters, of which ``~2 sqrt(nlist)`` are probed), which supports
deletion in place; ``hnsw`` (a graph) is available on request and searches faster still, but FAISS
cannot delete from it, so a delete rebuilds it. The kind is chosen whenever the index is (re)built:
an ``auto`` index switches to IVF once it grows past ``flat_max``, back to flat only below half of it
(so an index near the threshold does not flip-flop), and an IVF index is re-trained once it has grown
to 4x the vectors its clusters were trained on.

**Files.** One file per modality: a magic string, a JSON header (the store generation the file
reflects, the kind, counts, and the payload's length and CRC-32), then ``faiss.serialize_index``'s
bytes. It is written to a temp file, fsynced and renamed into place, so a reader finds either the old
file or the new one; a file whose length or CRC does not match is reported as damaged and rebuilt
from the store, never handed to FAISS (which may crash on garbage).

Every vector is L2-normalised, and the metric is the inner product, so scores are cosine similarities.
"""

from __future__ import annotations

import contextlib
import json
import math
import operator
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from polymodal.atomic import fsync_path
from polymodal.index.errors import SearchIndexError

__all__ = ["FLAT_MAX", "KINDS", "VectorIndex", "build", "choose_kind", "import_faiss", "load", "save"]

KINDS = ("auto", "flat", "ivf", "hnsw")
FLAT_MAX = 10_000  # auto: exact search up to this many vectors
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 64
RETRAIN_GROWTH = 4  # re-train an IVF index once it holds this many times its training set
IVF_TRAIN_PER_LIST = 64  # k-means sample: 64 vectors per cluster place centroids as well as all of them
SMALL_QUERY_BATCH = 8  # searched on one thread (see VectorIndex.search)
_MAGIC = b"PMFAISS1"


def import_faiss() -> Any:
    """The ``faiss`` module, or an error that says how to install it."""
    try:
        import faiss
    except ImportError:
        raise SearchIndexError("the search index needs FAISS: pip install 'polymodal[serve]' (or pip install faiss-cpu)") from None
    return faiss


def ivf_lists(n: int) -> int:
    """Clusters for ``n`` vectors: ~4 sqrt(n), with at least 39 training points per cluster (FAISS's floor)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def ivf_probes(nlist: int) -> int:
    return max(1, min(nlist, max(16, math.ceil(2 * math.sqrt(nlist)))))


def choose_kind(requested: str, n: int, current: str | None = None, trained_on: int = 0, flat_max: int = FLAT_MAX) -> str:
    """The kind an index of ``n`` vectors should be now (see the module docstring)."""
    if requested not in KINDS:
        raise SearchIndexError(f"index kind must be one of {', '.join(KINDS)}; got {requested!r}")
    if n == 0:
        return "flat"  # nothing to train on yet; becomes the requested kind with the first vectors
    if requested != "auto":
        return requested
    if current == "ivf" and n >= flat_max // 2:
        return "ivf"
    return "ivf" if n > flat_max else "flat"


def needs_retrain(kind: str, n: int, trained_on: int) -> bool:
    return kind == "ivf" and n > RETRAIN_GROWTH * max(1, trained_on)


@dataclass
class VectorIndex:
    """One modality's FAISS index and the store generation it reflects (-1: unknown, never saved)."""

    kind: str
    index: Any
    generation: int
    trained_on: int = 0  # IVF: the vectors its clusters were trained on

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: list[int]) -> bool:
        """Remove ids in place; False where FAISS cannot (HNSW), and the caller must rebuild."""
        if not ids:
            return True
        if self.kind == "hnsw":
            return False
        self.index.remove_ids(np.asarray(ids, dtype=np.int64))
        return True

    def search(
        self, queries: np.ndarray, k: int, *, nprobe: int | None = None, ef_search: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(scores [q, k], ids [q, k])``, best first; ids of -1 mark fewer than ``k`` results.

        ``nprobe`` (IVF: clusters scanned) and ``ef_search`` (HNSW: graph candidates kept) trade speed
        for recall in this call only; None keeps the index's own. The other kind's setting, and both
        for exact (flat) search, are ignored, so one call works whatever kind ``auto`` chose. What
        they buy at 1M vectors is measured in benchmarks/bench_search.py.

        A handful of queries is searched on one thread. FAISS parallelises over queries (and the ID map
        translates results in an OpenMP loop), so one query gains nothing from more threads, but every
        OpenMP region waits for all of them: on a server whose cores are busy with the model, that wait
        was ~20 ms per query against ~0.05 ms single-threaded (benchmarks/bench_search.py).
        """
        params = self._search_params(nprobe, ef_search)
        k = min(k, self.ntotal)
        if k <= 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if len(queries) > SMALL_QUERY_BATCH:
            return self.index.search(queries, k, params=params)
        with _single_thread():
            return self.index.search(queries, k, params=params)

    def _search_params(self, nprobe: int | None, ef_search: int | None) -> Any:
        nprobe, ef_search = _whole_number("nprobe", nprobe), _whole_number("ef_search", ef_search)
        if self.kind == "ivf" and nprobe is not None:
            faiss = import_faiss()
            return faiss.SearchParametersIVF(nprobe=min(nprobe, int(faiss.extract_index_ivf(self.index).nlist)))
        if self.kind == "hnsw" and ef_search is not None:
            faiss = import_faiss()
            return faiss.SearchParametersHNSW(efSearch=min(ef_search, max(1, self.ntotal)))  # more would only allocate
        return None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "vectors": self.ntotal}
        if self.kind == "ivf":
            faiss = import_faiss()
            ivf = faiss.extract_index_ivf(self.index)
            out |= {"nlist": int(ivf.nlist), "nprobe": int(ivf.nprobe), "trained_on": self.trained_on}
        elif self.kind == "hnsw":
            faiss = import_faiss()
            hnsw = faiss.downcast_index(self.index.index).hnsw
            out |= {"M": int(hnsw.nb_neighbors(1)), "efSearch": int(hnsw.efSearch)}
        return out


def _whole_number(name: str, value: Any) -> int | None:
    """``value`` as an int >= 1 (ints and numpy integers, not floats or bools), None left as None."""
    if value is None:
        return None
    try:
        number = operator.index(value)
    except TypeError:
        number = 0
    if isinstance(value, bool) or number < 1:
        raise SearchIndexError(f"{name} must be a whole number >= 1, got {value!r}")
    return number


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """Run FAISS on one OpenMP thread for the block (a process-wide setting, restored afterwards)."""
    faiss = import_faiss()
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def build(kind: str, dim: int, ids: np.ndarray, vectors: np.ndarray, generation: int) -> VectorIndex:
    """A new index of ``kind`` holding ``vectors`` under ``ids`` (IVF is trained on them)."""
    faiss = import_faiss()
    n = len(ids)
    if kind == "ivf" and n == 0:
        kind = "flat"
    if kind == "flat":
        index = faiss.index_factory(dim, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)
    elif kind == "hnsw":
        index = faiss.index_factory(dim, f"IDMap2,HNSW{HNSW_M}", faiss.METRIC_INNER_PRODUCT)
        hnsw = faiss.downcast_index(index.index).hnsw
        hnsw.efConstruction, hnsw.efSearch = HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH
    elif kind == "ivf":
        nlist = ivf_lists(n)
        index = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        index.cp.min_points_per_centroid = 1  # ivf_lists already keeps enough points per cluster
        index.cp.max_points_per_centroid = IVF_TRAIN_PER_LIST  # FAISS samples the rest away
        index.train(np.ascontiguousarray(vectors, dtype=np.float32))
        index.nprobe = ivf_probes(nlist)
    else:
        raise SearchIndexError(f"unknown index kind {kind!r}; expected flat, ivf or hnsw")
    vi = VectorIndex(kind, index, generation, trained_on=n if kind == "ivf" else 0)
    vi.add(ids, vectors)
    return vi


def save(vi: VectorIndex, path: Path, modality: str) -> None:
    """Write ``vi`` to ``path`` atomically (temp file, fsync, rename, fsync the folder). The header names
    the ``modality`` its vectors embed, so a file copied over the other modality's is not trusted."""
    if vi.generation < 0:
        raise SearchIndexError(f"refusing to save {path.name}: its state is unknown (an update was interrupted)")
    faiss = import_faiss()
    payload = faiss.serialize_index(vi.index).tobytes()
    header = json.dumps({
        "generation": vi.generation, "kind": vi.kind, "ntotal": vi.ntotal, "trained_on": vi.trained_on, "modality": modality,
        "payload_bytes": len(payload), "crc32": zlib.crc32(payload),
    }).encode()
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(_MAGIC + struct.pack("<Q", len(header)) + header)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_path(path.parent)


def load(path: Path, dim: int, modality: str) -> tuple[VectorIndex | None, str]:
    """``(index, "")``, or ``(None, why)`` when the file is missing or damaged (the caller rebuilds it)."""
    faiss = import_faiss()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, "missing"
    except OSError as e:
        return None, f"unreadable ({e})"
    if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 8:
        return None, "not a polymodal FAISS file"
    (hlen,) = struct.unpack("<Q", data[len(_MAGIC) : len(_MAGIC) + 8])
    start = len(_MAGIC) + 8 + hlen
    try:
        header = json.loads(data[len(_MAGIC) + 8 : start])
        payload = memoryview(data)[start:]
        if len(payload) != int(header["payload_bytes"]) or zlib.crc32(payload) != int(header["crc32"]):
            return None, "truncated or corrupt (length or CRC-32 mismatch)"
        index = faiss.deserialize_index(np.frombuffer(payload, dtype=np.uint8))
        vi = VectorIndex(str(header["kind"]), index, int(header["generation"]), int(header.get("trained_on", 0)))
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        return None, f"unreadable header or payload ({e})"
    if vi.index.d != dim or vi.ntotal != int(header["ntotal"]) or vi.kind not in KINDS[1:]:
        return None, f"inconsistent (dimension {vi.index.d}, expected {dim})"
    if header.get("modality", modality) != modality:  # files written before the header named it pass
        return None, f"holds {header['modality']} vectors, not {modality} ones"
    return vi, ""
