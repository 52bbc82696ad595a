"""Audio, video and pre-extracted feature inputs of a sample, and what to do when one is missing.

A :class:`MediaPlan` says which of those inputs a model reads and under which batch keys; the
dataset decodes them in DataLoader workers (like images) and the collator pads each to the longest in
the batch with a mask. A sample that lacks a required input (no sound track, an undecodable video)
is either skipped (``missing="skip"``) or zero-filled with ``batch["<modality>_present"]`` False
(``"zero"`` / ``"learned"``; the model decides what an absent modality looks like). Either way it is
counted: skipped samples in ``batch["num_skipped"]``, filled ones in ``batch["num_missing"]``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from polymodal.data.sample import Sample
from polymodal.errors import ConfigError, DataError

log = logging.getLogger(__name__)

MISSING_POLICIES = ("skip", "zero", "learned")


def checked_missing_policy(policy: str | None) -> str | None:
    """``policy`` when it is one of :data:`MISSING_POLICIES` (or None: no policy); a ConfigError otherwise."""
    if policy is not None and policy not in MISSING_POLICIES:
        raise ConfigError(f"missing_modality must be one of {MISSING_POLICIES}, got {policy!r}")
    return policy


@dataclass(frozen=True)
class MediaInput:
    """One non-image input: the modality it belongs to, the batch key it fills, its time axis, and
    whether it is decoded from the sample's audio / video file or read from :attr:`Sample.features`."""

    modality: str
    key: str
    time_axis: int  # the axis padded to the batch's longest (audio mel: last; video, features: first)
    from_features: bool = False

    @property
    def mask_key(self) -> str:
        return f"{self.key}_mask"


@dataclass
class MediaPlan:
    """Which audio / video / feature inputs a model reads, how they decode, and the missing policy.

    ``video_key`` is ``"video"`` when video is a modality of its own (a tri-modal classifier) and
    ``"image"`` when the clip *is* the visual input of an image-text model (video-text retrieval, video
    QA); ``audio_key`` likewise (``"image"``: audio-text retrieval). ``features`` lists the modalities read from :attr:`Sample.features` (CMU-MOSI-style pickles).
    """

    audio: Any = None  # an AudioProcessor: .load(source, rng, name) -> [n_mels, frames]
    video: Any = None  # a VideoProcessor: .load(source, rng, name) -> [T, 3, S, S]
    features: tuple[str, ...] = ()
    video_key: str = "video"
    audio_key: str = "audio"
    missing: str = "skip"
    required: tuple[str, ...] = field(default=())  # batch keys every sample must have (others: optional)

    def __post_init__(self) -> None:
        checked_missing_policy(self.missing)
        if self.video_key not in ("video", "image") or self.audio_key not in ("audio", "image"):
            raise ConfigError(f"media plan: video_key / audio_key must be their modality or 'image', got {self.video_key!r} / {self.audio_key!r}")

    @property
    def inputs(self) -> list[MediaInput]:
        found = []
        if self.audio is not None:
            found.append(MediaInput("audio", self.audio_key, -1))
        if self.video is not None:
            found.append(MediaInput("video", self.video_key, 0))
        found += [MediaInput(m, f"{m}_features", 0, from_features=True) for m in self.features]
        return found

    @property
    def empty(self) -> bool:
        return not self.inputs


def _decode(processor: Any, path: Any, what: str, sample: Sample, rng: np.random.Generator) -> Tensor | None:
    try:
        return processor.load(path, rng, name=str(path))
    except DataError as e:
        log.warning("%s of %s cannot be read: %s", what, sample.origin or sample.sample_id, e)
        return None


def _feature(sample: Sample, modality: str) -> Tensor | None:
    value = sample.features.get(modality)
    if value is None:
        return None
    array = np.asarray(value, dtype=np.float32)
    if array.ndim == 1:  # one vector per utterance: a sequence of one step
        array = array[None]
    if array.ndim != 2 or array.shape[0] == 0:
        log.warning("%s: %s features have shape %s; expected [steps, dims] with steps >= 1", sample.origin, modality, array.shape)
        return None
    return torch.from_numpy(array)


