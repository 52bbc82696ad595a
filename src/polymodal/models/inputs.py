"""Which inputs besides images and text a model config reads, so the data side decodes only those.

A tri-modal classifier with ``audio: {name: audio}`` needs decoded log-mels, one with ``audio: {name:
features}`` the pre-extracted sequences of :attr:`Sample.features`; an image-text model whose vision
tower is a ``video`` or ``audio`` encoder takes clips or sounds where other models take images
(video-text and audio-text retrieval, video QA).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

AUDIO_ENCODERS = ("audio",)
VIDEO_ENCODERS = ("video",)
FEATURE_ENCODERS = ("features",)


@dataclass(frozen=True)
class ModelInputs:
    audio: bool = False
    video_key: str | None = None  # "video" (its own modality) or "image" (the visual tower's input)
    audio_key: str = "audio"  # or "image": the sound is the non-text tower's input
    features: tuple[str, ...] = ()
    pixels: bool = True  # reads images or video frames, so the image settings shape its input
    images: bool = True  # reads each sample's image (not a clip or a sound in the image tower's place)

    @property
    def required(self) -> tuple[str, ...]:
        """The batch keys every sample must fill (the missing-modality policy decides what happens if not)."""
        keys = ([self.audio_key] if self.audio else []) + ([self.video_key] if self.video_key else [])
        return tuple(keys + [f"{m}_features" for m in self.features])

    @property
    def empty(self) -> bool:
        return not (self.audio or self.video_key or self.features)


def model_inputs(config: Any) -> ModelInputs:
    """The inputs besides text of a parsed model config (any type)."""
    encoders = getattr(config, "encoders", None)
    if encoders is not None:  # a classifier: one encoder per named modality
        audio = any(m == "audio" and s.name in AUDIO_ENCODERS for m, s in encoders.items())
        video = any(s.name in VIDEO_ENCODERS for s in encoders.values())
        features = tuple(sorted(m for m, s in encoders.items() if s.name in FEATURE_ENCODERS))
        pixels = any(m != "text" and s.name not in AUDIO_ENCODERS + FEATURE_ENCODERS for m, s in encoders.items())
        images = any(m != "text" and s.name not in AUDIO_ENCODERS + FEATURE_ENCODERS + VIDEO_ENCODERS for m, s in encoders.items())
        return ModelInputs(audio=audio, video_key="video" if video else None, features=features, pixels=pixels, images=images)
    vision = getattr(config, "vision", None)
    if vision is not None and vision.name in VIDEO_ENCODERS:
        return ModelInputs(video_key="image", images=False)
    if vision is not None and vision.name in AUDIO_ENCODERS:
        return ModelInputs(audio=True, audio_key="image", pixels=False, images=False)
    return ModelInputs()
