"""The audio-visual world, checked against its event log by code written here, not by the generator.

Pixels and samples are read back from the written MP4 / WAV files, so these tests also catch an
encoder or a mixer that drifts from what the texts claim.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from polymodal.data.world.av_writer import FAMILIES, write_av_world
from polymodal.data.world.scene import COLORS, RADIUS
from polymodal.errors import ConfigError
from tests.cli_runner import run_cli

pytest.importorskip("av")
sf = pytest.importorskip("soundfile")

CLIPS, SEED, FRAMES, SIZE = 24, 5, 8, 64


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("av") / "w"
    write_av_world(root, CLIPS, SEED, frames=FRAMES, size=SIZE, progress=False, workers=1)
    return root


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _rows(root: Path) -> list[dict[str, Any]]:
    return [r for s in ("train", "val", "test") for r in _jsonl(root / f"{s}.jsonl")]


def _clips(root: Path) -> dict[int, dict[str, Any]]:
    return {c["clip_id"]: c for c in _jsonl(root / "clips.jsonl")}


# ---------------- determinism and layout ----------------------------------------------------------


def test_same_seed_gives_the_same_world_and_a_rerun_resumes(world: Path, tmp_path: Path) -> None:
    from polymodal.data.video import read_video

    again = tmp_path / "again"
    write_av_world(again, CLIPS, SEED, frames=FRAMES, size=SIZE, progress=False, workers=1)
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "clips.jsonl", "data.yaml"):
        assert (world / name).read_bytes() == (again / name).read_bytes(), name
    for wav in sorted((world / "audio").iterdir()):
        assert wav.read_bytes() == (again / "audio" / wav.name).read_bytes(), wav.name
    first = min((world / "videos").iterdir())
    assert np.array_equal(read_video(first, FRAMES), read_video(again / "videos" / first.name, FRAMES))

    resumed = write_av_world(again, CLIPS, SEED, frames=FRAMES, size=SIZE, progress=False, workers=1)
    assert resumed.reused == CLIPS
    assert (again / "train.jsonl").read_bytes() == (world / "train.jsonl").read_bytes()

    other = tmp_path / "other"
    write_av_world(other, CLIPS, SEED + 1, frames=FRAMES, size=SIZE, progress=False, workers=1)
    assert (other / "clips.jsonl").read_bytes() != (world / "clips.jsonl").read_bytes()

    # fewer clips into the same folder: the old clips' media go, so the folder holds one world
    smaller = write_av_world(again, 6, SEED, frames=FRAMES, size=SIZE, progress=False, workers=1)
    logged = {Path(c[k]).name for c in _clips(again).values() for k in ("video", "audio", "dub") if c[k]}
    on_disk = {p.name for sub in ("videos", "audio") for p in (again / sub).iterdir()}
    assert on_disk == logged and smaller.stale_removed > 0
    assert f"{smaller.stale_removed} media files of an earlier world removed" in smaller.summary()


def test_layout_and_bad_arguments(world: Path, tmp_path: Path) -> None:
    clips = _clips(world)
    assert len(clips) == CLIPS and len(list((world / "videos").glob("*.mp4"))) == CLIPS
    two = [c for c in clips.values() if len(c["events"]) == 2]
    assert 0 < len(two) < CLIPS and all((world / c["dub"]).is_file() for c in two)
    assert json.loads((world / "av_world.json").read_text())["complete"] is True
    assert not list(world.rglob("*.tmp"))
    splits = Counter(c["split"] for c in clips.values())
    assert splits["train"] > splits["val"] >= 1 and splits["test"] >= 1
    for kwargs in ({"clips": 2}, {"clips": 5, "size": 63}, {"clips": 5, "frames": 4}):
        with pytest.raises(ConfigError):
            write_av_world(tmp_path / "bad", seed=0, progress=False, **kwargs)  # type: ignore[arg-type]


# ---------------- pixels: what the video shows ----------------------------------------------------


def _centroid(frame: np.ndarray, obj: dict[str, Any], at: tuple[float, float]) -> tuple[float, float, int]:
    """Centre and area of the pixels of the object's colour in a window around ``at`` (canvas fractions).

    The window (1.6 radii) keeps a neighbour's shaded edge, which can be close in colour (a red
    cube's dark outline is near brown), out of the mask.
    """
    dist = np.linalg.norm(frame.astype(np.float32) - np.array(COLORS[obj["color"]], np.float32), axis=-1)
    yy, xx = np.mgrid[0 : frame.shape[0], 0 : frame.shape[1]]
    r = RADIUS[obj["size"]] * SIZE * 1.6
    window = (xx - at[0] * SIZE) ** 2 + (yy - at[1] * SIZE) ** 2 <= r**2
    ys, xs = np.nonzero((dist < 45) & window)
    return (float(xs.mean()) if len(xs) else -1.0), (float(ys.mean()) if len(ys) else -1.0), len(xs)


STEPS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def test_videos_decode_and_objects_move_as_the_log_says(world: Path) -> None:
    from polymodal.data.video import read_video

    checked = Counter()
    for c in _clips(world).values():
        frames = read_video(world / c["video"], FRAMES)
        assert frames.shape == (FRAMES, SIZE, SIZE, 3) and frames.dtype == np.uint8
        for e in c["events"]:
            o = c["objects"][e["obj"]]
            if o["color"] == "gray":  # too close to the floor and the shadows for a colour mask
                continue
            start = (o["x"], o["y"])
            if e["kind"] == "appear":
                _, _, a0 = _centroid(frames[0], o, start)
                _, _, a1 = _centroid(frames[-1], o, start)
                assert a0 <= 2 and a1 >= 10, (c["clip_id"], e, a0, a1)
                checked["appear"] += 1
                continue
            sx, sy = STEPS[e["direction"]]
            end = (o["x"] + sx * e["distance"], o["y"] + sy * e["distance"])
            x0, y0, a0 = _centroid(frames[0], o, start)
            x1, y1, a1 = _centroid(frames[-1], o, end)
            _, _, gone = _centroid(frames[-1], o, (o["x"] - sx * 0.05, o["y"] - sy * 0.05))
            assert a0 >= 10 and a1 >= 10, (c["clip_id"], e, a0, a1)
            dx, dy = x1 - x0, y1 - y0
            along, across = dx * sx + dy * sy, abs(dx * sy) + abs(dy * sx)
            assert abs(along - e["distance"] * SIZE) < 3 and across < 2, (c["clip_id"], e, dx, dy)
            assert gone < a0 / 2, (c["clip_id"], e, gone, a0)  # and it has left its start
            checked["slide"] += 1
    assert checked["slide"] >= 5 and checked["appear"] >= 2, checked


# ---------------- samples: what the soundtrack says -----------------------------------------------


def _dominant_hz(wave: np.ndarray, sr: int, onset_s: float, duration_s: float) -> float:
    seg = wave[int(onset_s * sr) : int((onset_s + duration_s) * sr)]
    spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg))))
    return float(np.fft.rfftfreq(len(seg), 1 / sr)[int(np.argmax(spec))])


def test_soundtracks_have_the_right_format_and_pitch(world: Path) -> None:
    seen = Counter()
    for c in _clips(world).values():
        info = sf.info(str(world / c["audio"]))
        assert info.samplerate == 16_000 and info.channels == 1
        assert info.frames == round(c["frames"] / c["fps"] * 16_000)
        wave, sr = sf.read(str(world / c["audio"]), dtype="float32")
        hz = [_dominant_hz(wave, sr, v["onset_s"], v["duration_s"]) for v in c["voices"]]
        for v, f in zip(c["voices"], hz):
            size = c["objects"][c["events"][v["event"]]["obj"]]["size"]
            assert v["register"] == ("low" if size == "large" else "high")
            assert (f < 440) == (v["register"] == "low"), (c["clip_id"], v, f)
            seen[v["timbre"]] += 1
        if len(c["voices"]) == 2:
            low = hz[[v["register"] for v in c["voices"]].index("low")]
            high = hz[[v["register"] for v in c["voices"]].index("high")]
            assert low < high
            dubbed, _ = sf.read(str(world / c["dub"]), dtype="float32")
            dub_hz = [_dominant_hz(dubbed, sr, v["onset_s"], v["duration_s"]) for v in c["voices"]]
            assert (dub_hz[0] < 440) == (hz[1] < 440) and (dub_hz[1] < 440) == (hz[0] < 440)
        # loudness follows size: a large object's tone carries more energy than the background
        quiet = wave[: int(c["events"][0]["onset"] / c["fps"] * sr)]
        assert np.sqrt(np.mean(quiet**2)) < 0.01
    assert len(seen) >= 3, seen


# ---------------- texts: answers and labels from the event log ------------------------------------


def _slid(c: dict[str, Any], direction: str | None = None) -> list[dict[str, Any]]:
    return [
        c["objects"][e["obj"]] for e in c["events"] if e["kind"] == "slide" and direction in (None, e["direction"])
    ]


def _answer(c: dict[str, Any], p: dict[str, Any]) -> str:
    objs, events = c["objects"], c["events"]
    if p["op"] == "moved_attr":
        (o,) = _slid(c, p["direction"])
        return o[p["attr"]]
    if p["op"] == "sound_attr":
        (v,) = [v for v in c["voices"] if v["register"] == p["register"]]
        return objs[events[v["event"]]["obj"]][p["attr"]]
    if p["op"] == "appeared_any":
        return "yes" if any(e["kind"] == "appear" for e in events) else "no"
    if p["op"] == "appeared":
        (i,) = [i for i, o in enumerate(objs) if o["color"] == p["color"]]
        return "yes" if any(e["kind"] == "appear" and e["obj"] == i for e in events) else "no"
    if p["op"] == "count_moved":
        return str(len(_slid(c)))
    if p["op"] == "count_sounds":
        return str(len(events))
    if p["op"] == "direction_of":
        (e,) = [e for e in events if objs[e["obj"]]["color"] == p["color"]]
        return e["direction"]
    raise AssertionError(p)


def test_every_answer_matches_the_event_log(world: Path) -> None:
    clips = _clips(world)
    fams = Counter()
    for r in _rows(world):
        if r["kind"] != "question":
            continue
        c = clips[r["clip_id"]]
        assert r["answers"] == [_answer(c, r["program"])], r
        assert len(r["answers"][0].split()) == 1
        for slot in ("direction", "register", "color"):
            if slot in r["program"]:
                assert r["program"][slot] in r["text"], r
        fams[r["family"]] += 1
    assert set(fams) == set(FAMILIES), fams
    captions = [r for r in _rows(world) if r["kind"] == "caption"]
    assert any(" with a low " in r["text"] for r in captions) and any(" with a high " in r["text"] for r in captions)


def _subject_event(c: dict[str, Any], ref: dict[str, Any]) -> int:
    hits = [
        k
        for k, e in enumerate(c["events"])
        if (ref["by"] == "color" and c["objects"][e["obj"]]["color"] == ref["color"])
        or (ref["by"] == "direction" and e["kind"] == "slide" and e["direction"] == ref["direction"])
        or (ref["by"] == "appeared" and e["kind"] == "appear")
    ]
    assert len(hits) == 1, (c["clip_id"], ref)
    return hits[0]


def test_statements_are_true_to_the_clip_and_need_video_audio_and_text(world: Path) -> None:
    clips = _clips(world)
    rows = [r for r in _rows(world) if r["kind"] == "statement"]
    assert rows and sum(r["label"] for r in rows) * 2 == len(rows)  # balanced
    for r in rows:
        c = clips[r["clip_id"]]
        k = _subject_event(c, r["program"]["subject"])
        registers = [v["register"] for v in c["voices"]]
        if r["audio"].endswith("_dub.wav"):
            registers = registers[::-1]  # the dub swaps the two voices' pitch
        assert r["label"] == int(registers[k] == r["program"]["register"]), r
        assert r["program"]["register"] in r["text"]
        shape = c["objects"][c["events"][k]["obj"]]["shape"]
        assert shape not in r["text"] and "large" not in r["text"] and "small" not in r["text"]

    # A lookup on one or two of (text, video, audio) that predicts each key's majority label is at
    # chance exactly. Audio is keyed by its content (what a listener can get out of it: each voice's
    # timbre, register and onset), text by the whole string, or for the audio pairing by the string
    # with the subject masked: (text, audio file) is unique per row, a memorised key, not a model.
    def content(r: dict[str, Any]) -> tuple[Any, ...]:
        vs = clips[r["clip_id"]]["voices"]
        regs = [v["register"] for v in vs][:: -1 if r["audio"].endswith("_dub.wav") else 1]
        return tuple((v["timbre"], reg, v["onset_s"]) for v, reg in zip(vs, regs))

    subject = re.compile(r"the (\w+ object|object that moved \w+|object that appeared)")
    keys: dict[str, Callable[[dict[str, Any]], Any]] = {
        "text": lambda r: r["text"],
        "video": lambda r: r["video"],
        "audio": content,
        "text+video": lambda r: (r["text"], r["video"]),
        "text+audio": lambda r: (subject.sub("SUBJECT", r["text"]), content(r)),
        "video+audio": lambda r: (r["video"], content(r)),
    }
    for name, key in keys.items():
        table: dict[Any, Counter] = defaultdict(Counter)
        for r in rows:
            table[key(r)][r["label"]] += 1
        correct = sum(max(t.values()) for t in table.values())
        assert correct * 2 == len(rows), (name, correct, len(rows))
    table = defaultdict(Counter)
    for r in rows:
        table[(r["text"], r["video"], content(r))][r["label"]] += 1
    assert all(len(t) == 1 for t in table.values())  # all three together decide the label


# ---------------- reading through the library -----------------------------------------------------


def test_rows_read_through_the_jsonl_format_and_the_data_spec(world: Path) -> None:
    from polymodal.data.formats import read_source
    from polymodal.data.report import DataReport
    from polymodal.evaluate import read_splits

    groups = read_splits(world / "data.yaml")
    assert set(groups) == {"train", "val", "test"}
    for split, sources in groups.items():
        assert len(sources) == 1 and sources[0].format == "jsonl"
        report = DataReport(split)
        samples = list(read_source(sources[0], report))
        assert report.num_problems == 0, report.format()
        assert len(samples) == len(_jsonl(world / f"{split}.jsonl"))
        for s in samples:
            assert s.video_path is not None and Path(s.video_path).is_file()
            assert s.audio_path is not None and Path(s.audio_path).is_file()
            assert s.image_path is None and s.text and s.split == split
            assert s.image_id is not None and s.image_id.startswith("clip_")
            kind = s.meta["kind"]
            assert (kind == "question") == bool(s.answers)
            assert (kind == "statement") == (s.label is not None)
            if kind == "statement":
                assert s.label in (0, 1)


def test_cli_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "data", "av-world", "--help")
    assert code == 0 and "Example" in out
    out_dir = tmp_path / "cli"
    code, out, err = run_cli(
        capsys, "data", "av-world", "--out", str(out_dir), "--clips", "6", "--seed", "2", "--frames", "6",
        "--size", "32", "--workers", "1",
    )  # fmt: skip
    assert code == 0, err
    assert "audio-visual world written to" in out and "statements" in out
    assert (out_dir / "data.yaml").is_file() and len(list((out_dir / "videos").glob("*.mp4"))) == 6


def test_a_bigger_same_seed_world_is_flagged_as_sharing_training_clips(world: Path, tmp_path: Path) -> None:
    """Clip i depends on the seed, not on the world's size, so a bigger world with the same seed holds the
    training clips of a run trained on this one (the check ``polymodal eval`` runs, without a checkpoint)."""
    import yaml

    from polymodal.data.formats import read_source
    from polymodal.data.world.overlap import TrainingWorld
    from polymodal.evaluate import read_splits

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"train": [{"format": "jsonl", "path": str(world / "train.jsonl")}]}}))
    bigger, other = tmp_path / "bigger", tmp_path / "other"
    write_av_world(bigger, 40, SEED, frames=FRAMES, size=SIZE, progress=False, workers=1)
    write_av_world(other, 40, SEED + 1, frames=FRAMES, size=SIZE, progress=False, workers=1)

    def test_samples(root: Path) -> list:
        return list(read_source(read_splits(root / "data.yaml")["test"][0]))

    trained = {r["clip_id"] for r in _jsonl(world / "train.jsonl")}
    tested = {r["clip_id"] for r in _jsonl(bigger / "test.jsonl")}
    trained_on = TrainingWorld.of_run(run)
    assert trained_on is not None
    seen = trained_on.seen_in(test_samples(bigger))
    assert seen is not None and seen.to_dict()["shared"] == len(trained & tested) > 0 and seen.to_dict()["of"] == len(tested)
    assert "clips are training clips" in seen.message("test") and "av-world --seed" in seen.message("test")
    assert trained_on.seen_in(test_samples(other)) is None  # another seed: other clips
    assert trained_on.seen_in(test_samples(world)) is None  # the training world's own test split