def load_media(sample: Sample, plan: MediaPlan, rng: np.random.Generator) -> dict[str, Tensor] | None:
    """The plan's inputs for one sample, keyed by batch key; None when a required one is absent and
    the plan skips such samples (the collator counts the None)."""
    media: dict[str, Tensor] = {}
    for item in plan.inputs:
        if item.from_features:
            tensor = _feature(sample, item.modality)
        else:
            path, processor = (sample.audio_path, plan.audio) if item.modality == "audio" else (sample.video_path, plan.video)
            tensor = None if path is None else _decode(processor, path, item.modality, sample, rng)
        if tensor is not None:
            media[item.key] = tensor
        elif item.key in plan.required and plan.missing == "skip":
            log.debug("skipping %s: no %s input (missing_modality: skip)", sample.origin or sample.sample_id, item.key)
            return None
    return media


def pad_stack(tensors: Sequence[Tensor | None], time_axis: int) -> tuple[Tensor, Tensor, Tensor]:
    """Stack tensors that differ only along ``time_axis``: ``(padded, mask [B, longest], present [B])``.

    Absent entries (None) become one zero step that counts as real, so no row of the mask is empty
    (attention over an all-masked row is undefined); ``present`` tells the model which rows they are.
    """
    real = [t for t in tensors if t is not None]
    if not real:
        raise ValueError("pad_stack needs at least one tensor")
    template = real[0]
    axis = time_axis % template.dim()
    longest = max(t.shape[axis] for t in real)
    for t in real:
        other = [s for i, s in enumerate(t.shape) if i != axis]
        expected = [s for i, s in enumerate(template.shape) if i != axis]
        if other != expected:
            raise DataError(f"cannot batch inputs of shapes {list(template.shape)} and {list(t.shape)}: they may differ only along axis {axis}")
    shape = list(template.shape)
    shape[axis] = longest
    out = template.new_zeros([len(tensors), *shape])
    mask = torch.zeros(len(tensors), longest, dtype=torch.bool)
    present = torch.tensor([t is not None for t in tensors])
    for row, t in enumerate(tensors):
        length = 1 if t is None else t.shape[axis]
        mask[row, :length] = True
        if t is not None:
            out[row].narrow(axis, 0, length).copy_(t)
    return out, mask, present


def collate_media(items: Sequence[Mapping[str, Tensor]], plan: MediaPlan, batch: dict[str, Any]) -> None:
    """Pad and stack every planned input into ``batch``; masks only where lengths differ or rows are
    absent, ``<modality>_present`` only where rows are absent, and the absent count per key."""
    missing: Counter[str] = Counter()
    for item in plan.inputs:
        values = [m.get(item.key) for m in items]
        if all(v is None for v in values):
            continue
        padded, mask, present = pad_stack(values, item.time_axis)
        batch[item.key] = padded
        if not bool(mask.all()):
            batch[item.mask_key] = mask
        absent = int((~present).sum())
        if absent:
            batch[f"{item.modality}_present"] = present
            missing[item.key] = absent
    batch["num_missing"] = dict(missing)


def plan_to_dict(plan: MediaPlan) -> dict[str, Any]:
    """JSON-ready settings saved with a checkpoint, so evaluation decodes exactly as training did."""
    return {
        "audio": plan.audio.to_dict() if plan.audio is not None else None,
        "video": plan.video.to_dict() if plan.video is not None else None,
        "features": list(plan.features),
        "video_key": plan.video_key,
        "audio_key": plan.audio_key,
        "missing": plan.missing,
        "required": list(plan.required),
    }


def plan_from_dict(d: Mapping[str, Any], train: bool = False) -> MediaPlan:
    """Inverse of :func:`plan_to_dict` (evaluation-time processors unless ``train``)."""
    from polymodal.data.audio import AudioProcessor
    from polymodal.data.video import VideoProcessor

    unknown = sorted(set(d) - {"audio", "video", "features", "video_key", "audio_key", "missing", "required"})
    if unknown:
        raise ConfigError(f"media settings: unknown keys {unknown}")
    return MediaPlan(
        audio=AudioProcessor.from_dict(d["audio"], train=train) if d.get("audio") else None,
        video=VideoProcessor.from_dict(d["video"], train=train) if d.get("video") else None,
        features=tuple(d.get("features") or ()),
        video_key=str(d.get("video_key") or "video"),
        audio_key=str(d.get("audio_key") or "audio"),
        missing=str(d.get("missing") or "skip"),
        required=tuple(d.get("required") or ()),
    )
