"""Video files in and out (MP4 through PyAV), clip sampling, and time-consistent frame preprocessing.

PyAV is an optional extra (``pip install "polymodal[video]"``) and is imported only when a video is
actually read or written, so image/text users never need FFmpeg. Every failure is a
:class:`VideoError` naming the file (and quoting the decoder for corrupt data), so a bad clip in a
100k-clip dataset is found by its name, not by a traceback from inside FFmpeg.
"""

from __future__ import annotations

import copy
import io
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from polymodal.data.processors import ImageProcessor, ImageProcessorConfig
from polymodal.errors import DataError

__all__ = [
    "SAMPLINGS",
    "VideoError",
    "VideoInfo",
    "VideoProcessor",
    "VideoProcessorConfig",
    "read_video",
    "sample_indices",
    "video_info",
    "write_video",
]

SAMPLINGS = ("uniform", "stride")
_FALLBACK_CODEC = "mpeg4"  # FFmpeg's built-in MPEG-4 part 2 encoder: present even without libx264


class VideoError(DataError):
    """A video cannot be read or written (missing file, corrupt stream, no frames, bad frame array)."""


def _import_av() -> Any:
    """PyAV, imported on first use so that the core install needs no FFmpeg."""
    try:
        import av
    except ImportError:
        raise VideoError('reading or writing video needs PyAV: pip install "polymodal[video]"') from None
    return av


# ----- writing ------------------------------------------------------------------------------------


