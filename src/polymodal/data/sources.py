"""Typed data-source specs: how a user points polymodal at their own files without writing code.

A source in a YAML config is a mapping with a ``format`` key and that format's fields, e.g.
``{format: vqa_v2, questions: q.json, annotations: a.json, images: imgs/}``. Relative paths are
resolved against the directory of the config file that names them, so configs are portable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PositiveInt


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def resolved(self, base_dir: Path) -> "_Spec":
        """Return a copy whose relative paths are anchored at ``base_dir`` (the config's folder)."""
        updates = {}
        for name, value in self:
            if isinstance(value, Path) and not value.is_absolute():
                updates[name] = (base_dir / value).resolve()
        return self.model_copy(update=updates)


class CocoCaptionsSource(_Spec):
    """``captions_*.json`` with ``images`` (id, file_name) and ``annotations`` (image_id, caption)."""

    format: Literal["coco_captions"]
    annotations: Path
    images: Path


class VqaV2Source(_Spec):
    """VQA v2: questions JSON + annotations JSON (10 answers each); annotations absent for test-dev."""

    format: Literal["vqa_v2"]
    questions: Path
    annotations: Path | None = None
    images: Path
    data_subtype: str | None = Field(
        default=None, description="e.g. train2014; read from the questions file when not given"
    )
    image_template: str | None = Field(
        default=None,
        description="file name pattern such as '{split}_{image_id:06d}.png'; default is the COCO "
        "convention 'COCO_{data_subtype}_{image_id:012d}.jpg'",
    )


class ClevrSource(_Spec):
    """CLEVR questions JSON (``questions``: image_filename, question, answer, program)."""

    format: Literal["clevr"]
    questions: Path
    images: Path


class ScenesSource(_Spec):
    """Scene graphs (CLEVR ``*_scenes.json`` layout): per image, objects with attributes and centres."""

    format: Literal["scenes"]
    path: Path
    images: Path
    image_size: tuple[PositiveInt, PositiveInt] | None = Field(
        default=None, description="[width, height] of the images, needed when objects give CLEVR's pixel_coords"
    )


class GqaSource(_Spec):
    """GQA questions JSON keyed by question id, each with imageId, question and answer."""

    format: Literal["gqa"]
    questions: Path
    images: Path


class CcTsvSource(_Spec):
    """Conceptual-Captions-style TSV: caption<TAB>image (path or URL resolved to a local file)."""

    format: Literal["cc_tsv"]
    path: Path
    images: Path | None = Field(default=None, description="folder holding the downloaded images")
    url_map: Path | None = Field(default=None, description="optional TSV: url<TAB>local file")
    has_header: bool = False


class KarpathySource(_Spec):
    """Karpathy split JSON (dataset_coco.json / dataset_flickr30k.json style)."""

    format: Literal["karpathy"]
    path: Path
    images: Path
    split: Literal["train", "val", "test", "restval", "all"] = "all"
    restval_as_train: bool = True


class TableSource(_Spec):
    """One row per sample in JSONL or CSV; column names are configurable."""

    format: Literal["jsonl", "csv"]
    path: Path
    root: Path | None = Field(default=None, description="folder that relative media paths start from")
    id_field: str | None = None
    image_field: str | None = "image"
    text_field: str | None = "text"
    label_field: str | None = "label"
    answers_field: str | None = None
    audio_field: str | None = None
    video_field: str | None = None


class MosiSource(_Spec):
    """CMU-MOSI / MOSEI aligned-feature pickle (MMSA or MultiBench layout): one split per source."""

    format: Literal["mosi"]
    path: Path
    split: Literal["train", "val", "test"] = Field(
        description="which split of the pickle to read; the pickle's 'valid' is our 'val'"
    )
    layout: Literal["auto", "mmsa", "multibench"] = Field(
        default="auto",
        description="'mmsa' (regression_labels, audio_lengths ...), 'multibench' (labels [N, 1, 1]) or "
        "'auto' (decided by the keys of the split)",
    )
    max_length: int | None = Field(
        default=None, gt=0, description="keep at most this many frames per modality (after padding is removed)"
    )


class LlavaSource(_Spec):
    """LLaVA conversation JSON: ``[{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}]}]``."""

    format: Literal["llava"]
    path: Path
    images: Path = Field(description="folder that the records' 'image' paths start from (LLaVA's --image_folder)")


class ImageFolderSource(_Spec):
    """``root/<class name>/<image>``: the class of each image is its sub-folder."""

    format: Literal["image_folder"]
    root: Path
    extensions: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")


class WebDatasetSource(_Spec):
    """WebDataset tar shards, streamed: ``urls`` is a path, a brace pattern or a list of paths."""

    format: Literal["webdataset"]
    urls: str | list[str]
    image_keys: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
    text_keys: tuple[str, ...] = ("txt", "caption")
    label_keys: tuple[str, ...] = ("cls", "label")
    json_key: str = "json"

    def resolved(self, base_dir: Path) -> "WebDatasetSource":
        urls = [self.urls] if isinstance(self.urls, str) else list(self.urls)
        # URLs and pipe: commands are not paths: leave them for the reader to explain
        anchored = [u if Path(u).is_absolute() or "://" in u or u.startswith("pipe:") else str((base_dir / u).resolve()) for u in urls]
        return self.model_copy(update={"urls": anchored if isinstance(self.urls, list) else anchored[0]})


DataSource = Annotated[
    Union[
        CocoCaptionsSource,
        VqaV2Source,
        ClevrSource,
        GqaSource,
        ScenesSource,
        CcTsvSource,
        KarpathySource,
        TableSource,
        MosiSource,
        LlavaSource,
        ImageFolderSource,
        WebDatasetSource,
    ],
    Field(discriminator="format"),
]

FORMAT_NAMES: tuple[str, ...] = (
    "coco_captions",
    "vqa_v2",
    "clevr",
    "gqa",
    "scenes",
    "cc_tsv",
    "karpathy",
    "jsonl",
    "csv",
    "mosi",
    "llava",
    "image_folder",
    "webdataset",
)
