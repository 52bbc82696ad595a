"""Training data: read the configured sources, keep what the task uses, and load it resumably.

The sampler draws a fixed permutation per (seed, epoch) and can start part-way through it, so a
resumed run sees exactly the batches the interrupted run would have seen next, without replaying
the ones before. The training loader is built once per run: its workers persist across epochs, and
each index carries its epoch's seed to them.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from polymodal.config import DataConfig, ImageSettings, RunConfig
from polymodal.data.dataset import Collator, SampleDataset
from polymodal.data.media import MediaPlan
from polymodal.data.images import DecodedImageCache
from polymodal.data.processors import ImageProcessor, ImageProcessorConfig
from polymodal.data.sample import Sample
from polymodal.data.selection import select_samples
from polymodal.data.tokenizers import TextTokenizer
from polymodal.errors import DataError
from polymodal.tasks.base import Task

log = logging.getLogger(__name__)


def load_split(data: DataConfig, split: str, task: Task) -> list[Sample]:
    """All samples of a split that the task trains on; skipped records are counted in the log."""
    return select_samples(getattr(data, split), task, split)[0]


def require(samples: Sequence[Sample], split: str, task: Task) -> None:
    if not samples:
        raise DataError(
            f"the {split} split has no samples for the {task.name} task: check data.{split} in the config "
            f"(a {task.name} task needs {'captions' if task.name in ('retrieval', 'captioning') else 'questions with answers' if task.name == 'vqa' else 'labelled rows'})"
        )


class ResumableSampler(Sampler[int]):
    """A seeded permutation per epoch that can start at any position (for mid-epoch resume).

    Under DDP every rank draws the same permutation and takes every ``world_size``-th index from
    ``rank``: batch k of all ranks together is then exactly batch k of a single process whose batch
    is ``world_size`` times larger. The permutation is padded by repetition to a multiple of
    ``world_size`` so all ranks take the same number of steps (as torch's DistributedSampler does).
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start = 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    @property
    def shard_size(self) -> int:
        return -(-self.size // self.world_size)

    def order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        padded = order + order[: self.shard_size * self.world_size - self.size]
        return padded[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start :])

    def __len__(self) -> int:
        return self.shard_size - self.start


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed a training item's augmentation and text choice are drawn with in ``epoch``."""
    return seed * 1000 + epoch


class EpochSeededSampler(Sampler[tuple[int, int]]):
    """``(epoch seed, index)`` pairs in the order of a :class:`ResumableSampler`, from its current position."""

    def __init__(self, sampler: ResumableSampler, seed: int) -> None:
        self.sampler, self.seed = sampler, seed

    def __iter__(self) -> Iterator[tuple[int, int]]:
        seed = epoch_seed(self.seed, self.sampler.epoch)
        return ((seed, i) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class EpochSeededDataset(Dataset):
    """A training dataset indexed by ``(epoch seed, index)``.

    A persistent worker keeps its own copy of the dataset for the whole run, so an epoch seed set on
    the main process's copy would never reach it. The seed travels with each index instead, and every
    item is drawn exactly as a loader built for that epoch alone would draw it (the resume tests
    depend on that)."""

    def __init__(self, dataset: Any) -> None:
        if not hasattr(dataset, "seed"):
            raise TypeError(f"{type(dataset).__name__}: a training dataset must draw its items with a 'seed' attribute (per (seed, index))")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        seed, index = key
        self.dataset.seed = seed
        return self.dataset[index]


def image_processor(settings: ImageSettings, train: bool, seed: int = 0, base: Mapping[str, Any] | None = None) -> ImageProcessor:
    """The run's image processor. ``base``: a saved processor's settings (a run started ``init_from``
    another keeps its resize, crop and normalisation); ``settings`` then add the augmentation."""
    if base is not None:
        geometry = ImageProcessor.from_dict(base).config
    else:
        geometry = ImageProcessorConfig(size=settings.size, mean=settings.mean, std=settings.std)
    cfg = dataclasses.replace(
        geometry,
        jpeg_draft=settings.jpeg_draft,  # a decoding-speed choice: init_run records the run's in the settings unless they set one
        random_resized_crop=settings.random_resized_crop if train else None,
        brightness=settings.brightness if train else 0.0,
        contrast=settings.contrast if train else 0.0,
    )
    decoded = DecodedImageCache(settings.cache_mb * 2**20) if train and settings.cache_mb else None
    return ImageProcessor(cfg, train=train, seed=seed, decoded=decoded)


def media_plan(cfg: RunConfig, model_config: object, train: bool, image_base: Mapping[str, Any] | None = None) -> MediaPlan | None:
    """How to decode the audio / video / feature inputs that ``model_config`` reads (None: it reads none);
    ``image_base`` as for :func:`image_processor` (video frames are processed as images)."""
    from polymodal.models.inputs import model_inputs

    inputs = model_inputs(model_config)
    if inputs.empty:
        return None
    audio = video = None
    if inputs.audio:
        from polymodal.data.audio import AudioProcessor, AudioProcessorConfig

        settings = cfg.audio.model_dump() | ({"pad_to_max": True} if inputs.audio_key == "image" else {})  # a tower without a mask
        audio = AudioProcessor(AudioProcessorConfig(**settings), train=train)
    if inputs.video_key:
        from polymodal.data.video import VideoProcessor, VideoProcessorConfig

        frames = image_processor(cfg.image, train, base=image_base).config
        video = VideoProcessor(VideoProcessorConfig(**cfg.video.model_dump(), image=frames), train=train)
    return MediaPlan(
        audio=audio, video=video, features=inputs.features, video_key=inputs.video_key or "video", audio_key=inputs.audio_key,
        missing=cfg.missing_modality, required=inputs.required,
    )


def missing_image_policy(cfg: RunConfig, model_config: object) -> str | None:
    """The run's ``missing_modality`` policy for samples without an image, when ``model_config`` reads
    every sample's image (None when it does not: a text-only or audio-text model)."""
    from polymodal.models.inputs import model_inputs

    return cfg.missing_modality if model_inputs(model_config).images else None


def make_loader(
    samples: Sequence[Sample],
    processor: ImageProcessor | None,
    tokenizer: TextTokenizer,
    max_length: int,
    batch_size: int,
    num_workers: int,
    seed: int = 0,
    media: MediaPlan | None = None,
    missing_image: str | None = None,
) -> DataLoader:
    """Batches of ``samples`` in order, for evaluation and prediction (training uses :func:`make_train_loader`).
    ``missing_image``: see :func:`missing_image_policy`."""
    return DataLoader(
        SampleDataset(samples, processor, seed=seed, media=media, missing_image=missing_image),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=Collator(tokenizer, max_length, media),
        persistent_workers=False,
        # workers get their seeds from this generator, not from the global RNG, so creating a loader
        # on resume does not shift the random stream that dropout and masking draw from
        generator=torch.Generator().manual_seed(seed),
        drop_last=False,
    )


def make_train_loader(
    samples: Sequence[Any],
    processor: ImageProcessor | None,
    tokenizer: TextTokenizer,
    max_length: int,
    batch_size: int,
    num_workers: int,
    sampler: ResumableSampler,
    seed: int,
    flip_prob: float = 0.0,
    task: Task | None = None,
    media: MediaPlan | None = None,
    missing_image: str | None = None,
) -> DataLoader:
    """The training loader for the whole run, over the task's own dataset when it has one: iterate it
    once per epoch after moving ``sampler`` to that epoch's position. Its workers start once instead
    of once per epoch (a process start and a copy of the dataset each, which on spawn platforms costs
    seconds per epoch)."""
    if num_workers > 0 and getattr(processor, "decoded", None) is not None:  # a pretrained model's processor has no cache
        # Each worker would keep a cache of its own: a shuffled image lands on any of them, so hits
        # come slowly and memory grows towards workers x budget. Workers decode in parallel anyway.
        log.warning("image.cache_mb is used only when the main process loads the data (train.num_workers: 0); ignored with %d workers", num_workers)
        processor.decoded = None  # type: ignore[union-attr]
    custom = task.train_dataset(samples, processor, flip_prob, seed) if task is not None else None
    if custom is not None:
        dataset, collate = custom
    else:
        dataset = SampleDataset(samples, processor, flip_prob=flip_prob, seed=seed, media=media, missing_image=missing_image)
        collate = Collator(tokenizer, max_length, media)
    return DataLoader(
        EpochSeededDataset(dataset),
        batch_size=batch_size,
        sampler=EpochSeededSampler(sampler, seed),
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),  # see make_loader
        drop_last=False,
    )