def _check_frames(frames: np.ndarray, where: str) -> np.ndarray:
    """uint8 ``[T, H, W, 3]`` with T >= 1, or a VideoError saying what was wrong."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise VideoError(
            f"{where}: expected uint8 RGB frames [T, H, W, 3] with T >= 1, got shape {list(frames.shape)}"
        )
    if frames.dtype != np.uint8:
        raise VideoError(f"{where}: expected uint8 RGB frames, got dtype {frames.dtype}")
    return frames


def _pick_codec(av: Any, codec: str) -> str:
    """``codec`` when this FFmpeg build can encode it, else the always-present MPEG-4 encoder."""
    try:
        av.codec.Codec(codec, "w")
        return codec
    except (ValueError, av.FFmpegError):  # unknown name (UnknownCodecError) or no encoder in this build
        return _FALLBACK_CODEC


def _encoder_options(codec: str, width: int, height: int, fps: int) -> tuple[dict[str, str], int | None]:
    """Near-lossless settings: synthetic test clips (flat colours, 64x64) must decode to ~the same pixels.

    x264 gets a low CRF (crf=0 would switch to the High 4:4:4 profile that many players refuse); other
    encoders get a bit rate generous enough for their fixed-quantiser rate control.
    """
    if codec in ("libx264", "h264"):
        return {"crf": "4", "preset": "medium"}, None
    return {}, max(4_000_000, width * height * fps * 8)


def write_video(path: str | Path, frames: np.ndarray, fps: int = 8, codec: str = "libx264") -> Path:
    """Write uint8 RGB frames ``[T, H, W, 3]`` to an MP4 (yuv420p) and return its path.

    Odd widths or heights raise :class:`VideoError` (yuv420p stores colour per 2x2 block, and silently
    padding would change the clip's size). Falls back to the ``mpeg4`` encoder when ``codec`` is not
    in this FFmpeg build. The file is written under a temporary name in the same folder and renamed
    into place, so a crash never leaves a half-written video where a reader expects a whole one.
    """
    path = Path(path)
    frames = _check_frames(frames, f"write_video({path})")
    _, height, width, _ = frames.shape
    if width % 2 or height % 2:
        raise VideoError(
            f"write_video({path}): yuv420p needs even width and height, got {width}x{height}; crop or pad the frames"
        )
    if fps <= 0:
        raise VideoError(f"write_video({path}): fps must be > 0, got {fps}")
    av = _import_av()
    codec = _pick_codec(av, codec)
    options, bit_rate = _encoder_options(codec, width, height, fps)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a fresh hidden name next to the target (not mkstemp: that makes owner-only files)
    tmp = str(path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with av.open(tmp, mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=fps, options=options)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            if bit_rate is not None:
                stream.bit_rate = bit_rate
            for frame in frames:
                container.mux(
                    stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24"))
                )
            container.mux(stream.encode(None))  # flush the encoder's delayed frames
        os.replace(tmp, path)
    except av.FFmpegError as e:
        raise VideoError(f"cannot write video {path} with codec {codec!r}: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


# ----- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoInfo:
    """What a container says about its first video stream (``frames`` may be counted by decoding)."""

    frames: int
    fps: float
    duration_s: float
    width: int
    height: int


def _label(source: str | Path | bytes, name: str | None) -> str:
    return name or (str(source) if isinstance(source, (str, Path)) else "<video bytes>")


def _opener(source: str | Path | bytes, label: str) -> Callable[[], Any]:
    """A function that opens the source afresh, so a clip can be decoded a second time if needed."""
    av = _import_av()
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        target: Callable[[], Any] = lambda: io.BytesIO(data)
    else:
        p = Path(source)
        if not p.is_file():
            raise VideoError(f"video file not found: {label}")
        target = lambda: str(p)

    def open_container() -> Any:
        try:
            container = av.open(target(), mode="r")
        except av.FFmpegError as e:
            raise VideoError(f"not a readable video: {label} ({e})") from None
        if not container.streams.video:
            container.close()
            raise VideoError(f"no video stream in {label}")
        return container

    return open_container


def _iter_frames(container: Any, label: str) -> Iterator[Any]:
    """Decoded frames of the first video stream, with decoder errors turned into a VideoError."""
    av = _import_av()
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    try:
        yield from container.decode(stream)
    except av.FFmpegError as e:
        raise VideoError(f"corrupt video {label}: {e}") from None


def _count_frames(open_container: Callable[[], Any], label: str) -> int:
    with open_container() as container:
        return sum(1 for _ in _iter_frames(container, label))


def video_info(path: str | Path | bytes, name: str | None = None) -> VideoInfo:
    """Frame count, rate, duration and size; the frames are counted by decoding when the header lacks them."""
    label = _label(path, name)
    open_container = _opener(path, label)
    with open_container() as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        frames = int(stream.frames or 0)
        width, height = stream.codec_context.width, stream.codec_context.height
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = float(container.duration or 0) / 1e6
    if frames == 0:
        frames = _count_frames(open_container, label)
    if frames == 0:
        raise VideoError(f"video {label} has no frames")
    if duration == 0 and fps > 0:
        duration = frames / fps
    return VideoInfo(frames=frames, fps=fps, duration_s=duration, width=width, height=height)


def sample_indices(total: int, num_frames: int, sampling: str = "uniform", stride: int = 4) -> list[int]:
    """Which frames of a ``total``-frame clip to keep.

    ``uniform``: the centre frame of each of ``num_frames`` equal segments, so the whole clip is
    covered and exactly ``num_frames`` come back (a short clip repeats frames). ``stride``: every
    ``stride``-th frame from the start, at most ``num_frames`` (fewer for a short clip).
    """
    if total <= 0:
        return []
    if sampling == "uniform":
        return [min(total - 1, int((i + 0.5) * total / num_frames)) for i in range(num_frames)]
    if sampling == "stride":
        return list(range(0, total, stride))[:num_frames]
    raise ValueError(f"video sampling must be one of {SAMPLINGS}, got {sampling!r}")


def _decode_indices(
    open_container: Callable[[], Any], label: str, wanted: set[int]
) -> tuple[dict[int, np.ndarray], int]:
    """Decode sequentially, converting to RGB only the wanted frames; also returns how many were seen."""
    kept: dict[int, np.ndarray] = {}
    last = max(wanted) if wanted else -1
    seen = 0
    with open_container() as container:
        for i, frame in enumerate(_iter_frames(container, label)):
            seen = i + 1
            if i in wanted:
                kept[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
    return kept, seen


def read_video(
    source: str | Path | bytes,
    num_frames: int = 8,
    sampling: str = "uniform",
    stride: int = 4,
    name: str | None = None,
) -> np.ndarray:
    """Decode ``num_frames`` frames (see :func:`sample_indices`) to uint8 RGB ``[T, H, W, 3]``.

    The clip is decoded once, front to back (seeking is unreliable in many MP4s and saves little on
    short clips); only kept frames are converted to RGB. When the header's frame count turns out to be
    wrong (truncated files, missing counts) the true count is used and the clip decoded once more.
    """
    if num_frames < 1:
        raise ValueError(f"read_video: num_frames must be >= 1, got {num_frames}")
    if stride < 1:
        raise ValueError(f"read_video: stride must be >= 1, got {stride}")
    if sampling not in SAMPLINGS:
        raise ValueError(f"read_video: sampling must be one of {SAMPLINGS}, got {sampling!r}")
    label = _label(source, name)
    open_container = _opener(source, label)
    with open_container() as container:
        total = int(container.streams.video[0].frames or 0)
    if sampling == "stride":  # needs no frame count: take every stride-th frame until enough
        total = max(total, num_frames * stride)
    elif total == 0:
        total = _count_frames(open_container, label)
    indices = sample_indices(total, num_frames, sampling, stride)
    kept, seen = _decode_indices(open_container, label, set(indices))
    if seen == 0:
        raise VideoError(f"video {label} has no frames")
    if sampling == "uniform" and len(kept) < len(set(indices)):  # header overstated the frame count
        indices = sample_indices(seen, num_frames, sampling, stride)
        kept, _ = _decode_indices(open_container, label, set(indices))
    return np.stack([kept[i] for i in indices if i in kept])


# ----- preprocessing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoProcessorConfig:
    """How many frames to take from a clip and how, plus the per-frame image preprocessing."""

    num_frames: int = 8
    sampling: str = "uniform"  # or "stride"
    stride: int = 4
    image: ImageProcessorConfig = field(default_factory=ImageProcessorConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.num_frames, int) or self.num_frames < 1:
            raise ValueError(f"video processor: num_frames must be an integer >= 1, got {self.num_frames!r}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"video processor: sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if not isinstance(self.stride, int) or self.stride < 1:
            raise ValueError(f"video processor: stride must be an integer >= 1, got {self.stride!r}")
        if not isinstance(self.image, ImageProcessorConfig):
            raise TypeError(
                f"video processor: image must be an ImageProcessorConfig, got {type(self.image).__name__}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (the image settings nested under ``image``), saved with a checkpoint."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VideoProcessorConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, so a typo never silently falls back to a default."""
        d = dict(d)
        _reject_unknown(d, cls, "video processor")
        image = d.pop("image", None)
        if image is not None and not isinstance(image, ImageProcessorConfig):
            image = dict(image)
            _reject_unknown(image, ImageProcessorConfig, "video processor image")
            for key in ("mean", "std", "random_resized_crop"):
                if image.get(key) is not None:
                    image[key] = tuple(image[key])
            image = ImageProcessorConfig(**image)
        return cls(**d, image=image) if image is not None else cls(**d)


def _reject_unknown(d: dict[str, Any], cls: type, where: str) -> None:
    valid = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - valid)
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown}; valid options: {sorted(valid)}")


