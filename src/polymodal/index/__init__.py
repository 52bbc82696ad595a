"""Cross-modal search: images and texts embedded by one model in FAISS, their metadata in SQLite.

    from polymodal.index import SearchIndex

    index = SearchIndex.create("idx", "runs/world_retrieval", root="photos/")
    index.add_images("photos/")                       # batched, resumable, unreadable files skipped
    index.add_texts(["a red cube", "two spheres"])
    index.search_text("a red cube left of a sphere", k=10)   # [SearchHit(id, kind, score, path, ...)]
    index.search_image("query.png", k=5, target="text")

    index = SearchIndex.open("idx")                   # its model is reloaded (and checked) when needed

The layout on disk, and why a crash never corrupts it, is described in
:mod:`polymodal.index.search_index`; the choice of FAISS index in :mod:`polymodal.index.vectors`.
"""

from polymodal.index.builder import AddReport
from polymodal.index.errors import ModelMismatch, SearchIndexError
from polymodal.index.manifest import ModelInfo, weights_fingerprint
from polymodal.index.search_index import IndexStats, SearchHit, SearchIndex
from polymodal.index.store import Entry
from polymodal.index.vectors import FLAT_MAX

__all__ = [
    "FLAT_MAX",
    "AddReport",
    "Entry",
    "IndexStats",
    "ModelInfo",
    "ModelMismatch",
    "SearchHit",
    "SearchIndex",
    "SearchIndexError",
    "weights_fingerprint",
]
