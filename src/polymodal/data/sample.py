"""The one record every data format produces, so models and tasks never see a format's quirks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


@dataclass(frozen=True)
class Sample:
    """One example: an image (by path or bytes) with a text and its targets.

    Images are referenced, not decoded: decoding happens in DataLoader workers so that reading a
    format's index stays fast and memory-light even for millions of records.

    Attributes:
        sample_id: unique within a source (caption id, question id, row number ...).
        origin: where the record came from, as ``file:record`` - used in every error message.
        image_path: local image file, or None when the image travels as ``image_bytes``.
        image_bytes: encoded image bytes (WebDataset shards stream images without touching disk).
        image_id: groups several texts of one image (retrieval counts a hit on any of its captions).
        text: a caption, a question or a statement.
        answers: the human answers of a VQA question (VQA v2: 10), or the single answer of CLEVR/GQA.
        label: a class name / index or a regression target.
        audio_path, video_path: optional further modalities.
        features: pre-extracted feature sequences per modality (``{"audio": [T, F] array, ...}``), as the
            CMU-MOSI/MOSEI pickles ship them; a modality given here needs no file and no decoding.
        conversation: a multi-turn dialogue about the image(s) as ``(role, text)`` pairs, role ``user`` or
            ``assistant`` (the LLaVA conversation layout); ``<image>`` in a user turn marks where an image goes.
        more_images: the second and later images of a conversation about several images (the first is
            ``image_path``), in the order of their ``<image>`` markers.
        split: train / val / test / ... when the format knows it.
        meta: format-specific extras (question family, answer type, template id, held-out flag ...).
    """

    sample_id: str
    origin: str = ""
    image_path: Path | None = None
    image_bytes: bytes | None = None
    image_id: str | None = None
    text: str | None = None
    answers: tuple[str, ...] = ()
    label: str | int | float | None = None
    audio_path: Path | None = None
    video_path: Path | None = None
    split: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    features: Mapping[str, Any] = field(default_factory=dict)
    conversation: tuple[tuple[str, str], ...] = ()
    more_images: tuple[Path, ...] = ()

    @property
    def image_key(self) -> str:
        """What identifies this sample's image: its image_id, or the sample itself when there is none."""
        return self.image_id or self.sample_id

    @property
    def has_image(self) -> bool:
        return self.image_path is not None or self.image_bytes is not None

    @property
    def has_media(self) -> bool:
        """An image, a video clip or a sound: what the non-text tower of an image-text model takes."""
        return self.has_image or self.video_path is not None or self.audio_path is not None