class VideoProcessor:
    """uint8 frames ``[T, H, W, 3]`` -> normalised float tensor ``[T, 3, size, size]``.

    Each frame goes through an :class:`ImageProcessor`, and in training every frame of a clip gets the
    same random crop and colour jitter: each frame is handed an identical copy of the generator, so
    an object does not jump around the frame from one time step to the next.
    """

    def __init__(
        self, config: VideoProcessorConfig | None = None, train: bool = False, seed: int | None = None
    ) -> None:
        self.config = config or VideoProcessorConfig()
        self.train = train
        self.image = ImageProcessor(self.config.image, train=train)
        self._rng = np.random.default_rng(seed)

    def __call__(self, frames: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        """``rng`` (e.g. seeded by epoch and index) is advanced once per clip, as if by a single image."""
        frames = _check_frames(frames, "video processor")
        rng = rng if rng is not None else self._rng
        start = copy.deepcopy(rng.bit_generator.state)
        out = []
        for frame in frames:
            rng.bit_generator.state = start  # the same draws for every frame
            out.append(self.image(Image.fromarray(frame), rng))
        return torch.stack(out)

    def load(
        self, source: str | Path | bytes, rng: np.random.Generator | None = None, name: str | None = None
    ) -> torch.Tensor:
        """Read a clip with the configured sampling and preprocess it: a file path or bytes in, ``[T, 3, S, S]`` out."""
        c = self.config
        return self(
            read_video(source, num_frames=c.num_frames, sampling=c.sampling, stride=c.stride, name=name), rng
        )

    def to_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    @classmethod
    def from_dict(cls, d: dict[str, Any], train: bool = False) -> VideoProcessor:
        return cls(VideoProcessorConfig.from_dict(d), train=train)
