"""Torch datasets over ``Sample`` records: images decode in DataLoader workers, bad ones are counted.

A corrupt or missing image must never kill a long run, and must never vanish silently: the dataset
returns None for it, the collator drops it and reports how many it dropped in ``batch["num_skipped"]``,
and the trainer sums and logs that count.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from polymodal.data.images import open_image
from polymodal.data.media import MediaPlan, checked_missing_policy, collate_media, load_media
from polymodal.data.processors import ImageProcessor, consistent_hflip
from polymodal.data.sample import Sample
from polymodal.data.tokenizers import TextTokenizer
from polymodal.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class LoadedSample:
    sample: Sample
    image: torch.Tensor | None
    text: str | None
    answers: tuple[str, ...]
    media: dict[str, torch.Tensor] = field(default_factory=dict)  # audio / video / features by batch key
    image_present: bool = True  # False: the sample has no image and ``image`` is zeros (missing_modality zero / learned)


def open_or_skip(sample: Sample, processor: Any = None) -> Image.Image | None:
    """The sample's image, or None (with a warning naming it) when it cannot be read: the collator
    counts the Nones, so a bad image is skipped and reported, never fatal and never silent. With the
    ``processor`` that will receive it, a JPEG is decoded no larger than that processor needs, and an
    image already in the processor's decoded-image cache is not read again."""
    source = sample.image_bytes if sample.image_bytes is not None else sample.image_path
    cache = getattr(processor, "decoded", None) if sample.image_bytes is None else None
    if cache is not None and (cached := cache.get(source)) is not None:
        return cached
    try:
        draft = getattr(processor, "draft_size", None)  # a checkpoint's own (Hugging Face) processor has none
        img = open_image(source, name=sample.origin or None, draft=draft)
    except DataError as e:
        log.warning("skipping %s: %s", sample.origin or sample.sample_id, e)
        return None
    if cache is not None:
        cache.put(source, img)
    return img


# the first sample of each source skipped for want of an image is named; later ones are only counted
_named_imageless: set[str] = set()


def _note_skipped_imageless(sample: Sample) -> None:
    where = sample.origin or sample.sample_id
    source = where.rsplit(":", 1)[0]
    if source in _named_imageless:
        log.debug("skipping %s: no image (missing_modality: skip)", where)
        return
    _named_imageless.add(source)
    log.warning(
        "%s has no image, and the model reads one: skipped (missing_modality: skip; 'zero' or 'learned' keep such "
        "samples with a stand-in). Further samples of %s without an image are counted with the skipped samples, not named.",
        where, source,
    )


def _load(
    sample: Sample,
    image_processor: ImageProcessor | None,
    flip_prob: float,
    rng: np.random.Generator | None,
    media: MediaPlan | None = None,
    missing_image: str | None = None,
) -> LoadedSample | None:
    """One sample decoded and processed; ``rng`` is None only when nothing is random (no flip, no augmentation, no media).

    ``missing_image`` is the run's ``missing_modality`` policy when the model reads every sample's image: a
    sample without one is then skipped (None, counted by the collator) or given zeros flagged absent, as a
    missing sound or clip is. Without it, a batch mixing rows with and without images would reach the
    model with no images at all."""
    text, answers, pixels = sample.text, sample.answers, None
    loaded_media: dict[str, torch.Tensor] = {}
    if media is not None and not media.empty:
        found = load_media(sample, media, rng)
        if found is None:
            return None
        loaded_media = found
        if "image" in found:  # a clip or a sound is this sample's non-text input (the image tower's place)
            return LoadedSample(sample, found.pop("image"), text, tuple(answers), found)
    if image_processor is not None and sample.has_image:
        img = open_or_skip(sample, image_processor)
        if img is None:
            return None
        if flip_prob > 0 and rng.random() < flip_prob:
            flipped = consistent_hflip(img, text, answers)
            img, text, answers = flipped.image, flipped.text, flipped.answers
        pixels = image_processor(img, rng)
    elif image_processor is not None and missing_image is not None:
        if missing_image == "skip":
            _note_skipped_imageless(sample)
            return None
        blank = image_processor(Image.new("RGB", (8, 8)), rng)  # only its shape: the processor's output size
        return LoadedSample(sample, torch.zeros_like(blank), text, tuple(answers), loaded_media, image_present=False)
    return LoadedSample(sample, pixels, text, tuple(answers), loaded_media)


