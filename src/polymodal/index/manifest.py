"""``index.json``: what an index was built with, so it is never searched with another model.

Vectors from two models live in unrelated spaces: a query embedded by model B against images embedded
by model A returns confident nonsense. So an index records its model (where it came from, its type, its
embedding size), a **fingerprint of the weights** (sha256 over every state-dict tensor's name, dtype,
shape and bytes; a copy of the same run in another folder matches, one more training step does not),
and the **preprocessing** (the image processor's settings, and a digest of how the tokenizer encodes a
fixed set of probe texts, which covers the vocabulary, max_length and padding). Opening the index with a
model that differs in any of these is refused with a message naming both.

The manifest is written once, when the index is created (temp file + rename), and never changes.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

import polymodal
from polymodal.api import Processors
from polymodal.atomic import write_text
from polymodal.index.errors import ModelMismatch, SearchIndexError

__all__ = ["FORMAT", "MANIFEST_FILE", "VERSION", "Manifest", "ModelInfo", "describe_model", "weights_fingerprint"]

FORMAT = "polymodal-search-index"
VERSION = 1
MANIFEST_FILE = "index.json"
# Texts whose token ids stand for "how this tokenizer encodes"; the long one exercises truncation.
PROBE_TEXTS = (
    "a red cube left of a small blue sphere.",
    "Two GREEN cones, a metal cylinder; 3 objects?",
    "un cube rouge à gauche d'une sphère 🙂 東京",
    " ".join(["many words"] * 200),
)


def weights_fingerprint(model: nn.Module) -> str:
    """``sha256:<hex>`` over the state dict (sorted names, each with its dtype, shape and raw bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"sha256:{h.hexdigest()}"


def _tokenizer_digest(processors: Processors) -> str | None:
    if processors.tokenizer is None:
        return None
    ids, mask = processors.texts(list(PROBE_TEXTS))
    h = hashlib.sha256(f"{tuple(ids.shape)}\0".encode())
    h.update(ids.to(torch.int64).numpy().tobytes())
    h.update(mask.to(torch.int64).numpy().tobytes())
    return f"sha256:{h.hexdigest()}"


@dataclass(frozen=True)
class ModelInfo:
    """The identity of the model whose embeddings an index holds."""

    source: str  # where to load it from (an absolute checkpoint folder, or a zoo / hub name)
    model_type: str
    fingerprint: str  # weights_fingerprint
    embed_dim: int
    image_preprocessing: dict[str, Any]
    text_max_length: int
    tokenizer_digest: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> ModelInfo:
        try:
            return cls(
                source=str(d["source"]),
                model_type=str(d["model_type"]),
                fingerprint=str(d["fingerprint"]),
                embed_dim=int(d["embed_dim"]),
                image_preprocessing=dict(d["image_preprocessing"]),
                text_max_length=int(d["text_max_length"]),
                tokenizer_digest=d.get("tokenizer_digest"),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise SearchIndexError(f"{where}: the 'model' record is malformed ({e!r}); the index was not written by this polymodal") from None


def _plain(x: Any) -> Any:
    """JSON's view of a value (tuples become lists), so a fresh dict compares equal to a stored one."""
    return json.loads(json.dumps(x, default=str))


def describe_model(model: nn.Module, processors: Processors, source: str) -> ModelInfo:
    """The :class:`ModelInfo` of a loaded model; its embedding size is measured on a blank image."""
    from polymodal.predict import WrongModelType, model_type_of, require_model_type

    model_type = model_type_of(model, processors)
    try:
        require_model_type(model_type, "rank-images", processors.source)
    except WrongModelType as e:
        raise SearchIndexError(f"a search index needs a model with image and text embeddings: {e}") from None
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    with torch.no_grad():  # the processor resizes the blank image to whatever the model expects
        dim = int(model.encode_image(processors.images([Image.new("RGB", (64, 64))]).to(device)).shape[-1])
    return ModelInfo(
        source=source,
        model_type=model_type,
        fingerprint=weights_fingerprint(model),
        embed_dim=dim,
        image_preprocessing=_plain(processors.image.to_dict()),
        text_max_length=int(processors.max_length),
        tokenizer_digest=_tokenizer_digest(processors),
    )


@dataclass(frozen=True)
class Manifest:
    """Everything fixed at creation: the model, the collection root, when and by which version."""

    root: str
    model: ModelInfo
    created: str
    polymodal_version: str

    @classmethod
    def new(cls, root: Path, model: ModelInfo) -> Manifest:
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        return cls(str(root), model, now, polymodal.__version__)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "root": self.root, "model": self.model.to_dict(),
                "created": self.created, "polymodal_version": self.polymodal_version}

    def write(self, folder: Path) -> None:
        write_text(folder / MANIFEST_FILE, json.dumps(self.to_dict(), indent=1, ensure_ascii=False), durable=True)

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        path = folder / MANIFEST_FILE
        if not folder.is_dir():
            raise SearchIndexError(f"index folder not found: {folder}")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SearchIndexError(f"{folder} is not a search index: it has no {MANIFEST_FILE} (build one with 'polymodal index build')") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SearchIndexError(f"{path} is unreadable ({e}); the index is damaged") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise SearchIndexError(f"{path} is not a polymodal search index manifest (expected format {FORMAT!r})")
        if d.get("version") != VERSION:
            raise SearchIndexError(f"{path} has index format version {d.get('version')!r}; this polymodal reads version {VERSION}")
        try:
            return cls(str(d["root"]), ModelInfo.from_dict(d["model"], str(path)), str(d["created"]), str(d["polymodal_version"]))
        except KeyError as e:
            raise SearchIndexError(f"{path} lacks the field {e}; the index is damaged") from None

    def check_model(self, other: ModelInfo, index: Path) -> None:
        """Raise :class:`ModelMismatch` unless ``other`` embeds exactly as the model the index was built with."""
        mine = self.model
        fix = (f"build a new index for it ('polymodal index build --model {other.source} ...'), "
               f"or use the index's model ({mine.source})")
        if other.fingerprint != mine.fingerprint or other.embed_dim != mine.embed_dim:
            raise ModelMismatch(
                f"index {index} was built with model {mine.source} ({mine.model_type}, {mine.embed_dim}-d, "
                f"fingerprint {mine.fingerprint[:23]}); this is model {other.source} ({other.model_type}, "
                f"{other.embed_dim}-d, fingerprint {other.fingerprint[:23]}); its vectors would not be comparable. {fix}"
            )
        changed = [name for name, a, b in (
            ("image preprocessing", mine.image_preprocessing, other.image_preprocessing),
            ("text max_length", mine.text_max_length, other.text_max_length),
            ("tokenizer", mine.tokenizer_digest, other.tokenizer_digest),
        ) if a != b]
        if changed:
            diff = ""
            if "image preprocessing" in changed:
                keys = sorted(k for k in set(mine.image_preprocessing) | set(other.image_preprocessing)
                              if mine.image_preprocessing.get(k) != other.image_preprocessing.get(k))
                diff = " (" + ", ".join(f"{k}: {mine.image_preprocessing.get(k)!r} -> {other.image_preprocessing.get(k)!r}" for k in keys) + ")"
            raise ModelMismatch(
                f"index {index} was built with model {mine.source}, whose weights match {other.source}, but the "
                f"{' and '.join(changed)} differ{diff}; the embeddings would not be comparable. {fix}"
            )
