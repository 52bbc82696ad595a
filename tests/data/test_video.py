"""Video I/O and preprocessing: round trips, which frames sampling picks, errors that name the file,
time-consistent augmentation, and the processor config's round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from polymodal.data.processors import ImageProcessorConfig
from polymodal.data.video import (
    VideoError,
    VideoProcessor,
    VideoProcessorConfig,
    read_video,
    sample_indices,
    video_info,
    write_video,
)
from polymodal.errors import DataError

pytest.importorskip("av")


def _indexed_clip(t: int, size: int = 32) -> np.ndarray:
    """Flat frames whose colour encodes the frame index (red = 15 * i), so a decoded frame says which it was."""
    frames = np.zeros((t, size, size, 3), np.uint8)
    for i in range(t):
        frames[i] = (15 * i + 10, 128, 255 - 15 * i)
    return frames


def _frame_ids(frames: np.ndarray) -> list[int]:
    return [round((float(f[..., 0].mean()) - 10) / 15) for f in frames]


@pytest.fixture(scope="module")
def clip16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "clip16.mp4", _indexed_clip(16), fps=8)


def test_round_trip_keeps_count_rate_and_colours(clip16: Path) -> None:
    info = video_info(clip16)
    assert (info.frames, info.fps, info.width, info.height) == (16, 8.0, 32, 32)
    assert info.duration_s == pytest.approx(2.0)
    frames = read_video(clip16, num_frames=16)
    assert frames.shape == (16, 32, 32, 3) and frames.dtype == np.uint8
    assert np.abs(frames.astype(int) - _indexed_clip(16).astype(int)).max() <= 3
    assert _frame_ids(frames) == list(range(16))


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    out = write_video(tmp_path / "sub" / "a.mp4", _indexed_clip(4))
    assert out == tmp_path / "sub" / "a.mp4" and out.stat().st_size > 0
    assert [p.name for p in out.parent.iterdir()] == ["a.mp4"]


def test_unknown_codec_falls_back_to_mpeg4(tmp_path: Path) -> None:
    path = write_video(tmp_path / "b.mp4", _indexed_clip(8), codec="no-such-codec")
    assert _frame_ids(read_video(path, num_frames=8)) == list(range(8))


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 31, 32, 3), np.uint8),
        np.zeros((4, 32, 32), np.uint8),
        np.zeros((4, 32, 32, 3), np.float32),
    ],
)
def test_write_rejects_odd_sizes_and_bad_arrays(tmp_path: Path, bad: np.ndarray) -> None:
    with pytest.raises(VideoError, match="c.mp4"):
        write_video(tmp_path / "c.mp4", bad)
    assert not list(tmp_path.iterdir())


def test_uniform_sampling_picks_segment_centres(clip16: Path) -> None:
    assert sample_indices(16, 4) == [2, 6, 10, 14]
    assert _frame_ids(read_video(clip16, num_frames=4)) == [2, 6, 10, 14]


def test_stride_sampling_from_the_start(clip16: Path) -> None:
    assert _frame_ids(read_video(clip16, num_frames=3, sampling="stride", stride=5)) == [0, 5, 10]
    assert _frame_ids(read_video(clip16, num_frames=8, sampling="stride", stride=5)) == [
        0,
        5,
        10,
        15,
    ]  # fewer


def test_short_clip_repeats_frames_to_fill_uniform_samples(tmp_path: Path) -> None:
    path = write_video(tmp_path / "short.mp4", _indexed_clip(3))
    frames = read_video(path, num_frames=6)
    assert frames.shape[0] == 6
    assert _frame_ids(frames) == [0, 0, 1, 1, 2, 2]


def test_bytes_input_matches_file_input(clip16: Path) -> None:
    a = read_video(clip16.read_bytes(), num_frames=4)
    np.testing.assert_array_equal(a, read_video(clip16, num_frames=4))


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match="not found.*nope.mp4"):
        read_video(tmp_path / "nope.mp4")


def test_random_bytes_name_the_file_and_quote_the_decoder(tmp_path: Path) -> None:
    path = tmp_path / "junk.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match=r"junk\.mp4.*\(.+\)"):
        read_video(path)
    with pytest.raises(VideoError, match="clip.bin"):
        read_video(path.read_bytes(), name="clip.bin")


def test_truncated_mp4_names_the_file(clip16: Path, tmp_path: Path) -> None:
    path = tmp_path / "cut.mp4"
    path.write_bytes(clip16.read_bytes()[: clip16.stat().st_size // 3])
    with pytest.raises(VideoError, match="cut.mp4"):
        read_video(path)


def test_bad_sampling_options() -> None:
    with pytest.raises(ValueError, match="sampling"):
        read_video(b"", sampling="random")
    with pytest.raises(ValueError, match="num_frames"):
        read_video(b"", num_frames=0)


# ----- processor ------------------------------------------------------------------------------------


def _crop_config() -> VideoProcessorConfig:
    return VideoProcessorConfig(
        num_frames=4, image=ImageProcessorConfig(size=16, random_resized_crop=(0.2, 0.5), brightness=0.4)
    )


def _textured_clip(t: int = 4) -> np.ndarray:
    """Identical frames with structure, so different crops give different pixels."""
    frame = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return np.repeat(frame[None], t, axis=0)


def test_processor_shapes_and_eval_is_deterministic() -> None:
    proc = VideoProcessor(VideoProcessorConfig(image=ImageProcessorConfig(size=16)))
    out = proc(_indexed_clip(5))
    assert out.shape == (5, 3, 16, 16) and out.dtype == torch.float32
    torch.testing.assert_close(out, proc(_indexed_clip(5)))


def test_augmentation_is_the_same_for_every_frame_and_differs_across_seeds() -> None:
    proc = VideoProcessor(_crop_config(), train=True)
    clip = _textured_clip()
    a = proc(clip, np.random.default_rng(0))
    for t in range(1, 4):
        torch.testing.assert_close(a[t], a[0])
    b = proc(clip, np.random.default_rng(1))
    assert not torch.allclose(a[0], b[0])
    torch.testing.assert_close(a, proc(clip, np.random.default_rng(0)))  # seeded -> reproducible


def test_rng_advances_once_per_clip() -> None:
    proc = VideoProcessor(_crop_config(), train=True)
    rng = np.random.default_rng(0)
    first, second = proc(_textured_clip(), rng), proc(_textured_clip(), rng)
    assert not torch.allclose(first[0], second[0])


def test_processor_load_reads_and_processes(clip16: Path) -> None:
    proc = VideoProcessor(VideoProcessorConfig(num_frames=4, image=ImageProcessorConfig(size=16)))
    assert proc.load(clip16).shape == (4, 3, 16, 16)
    assert proc.load(clip16.read_bytes(), name="x.mp4").shape == (4, 3, 16, 16)


def test_processor_rejects_bad_frames() -> None:
    with pytest.raises(VideoError, match="uint8"):
        VideoProcessor()(np.zeros((2, 8, 8, 3), np.float32))


def test_config_round_trip() -> None:
    config = _crop_config()
    d = config.to_dict()
    assert d["image"]["size"] == 16 and d["num_frames"] == 4
    assert VideoProcessorConfig.from_dict(d) == config
    proc = VideoProcessor.from_dict(VideoProcessor(config).to_dict(), train=True)
    assert proc.config == config and proc.train
    assert VideoProcessorConfig.from_dict({"sampling": "stride"}) == VideoProcessorConfig(sampling="stride")


@pytest.mark.parametrize(
    "kwargs, option",
    [({"num_frames": 0}, "num_frames"), ({"sampling": "random"}, "sampling"), ({"stride": 0}, "stride")],
)
def test_config_rejects_bad_values(kwargs: dict, option: str) -> None:
    with pytest.raises(ValueError, match=option):
        VideoProcessorConfig(**kwargs)


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="num_frame"):
        VideoProcessorConfig.from_dict({"num_frame": 4})
    with pytest.raises(ValueError, match="sise"):
        VideoProcessorConfig.from_dict({"image": {"sise": 32}})


def test_video_without_frames_is_an_error(tmp_path: Path) -> None:
    import av

    path = tmp_path / "empty.mp4"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        container.start_encoding()  # writes the header; no frame is ever encoded
    assert path.exists()
    for fn in (video_info, read_video):
        with pytest.raises(VideoError, match="empty.mp4"):
            fn(path)