class SampleDataset(Dataset):
    """Map-style dataset over a list of samples (COCO, VQA, Karpathy, JSONL, image folders ...)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        image_processor: ImageProcessor | None,
        flip_prob: float = 0.0,
        seed: int = 0,
        media: MediaPlan | None = None,
        missing_image: str | None = None,
    ) -> None:
        self.samples = samples
        self.image_processor = image_processor
        self.flip_prob = flip_prob
        self.seed = seed
        self.media = media
        self.missing_image = checked_missing_policy(missing_image)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def _draws(self) -> bool:
        """Whether loading a sample draws any random number (evaluation draws none)."""
        augments = self.image_processor is not None and getattr(self.image_processor, "train", True)
        return self.flip_prob > 0 or augments or (self.media is not None and not self.media.empty)

    def __getitem__(self, index: int) -> LoadedSample | None:
        # a generator per (seed, index) makes augmentation resumable, but building one is a large part of a
        # small image's load (64 px PNG, eval: 286 vs 232 us per image): evaluation, which draws nothing, skips it
        rng = np.random.default_rng([self.seed, index]) if self._draws else None
        return _load(self.samples[index], self.image_processor, self.flip_prob, rng, self.media, self.missing_image)


class StreamingSampleDataset(IterableDataset):
    """Iterable dataset over a streamed source (WebDataset shards); each worker takes every k-th sample."""

    def __init__(
        self, samples: Callable[[], Iterable[Sample]], image_processor: ImageProcessor | None, flip_prob: float = 0.0, seed: int = 0,
        media: MediaPlan | None = None,
        missing_image: str | None = None,
    ) -> None:
        self.samples = samples
        self.image_processor = image_processor
        self.flip_prob = flip_prob
        self.seed = seed
        self.media = media
        self.missing_image = checked_missing_policy(missing_image)

    def __iter__(self) -> Iterator[LoadedSample | None]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        rng = np.random.default_rng([self.seed, wid])
        for i, sample in enumerate(self.samples()):
            if i % nw == wid:
                yield _load(sample, self.image_processor, self.flip_prob, rng, self.media, self.missing_image)


class Collator:
    """Stack images, pad audio / video / features, tokenise texts in one batched call, and count
    what was skipped."""

    def __init__(self, tokenizer: TextTokenizer | None, max_length: int = 32, media: MediaPlan | None = None) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.media = media

    def __call__(self, items: list[LoadedSample | None]) -> dict[str, Any]:
        kept = [it for it in items if it is not None]
        batch: dict[str, Any] = {"num_skipped": len(items) - len(kept), "samples": [it.sample for it in kept]}
        if not kept:
            return batch
        if all(it.image is not None for it in kept):
            batch["image"] = torch.stack([it.image for it in kept])  # type: ignore[misc]
        if self.media is not None and not self.media.empty:
            collate_media([it.media for it in kept], self.media, batch)
        absent = sum(not it.image_present for it in kept)
        if absent:  # zero-filled images: the model's missing-modality policy decides what they mean
            batch["image_present"] = torch.tensor([it.image_present for it in kept])
            batch["num_missing"] = {**batch.get("num_missing", {}), "image": absent}
        texts = [it.text for it in kept]
        if self.tokenizer is not None and all(t is not None for t in texts):
            enc = self.tokenizer.encode(texts, self.max_length)  # type: ignore[arg-type]
            batch["text_ids"], batch["text_mask"] = enc.input_ids, enc.attention_mask
        batch["text"] = texts
        batch["answers"] = [it.answers for it in kept]
        labels = [it.sample.label for it in kept]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in labels):
            batch["label"] = torch.tensor(labels)
        else:
            batch["label"] = labels
        return batch
