"""``entries.sqlite``: the source of truth of an index: every entry's metadata **and its vector**.

Why the vectors live here too: FAISS files cannot be updated in place atomically, so they are a cache
that can always be rebuilt from this file. Each write (a batch of adds, a delete) is one SQLite
transaction that bumps a **generation** counter; every row remembers the generation that added it, and
every deleted id leaves a *tombstone* with the generation that deleted it. A FAISS file records the
generation it reflects, so a file that fell behind (a kill between the commit and the file's rename)
catches up with just the rows and tombstones newer than it, and a missing or damaged one is rebuilt.

Ids are SQLite ``AUTOINCREMENT`` row ids, which are also the FAISS ids, and are never reused, so a
stale FAISS file can never confuse a deleted entry with a new one.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from polymodal.index.errors import SearchIndexError

__all__ = ["STORE_FILE", "Entry", "ImageRecord", "NewEntry", "Store"]

STORE_FILE = "entries.sqlite"
Kind = Literal["image", "text"]
_CHUNK = 500  # ids per "IN (...)" query, well under SQLite's variable limit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,      -- also the FAISS id; never reused
    kind      TEXT NOT NULL CHECK (kind IN ('image', 'text')),
    key       TEXT NOT NULL,                          -- image: path relative to the root; text: the text
    caption   TEXT,                                   -- images only, optional
    checksum  TEXT NOT NULL,                          -- sha256 of the file's bytes or the text's UTF-8
    size      INTEGER,                                -- images: bytes and mtime, to skip unchanged files
    mtime_ns  INTEGER,                                --   on a re-run without reading them
    added     REAL NOT NULL,                          -- unix time
    gen       INTEGER NOT NULL,                       -- the generation that added it
    vector    BLOB NOT NULL,                          -- float32, L2-normalised
    UNIQUE (kind, key)
);
CREATE INDEX IF NOT EXISTS entries_kind_gen ON entries (kind, gen);
CREATE TABLE IF NOT EXISTS tombstones (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, gen INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS tombstones_kind_gen ON tombstones (kind, gen);
"""


@dataclass(frozen=True)
class Entry:
    """One indexed item as stored: an image (``path`` relative to the root) or a text."""

    id: int
    kind: Kind
    path: str | None
    text: str | None  # the text of a text entry; None for images
    caption: str | None
    checksum: str
    added: float


@dataclass(frozen=True)
class ImageRecord:
    """What a re-run needs to decide whether an image file changed."""

    id: int
    checksum: str
    size: int | None
    mtime_ns: int | None


@dataclass(frozen=True)
class NewEntry:
    """A row to insert (its id is given by SQLite)."""

    kind: Kind
    key: str
    checksum: str
    vector: np.ndarray
    caption: str | None = None
    size: int | None = None
    mtime_ns: int | None = None


