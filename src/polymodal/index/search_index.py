""":class:`SearchIndex`: a cross-modal search index on disk, searched by text or by image.

An index is one folder::

    index.json        the manifest: model (source, type, weights fingerprint, embedding size,
                      preprocessing), the collection root, creation time (written once)
    entries.sqlite    every entry's metadata and vector, the requested kind, the generation counter
    images.faiss      FAISS index over the image vectors (a cache of entries.sqlite)
    texts.faiss       FAISS index over the text vectors (a cache of entries.sqlite)
    write.lock        held by the one process writing

How it stays consistent, and why a crash never corrupts it: every change is a SQLite transaction
(metadata and vectors together) that bumps a generation counter; the FAISS files are written with
temp file + rename and record the generation they reflect. Opening an index compares the two and
brings a FAISS file that fell behind up to date from the rows and tombstones newer than it, or
rebuilds one that is missing or damaged; the store is never wrong, the FAISS files are never torn.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import torch
from torch import nn

from polymodal import predict
from polymodal.api import ImageInput, Processors
from polymodal.atomic import fsync_path, replace_dir
from polymodal.errors import PolymodalError
from polymodal.index import vectors as V
from polymodal.index.builder import AddReport, add_images, add_texts
from polymodal.index.errors import SearchIndexError
from polymodal.index.manifest import MANIFEST_FILE, Manifest, ModelInfo, describe_model
from polymodal.index.paths import CollectionRoot
from polymodal.index.store import STORE_FILE, Entry, Kind, NewEntry, Store

__all__ = ["IndexStats", "SearchHit", "SearchIndex"]

ModelArg = Union[str, "os.PathLike[str]", tuple[nn.Module, Processors]]
Target = Literal["image", "text", "all"]
MODALITIES: tuple[Kind, ...] = ("image", "text")
FAISS_FILES = {"image": "images.faiss", "text": "texts.faiss"}
LOCK_FILE = "write.lock"
SAVE_EVERY_S = 30.0  # during a long add, rewrite the FAISS file at most this often (plus at the end)


@dataclass(frozen=True)
class SearchHit:
    """One result: the entry's id, whether it is an image or a text, its path (images, relative to the
    collection root) or text, its caption (images, when one was given), and the cosine similarity."""

    id: int
    kind: Kind
    score: float
    path: str | None
    text: str | None
    caption: str | None
    added: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class IndexStats:
    """What ``polymodal index info`` prints."""

    path: str
    root: str
    model: dict[str, Any]
    images: int
    texts: int
    requested_kind: str
    flat_max: int
    vectors: dict[str, dict[str, Any]]
    generation: int
    created: str
    disk_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        m = self.model
        lines = [
            f"index      {self.path}",
            f"collection {self.root}",
            f"model      {m['source']} ({m['model_type']}, {m['embed_dim']}-d, {m['fingerprint'][:23]}...)",
            f"entries    {self.images} images, {self.texts} texts",
            f"kind       {self.requested_kind} (flat up to {self.flat_max} vectors)",
        ]
        for modality, d in self.vectors.items():
            extra = ", ".join(f"{k} {v}" for k, v in d.items() if k not in ("kind", "vectors"))
            lines.append(f"  {modality:<8} {d['kind']}, {d['vectors']} vectors" + (f" ({extra})" if extra else ""))
        lines.append(f"created    {self.created}, {self.disk_bytes / 1e6:.1f} MB on disk, generation {self.generation}")
        return "\n".join(lines)


def _source_of(model: str | os.PathLike[str], processors: Processors) -> str:
    """Where to reload the model from: the exact checkpoint folder it came from, else the name given."""
    for candidate in (processors.source, os.fspath(model)):
        if candidate and Path(candidate).exists():
            return os.path.abspath(candidate)
    return os.fspath(model)


def _load(model: ModelArg, device: str | torch.device) -> tuple[nn.Module, Processors, str]:
    if isinstance(model, tuple):
        m, proc = model
        return m, proc, proc.source or "<a model given in memory>"
    from polymodal.api import load_model

    m, proc = load_model(model, device)
    return m, proc, _source_of(model, proc)


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise SearchIndexError(f"k must be a whole number, got {k!r}")
    if k < 1:
        raise SearchIndexError(f"k must be at least 1, got {k}")
    return int(k)


class SearchIndex:
    """A cross-modal index: images and texts embedded by one model, searched by text or by image.

    Create one with :meth:`create`, open one with :meth:`open`. Writes (:meth:`add_images`,
    :meth:`add_texts`, :meth:`delete`, :meth:`set_kind`) take the folder's write lock, so two processes
    never write at once; searches may run alongside, from several threads.
    """

    def __init__(self, path: Path, manifest: Manifest, store: Store, model: tuple[nn.Module, Processors] | None, device: str | torch.device) -> None:
        self.path, self.manifest, self.store = path, manifest, store
        self.root = CollectionRoot(manifest.root)
        self.device = device
        self._model = model
        self._lock = threading.RLock()
        self._vectors: dict[Kind, V.VectorIndex] = {}
        self._dirty: set[Kind] = set()  # FAISS indexes changed since their file was written
        self._last_save = time.monotonic()
        self._save_cost = 0.0
        self.repairs: list[str] = []  # what opening had to fix (FAISS files behind or damaged)

    # ---------------------------------------------------------------------------------- lifecycle

    @classmethod
    def create(
        cls,
        out: str | os.PathLike[str],
        model: ModelArg,
        *,
        root: str | os.PathLike[str],
        kind: str = "auto",
        flat_max: int = V.FLAT_MAX,
        device: str | torch.device = "cpu",
        exist_ok: bool = False,
    ) -> SearchIndex:
        """A new, empty index in ``out`` for images under ``root``, embedded by ``model`` (a run folder,
        a Hugging Face folder or zoo name, or a loaded ``(model, processors)`` pair).

        ``kind`` is ``auto`` (flat up to ``flat_max`` vectors, IVF above), ``flat``, ``ivf`` or ``hnsw``.
        With ``exist_ok``, an index already in ``out`` for the same model and root is opened instead (this
        is how a killed build resumes); a different model or root is refused.
        """
        out = Path(os.path.abspath(out))
        if kind not in V.KINDS:
            raise SearchIndexError(f"index kind must be one of {', '.join(V.KINDS)}; got {kind!r}")
        if flat_max < 1:
            raise SearchIndexError(f"flat_max must be at least 1, got {flat_max}")
        root_path = Path(os.path.abspath(root))
        if not root_path.is_dir():
            raise SearchIndexError(f"collection root {root} is not a folder; the root is the folder that holds the images")
        if (out / MANIFEST_FILE).exists():
            if not exist_ok:
                raise SearchIndexError(f"{out} already holds a search index; add to it with 'polymodal index add', or choose another --out")
            index = cls.open(out, model=model, device=device)
            if Path(index.manifest.root) != root_path:
                index.close()
                raise SearchIndexError(f"index {out} has the collection root {index.manifest.root}, not {root_path}; use a new --out for another collection")
            if index.requested_kind != kind:
                index.set_kind(kind)
            return index
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise SearchIndexError(f"{out} exists and is not an empty folder or a search index; choose another --out")
        m, proc, source = _load(model, device)
        info = describe_model(m, proc, source)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            Manifest.new(root_path, info).write(tmp)
            store = Store(tmp / STORE_FILE, info.embed_dim, create=True)
            for key, value in (("kind", kind), ("flat_max", str(flat_max))):
                store.set_meta(key, value)
            store.close()
            fsync_path(tmp)
            replace_dir(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        index = cls(out, Manifest.read(out), Store(out / STORE_FILE, info.embed_dim), (m, proc), device)  # checked: it built the manifest
        index._load_vectors()
        return index

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, model: ModelArg | None = None, device: str | torch.device = "cpu") -> SearchIndex:
        """Open an index. Its model is loaded from the recorded source when first needed (adds, searches),
        or given here (a path/name, or a loaded pair), in which case it is checked now: a model whose
        weights or preprocessing differ from the index's is refused with :class:`ModelMismatch`."""
        folder = Path(os.path.abspath(path))
        manifest = Manifest.read(folder)
        loaded = None
        if model is not None:
            m, proc, source = _load(model, device)
            manifest.check_model(describe_model(m, proc, source), folder)
            loaded = (m, proc)
        index = cls(folder, manifest, Store(folder / STORE_FILE, manifest.model.embed_dim), loaded, device)
        index._load_vectors()
        return index

    def close(self) -> None:
        with self._lock:
            self.store.close()

    def __enter__(self) -> SearchIndex:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------- properties

    @property
    def requested_kind(self) -> str:
        return self.store.get_meta("kind", "auto") or "auto"

    @property
    def flat_max(self) -> int:
        return int(self.store.get_meta("flat_max", str(V.FLAT_MAX)) or V.FLAT_MAX)

    @property
    def model_info(self) -> ModelInfo:
        return self.manifest.model

    def __len__(self) -> int:
        return self.store.count()

    # ------------------------------------------------------------------------------------ model

    def model(self) -> tuple[nn.Module, Processors]:
        """The ``(model, processors)`` pair, loaded from the recorded source (and checked) on first use."""
        with self._lock:
            if self._model is None:
                source = self.manifest.model.source
                try:
                    m, proc, src = _load(source, self.device)
                except PolymodalError as e:
                    raise SearchIndexError(
                        f"index {self.path} cannot load its model from {source} ({e}); "
                        "pass the same model explicitly (--model on the command line)"
                    ) from None
                self.manifest.check_model(describe_model(m, proc, src), self.path)
                self._model = (m, proc)
            return self._model

    def _normalised(self, z: torch.Tensor) -> np.ndarray:
        out = z.detach().float().cpu().numpy().astype(np.float32, copy=False)
        if out.ndim != 2 or out.shape[1] != self.manifest.model.embed_dim:
            raise SearchIndexError(f"the model returned embeddings of shape {tuple(out.shape)}; index {self.path} holds {self.manifest.model.embed_dim}-d vectors")
        bad = int((~np.isfinite(out).all(axis=1)).sum())
        if bad:  # stored, a NaN vector is never found again and poisons IVF training
            raise SearchIndexError(
                f"the model returned {bad} embedding(s) with NaN or inf values; nothing was stored. Check the model's "
                "weights and its processors.json (an image std of 0 divides by zero)"
            )
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    def _encode_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        m, proc = self.model()
        return self._normalised(predict.embed_images(m, proc, list(images)))

    def _encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        m, proc = self.model()
        return self._normalised(predict.embed_texts(m, proc, list(texts)))

    # ----------------------------------------------------------------------------- FAISS state

    def _faiss_path(self, kind: Kind) -> Path:
        return self.path / FAISS_FILES[kind]

    def _rebuild(self, kind: Kind, generation: int, current: V.VectorIndex | None = None) -> V.VectorIndex:
        """A fresh FAISS index of ``kind`` from every stored vector, of the kind the collection needs now."""
        chunks = self.store.vectors(kind)
        ids = np.concatenate([c[0] for c in chunks]) if chunks else np.zeros(0, np.int64)
        dim = self.manifest.model.embed_dim
        vecs = np.concatenate([c[1] for c in chunks]) if chunks else np.zeros((0, dim), np.float32)
        want = V.choose_kind(self.requested_kind, len(ids), current.kind if current else None, flat_max=self.flat_max)
        self._dirty.add(kind)
        return V.build(want, dim, ids, vecs, generation)

    def _catch_up(self, kind: Kind, vi: V.VectorIndex, generation: int) -> V.VectorIndex:
        """Bring ``vi`` from its generation to ``generation``; a full rebuild where that cannot be exact."""
        if vi.generation == generation:
            return vi
        if vi.generation < 0 or vi.generation > generation:
            return self._rebuild(kind, generation, vi)
        since = vi.generation
        removed, added = self.store.tombstones(kind, since), self.store.vectors(kind, since)
        if not removed and not added and vi.ntotal == self.store.count(kind):
            vi.generation = generation  # nothing of this modality changed
            return vi
        vi.generation = -1  # unknown while it changes: never saved in this state
        self._dirty.add(kind)
        if not vi.remove(removed):
            return self._rebuild(kind, generation, vi)
        for ids, vecs in added:
            vi.add(ids, vecs)
        if vi.ntotal != self.store.count(kind):  # tombstones already pruned: rebuild rather than guess
            return self._rebuild(kind, generation, vi)
        vi.generation = generation
        return vi

    def _load_vectors(self) -> None:
        """Read the FAISS files and reconcile them with the store (see the module docstring)."""
        with self._lock, self.store.snapshot():
            generation = self.store.generation()
            for kind in MODALITIES:
                vi, why = V.load(self._faiss_path(kind), self.manifest.model.embed_dim, kind)
                stored = self.store.count(kind)
                if vi is not None and vi.generation == generation and vi.ntotal != stored:
                    vi, why = None, f"holds {vi.ntotal} vectors where the store has {stored} at the same generation"
                if vi is None:
                    if why != "missing" or stored:
                        self.repairs.append(f"{FAISS_FILES[kind]} {why}: rebuilt from {STORE_FILE}")
                    vi = self._rebuild(kind, generation)
                else:
                    behind = vi.generation
                    vi = self._catch_up(kind, vi, generation)
                    if kind in self._dirty:
                        self.repairs.append(f"{FAISS_FILES[kind]} was behind the store (generation {behind} of {generation}): brought up to date")
                self._vectors[kind] = vi
        if self.repairs:  # save the repair now, unless another process is writing (it will)
            with contextlib.suppress(SearchIndexError), self._writing():
                self._save(force=True)

    def refresh(self) -> None:
        """Pick up changes another process committed since this one opened or last refreshed."""
        with self._lock, self.store.snapshot():
            generation = self.store.generation()
            for kind in MODALITIES:
                self._vectors[kind] = self._catch_up(kind, self._vectors[kind], generation)

    def _save(self, force: bool = False) -> None:
        """Write the FAISS files that changed since they were last saved (throttled unless ``force``)."""
        now = time.monotonic()
        if not force and now - self._last_save < max(SAVE_EVERY_S, 10 * self._save_cost):
            return
        for kind in sorted(self._dirty):
            vi = self._vectors[kind]
            if vi.generation >= 0:
                V.save(vi, self._faiss_path(kind), kind)
                self.store.prune_tombstones(kind, vi.generation)
                self._dirty.discard(kind)
        self._save_cost = time.monotonic() - now
        self._last_save = time.monotonic()

    def _reconcile(self) -> None:
        """Switch an index to the kind its size now calls for (or re-train a grown IVF index), then save."""
        generation = self.store.generation()
        for kind in MODALITIES:
            vi = self._vectors[kind]
            n = vi.ntotal
            want = V.choose_kind(self.requested_kind, n, vi.kind, flat_max=self.flat_max)
            if vi.generation < 0 or want != vi.kind or V.needs_retrain(vi.kind, n, vi.trained_on):
                self._vectors[kind] = self._rebuild(kind, generation, vi)
        self._save(force=True)

    @contextlib.contextmanager
    def _adding(self) -> Iterator[None]:
        """A batched add under the write lock: on Ctrl-C or an error, what was committed is kept (FAISS
        files included); on success the FAISS files are reconciled with SQLite."""
        with self._writing():
            try:
                yield
            except BaseException:
                with contextlib.suppress(Exception):
                    self._save(force=True)
                raise
            self._reconcile()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the folder's write lock (one writing process at a time) and this object's lock."""
        with self._lock:
            lock_path = self.path / LOCK_FILE
            try:
                import fcntl
            except ImportError:  # Windows: no advisory lock; one writer is the caller's responsibility
                fcntl = None  # type: ignore[assignment]
            try:
                f = open(lock_path, "a+b")  # noqa: SIM115 (closed below, after the lock is released)
            except OSError as e:
                raise SearchIndexError(f"cannot write to index {self.path}: {e.strerror or e}") from None
            with f:
                if fcntl is not None:
                    try:
                        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError:
                        raise SearchIndexError(f"another process is writing to index {self.path}; wait for it to finish") from None
                try:
                    for stale in self.path.glob("*.tmp-*"):  # left by a writer that was killed mid-save
                        stale.unlink(missing_ok=True)
                    self.refresh()
                    yield
                finally:
                    if fcntl is not None:
                        fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _commit(self, kind: Kind, rows: Sequence[NewEntry], replaced: Sequence[int]) -> list[int]:
        """Store ``rows`` (and drop ``replaced``) in one transaction, then mirror it in FAISS."""
        generation, ids = self.store.add(rows, replaced)
        vi = self._vectors[kind]
        vi.generation = -1
        self._dirty.add(kind)
        if not vi.remove(list(replaced)):
            self._vectors[kind] = self._rebuild(kind, generation, vi)
        else:
            vi.add(np.asarray(ids, np.int64), np.stack([r.vector for r in rows]) if rows else np.zeros((0, self.manifest.model.embed_dim), np.float32))
            vi.generation = generation
        other = self._vectors["text" if kind == "image" else "image"]
        if other.generation >= 0:
            other.generation = generation  # nothing of its kind changed in this transaction
        self._save()
        return ids

    # ----------------------------------------------------------------------------------- writes

    def add_images(
        self,
        paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        *,
        captions: Mapping[str, str] | None = None,
        batch_size: int = 64,
        progress: bool = True,
    ) -> AddReport:
        """Embed and add image files (folders are walked for image files) under the collection root.

        Paths are absolute or relative to the current directory, and must lie inside the root.
        ``captions`` maps a path (relative to the root, or absolute) to a caption kept as metadata.
        Already-indexed unchanged files are skipped, changed ones re-embedded; unreadable ones are
        skipped and listed in the report. Committed batch by batch: a kill loses one batch at most.
        """
        with self._adding():
            return add_images(self, [paths] if isinstance(paths, (str, os.PathLike)) else paths,
                              captions=captions, batch_size=batch_size, progress=progress)

    def add_texts(self, texts: str | Iterable[str], *, batch_size: int = 256, progress: bool = True) -> AddReport:
        """Embed and add texts; an empty one raises before anything is added, duplicates are skipped."""
        with self._adding():
            return add_texts(self, texts, batch_size=batch_size, progress=progress)

    def resolve(self, item: int | str) -> int:
        """The id of an entry given by id, or by image path (relative to the root, or absolute)."""
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            if not self.store.lookup([int(item)]):
                raise SearchIndexError(f"index {self.path} has no entry with id {item}")
            return int(item)
        if not isinstance(item, (str, os.PathLike)):
            raise SearchIndexError(f"give an entry id (int) or an image path, got {type(item).__name__}")
        entry_id = self.store.find("image", self.root.relative(item))
        if entry_id is None:
            raise SearchIndexError(f"index {self.path} holds no image {item} (paths are relative to the collection root {self.root})")
        return entry_id

    def delete(self, items: int | str | Iterable[int | str]) -> int:
        """Delete entries by id or image path; all are checked first, then removed in one transaction.
        Returns how many were deleted. (HNSW indexes are rebuilt, since FAISS cannot delete from them.)"""
        if isinstance(items, (int, str, os.PathLike)):
            items = [items]  # type: ignore[list-item]
        with self._writing():
            ids = sorted({self.resolve(i) for i in items})  # type: ignore[union-attr]
            if not ids:
                return 0
            entries = self.store.lookup(ids)
            generation = self.store.delete(ids)
            for kind in MODALITIES:
                vi = self._vectors[kind]
                vi.generation = -1
                self._dirty.add(kind)
                if not vi.remove([i for i in ids if entries[i].kind == kind]):
                    self._vectors[kind] = self._rebuild(kind, generation, vi)
                else:
                    vi.generation = generation
            self._reconcile()
        return len(ids)

    def set_kind(self, kind: str) -> None:
        """Change the requested kind (``auto``, ``flat``, ``ivf``, ``hnsw``) and rebuild to match."""
        if kind not in V.KINDS:
            raise SearchIndexError(f"index kind must be one of {', '.join(V.KINDS)}; got {kind!r}")
        with self._writing():
            self.store.set_meta("kind", kind)
            self._reconcile()

    # ----------------------------------------------------------------------------------- search

    def search_text(
        self, query: str, k: int = 10, *, target: Target = "image", nprobe: int | None = None, ef_search: int | None = None
    ) -> list[SearchHit]:
        """The ``k`` entries of ``target`` (``image``, ``text`` or ``all``) nearest to a text query, best
        first. A ``k`` larger than the entries there is clamped to their number (so ``10**9`` returns
        everything, ranked); an empty or non-string query raises. ``nprobe`` / ``ef_search`` trade
        speed for recall on an IVF / HNSW index (see :meth:`VectorIndex.search`)."""
        if not isinstance(query, str):
            raise SearchIndexError(f"a text query must be a string, got {type(query).__name__}")
        if not query.strip():
            raise SearchIndexError("the text query is empty; give some words to search for")
        k = _check_k(k)
        return self.search_vector(self._encode_texts([query.strip()])[0], k, target=target, nprobe=nprobe, ef_search=ef_search)

    def search_image(
        self, image: ImageInput, k: int = 10, *, target: Target = "image", nprobe: int | None = None, ef_search: int | None = None
    ) -> list[SearchHit]:
        """The ``k`` entries of ``target`` nearest to an image (a path, PIL image or encoded bytes), best
        first; ``k``, ``nprobe`` and ``ef_search`` as in :meth:`search_text`. An unreadable image
        raises, naming it."""
        k = _check_k(k)
        return self.search_vector(self._encode_images([image])[0], k, target=target, nprobe=nprobe, ef_search=ef_search)

    def search_vector(
        self, vector: np.ndarray, k: int = 10, *, target: Target = "image", nprobe: int | None = None, ef_search: int | None = None
    ) -> list[SearchHit]:
        """The ``k`` entries of ``target`` nearest to an embedding (normalised here), best first."""
        k = _check_k(k)
        if target not in ("image", "text", "all"):
            raise SearchIndexError(f"target must be 'image', 'text' or 'all', got {target!r}")
        q = np.asarray(vector, dtype=np.float32)
        if q.ndim != 1 and not (q.ndim == 2 and q.shape[0] == 1):
            raise SearchIndexError(f"search_vector takes one query vector, got an array of shape {q.shape}")
        q = q.reshape(1, -1)
        if q.shape[1] != self.manifest.model.embed_dim:
            raise SearchIndexError(f"a {q.shape[1]}-d query cannot search index {self.path}, which holds {self.manifest.model.embed_dim}-d vectors")
        if not np.isfinite(q).all():
            raise SearchIndexError("the query vector holds NaN or inf values")
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        kinds: tuple[Kind, ...] = MODALITIES if target == "all" else (target,)
        with self._lock:
            self.refresh()
            found: list[tuple[float, int]] = []
            for kind in kinds:
                scores, ids = self._vectors[kind].search(q, k, nprobe=nprobe, ef_search=ef_search)
                found += [(float(s), int(i)) for s, i in zip(scores[0], ids[0]) if i >= 0]
            found.sort(key=lambda x: (-x[0], x[1]))
            entries = self.store.lookup([i for _, i in found[:k]])
        return [SearchHit(i, e.kind, s, e.path, e.text, e.caption, e.added) for s, i in found[:k] if (e := entries.get(i))]

    # ------------------------------------------------------------------------------------ reads

    def entries(self, ids: Iterable[int] | None = None) -> list[Entry]:
        """Stored entries (all, or those with ``ids``), in id order."""
        wanted = self.store.all_ids() if ids is None else sorted({int(i) for i in ids})
        found = self.store.lookup(wanted)
        return [found[i] for i in wanted if i in found]

    def file_path(self, entry: Entry | str) -> Path:
        """The file an image entry (or a relative path) names, guaranteed to lie inside the collection root."""
        rel = entry.path if isinstance(entry, Entry) else entry
        if rel is None:
            raise SearchIndexError(f"entry {entry.id if isinstance(entry, Entry) else ''} is a text, not an image")
        return self.root.absolute(rel)

    def stats(self) -> IndexStats:
        disk = sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())
        with self._lock:
            self.refresh()
            vectors = {kind: self._vectors[kind].describe() for kind in MODALITIES}
        return IndexStats(
            path=str(self.path), root=self.manifest.root, model=self.manifest.model.to_dict(),
            images=self.store.count("image"), texts=self.store.count("text"),
            requested_kind=self.requested_kind, flat_max=self.flat_max, vectors=vectors,
            generation=self.store.generation(), created=self.manifest.created, disk_bytes=disk,
        )