def _chunks(items: Sequence[object]) -> Iterator[Sequence[object]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


class Store:
    """One SQLite connection (WAL, full sync) guarded by a lock, so server threads may share it."""

    def __init__(self, path: Path, dim: int, *, create: bool = False) -> None:
        if not create and not path.is_file():
            raise SearchIndexError(f"{path} is missing; the index folder {path.parent} is incomplete")
        self.path, self.dim = path, dim
        self._lock = threading.RLock()
        try:
            self.conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            if create:
                self.conn.executescript(_SCHEMA)
                with self.transaction():
                    self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('generation', '0')")
            self.generation()
        except sqlite3.DatabaseError as e:
            raise SearchIndexError(f"{path} is not a readable SQLite database ({e}); the index is damaged") from None

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    # ------------------------------------------------------------------------------ transactions

    def transaction(self) -> _Transaction:
        """``with store.transaction():`` BEGIN IMMEDIATE ... COMMIT, rolled back on any exception (Ctrl-C too)."""
        return _Transaction(self)

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """A read transaction: every read inside sees the same committed state (WAL), however many
        statements it takes, so a writer committing meanwhile cannot make a catch-up see half of it."""
        with self._lock:
            nested = self.conn.in_transaction
            if not nested:
                self.conn.execute("BEGIN DEFERRED")
            try:
                yield
            finally:
                if not nested and self.conn.in_transaction:
                    self.conn.execute("COMMIT")

    def generation(self) -> int:
        with self._lock:
            row = self.conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        if row is None:
            raise SearchIndexError(f"{self.path} has no generation counter; the index is damaged")
        return int(row[0])

    def _bump(self) -> int:
        gen = self.generation() + 1
        self.conn.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (str(gen),))
        return gen

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        with self._lock:
            row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction():
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # ------------------------------------------------------------------------------------ writes

    def add(self, rows: Sequence[NewEntry], replaced: Sequence[int] = ()) -> tuple[int, list[int]]:
        """Insert ``rows`` and delete ``replaced`` ids in one transaction; ``(generation, new ids)``."""
        now = time.time()
        with self.transaction():
            gen = self._bump()
            self._delete(replaced, gen)
            ids = []
            for r in rows:
                vec = np.ascontiguousarray(r.vector, dtype=np.float32)
                if vec.shape != (self.dim,):
                    raise SearchIndexError(f"a vector of shape {vec.shape} cannot go into a {self.dim}-d index")
                cur = self.conn.execute(
                    "INSERT INTO entries (kind, key, caption, checksum, size, mtime_ns, added, gen, vector)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (r.kind, r.key, r.caption, r.checksum, r.size, r.mtime_ns, now, gen, vec.tobytes()),
                )
                ids.append(int(cur.lastrowid or 0))
        return gen, ids

    def delete(self, ids: Sequence[int]) -> int:
        """Delete entries (each leaves a tombstone); the new generation."""
        with self.transaction():
            gen = self._bump()
            self._delete(ids, gen)
        return gen

    def _delete(self, ids: Sequence[int], gen: int) -> None:
        for part in _chunks(list(ids)):
            marks = ",".join("?" * len(part))
            self.conn.execute(f"INSERT OR REPLACE INTO tombstones SELECT id, kind, ? FROM entries WHERE id IN ({marks})", (gen, *part))
            self.conn.execute(f"DELETE FROM entries WHERE id IN ({marks})", tuple(part))

    def touch(self, entry_id: int, size: int, mtime_ns: int) -> None:
        """Record a file's new size/mtime when its bytes did not change (so the next run skips it faster)."""
        with self.transaction():
            self.conn.execute("UPDATE entries SET size = ?, mtime_ns = ? WHERE id = ?", (size, mtime_ns, entry_id))

    def prune_tombstones(self, kind: Kind, upto_gen: int) -> None:
        """Forget tombstones a saved FAISS file of ``kind`` at ``upto_gen`` no longer needs."""
        with self.transaction():
            self.conn.execute("DELETE FROM tombstones WHERE kind = ? AND gen <= ?", (kind, upto_gen))

    # ------------------------------------------------------------------------------------- reads

    def count(self, kind: Kind | None = None) -> int:
        with self._lock:
            if kind is None:
                return int(self.conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0])
            return int(self.conn.execute("SELECT COUNT(*) FROM entries WHERE kind = ?", (kind,)).fetchone()[0])

    def image_records(self, paths: Sequence[str]) -> dict[str, ImageRecord]:
        out: dict[str, ImageRecord] = {}
        with self._lock:
            for part in _chunks(list(paths)):
                q = f"SELECT key, id, checksum, size, mtime_ns FROM entries WHERE kind = 'image' AND key IN ({','.join('?' * len(part))})"
                for key, i, checksum, size, mtime in self.conn.execute(q, tuple(part)):
                    out[key] = ImageRecord(int(i), checksum, size, mtime)
        return out

    def existing_texts(self, texts: Sequence[str]) -> set[str]:
        out: set[str] = set()
        with self._lock:
            for part in _chunks(list(texts)):
                q = f"SELECT key FROM entries WHERE kind = 'text' AND key IN ({','.join('?' * len(part))})"
                out.update(k for (k,) in self.conn.execute(q, tuple(part)))
        return out

    def find(self, kind: Kind, key: str) -> int | None:
        with self._lock:
            row = self.conn.execute("SELECT id FROM entries WHERE kind = ? AND key = ?", (kind, key)).fetchone()
        return None if row is None else int(row[0])

    def lookup(self, ids: Iterable[int]) -> dict[int, Entry]:
        out: dict[int, Entry] = {}
        with self._lock:
            for part in _chunks([int(i) for i in ids]):
                q = f"SELECT id, kind, key, caption, checksum, added FROM entries WHERE id IN ({','.join('?' * len(part))})"
                for i, kind, key, caption, checksum, added in self.conn.execute(q, tuple(part)):
                    image = kind == "image"
                    out[int(i)] = Entry(int(i), kind, key if image else None, None if image else key, caption, checksum, float(added))
        return out

    def vectors(self, kind: Kind, since_gen: int = -1, batch: int = 65536) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(ids int64 [n], vectors float32 [n, dim])`` chunks of ``kind`` added after ``since_gen``, in id order."""
        out = []
        with self._lock:
            cur = self.conn.execute("SELECT id, vector FROM entries WHERE kind = ? AND gen > ? ORDER BY id", (kind, since_gen))
            while rows := cur.fetchmany(batch):
                ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
                vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
                if vecs.size != len(rows) * self.dim:
                    raise SearchIndexError(f"{self.path}: a stored vector is not {self.dim} float32 values; the index is damaged")
                out.append((ids, vecs.reshape(len(rows), self.dim)))
        return out

    def tombstones(self, kind: Kind, since_gen: int) -> list[int]:
        with self._lock:
            return [int(i) for (i,) in self.conn.execute("SELECT id FROM tombstones WHERE kind = ? AND gen > ?", (kind, since_gen))]

    def all_ids(self, kind: Kind | None = None) -> list[int]:
        with self._lock:
            if kind is None:
                return [int(i) for (i,) in self.conn.execute("SELECT id FROM entries ORDER BY id")]
            return [int(i) for (i,) in self.conn.execute("SELECT id FROM entries WHERE kind = ? ORDER BY id", (kind,))]


class _Transaction:
    def __init__(self, store: Store) -> None:
        self.store = store

    def __enter__(self) -> None:
        self.store._lock.acquire()
        try:
            self.store.conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.store._lock.release()
            raise

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        conn = self.store.conn
        try:
            if exc_type is None:
                try:
                    conn.execute("COMMIT")
                except sqlite3.Error as e:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise SearchIndexError(f"{self.store.path}: cannot commit the write ({e})") from None
            elif conn.in_transaction:
                conn.execute("ROLLBACK")
        finally:
            self.store._lock.release()
