"""Audio + video + text classifiers train end to end from a JSONL of files, and evaluate from the checkpoint
with the same decoding (the media settings travel in processors.json)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from polymodal.config import load_config
from polymodal.train.trainer import Trainer

sf = pytest.importorskip("soundfile")
pytest.importorskip("av")

RATE = 8000
AUDIO = {"name": "audio", "n_mels": 16, "width": 32, "depth": 1, "heads": 2}
VIDEO = {"name": "video", "frame_encoder": {"name": "cnn", "image_size": 32, "channels": [8, 16], "width": 32}, "temporal": "mean"}
TEXT = {"name": "text_transformer", "max_length": 16, "width": 32, "depth": 1, "heads": 2, "causal": False}


def _clip(root: Path, i: int, label: int, rng: np.random.Generator) -> dict:
    from polymodal.data.video import write_video

    pitch = 300.0 if label else 1200.0  # the label is in the sound ...
    t = np.arange(int(0.4 * RATE)) / RATE
    sf.write(root / f"{i}.wav", (0.4 * np.sin(2 * np.pi * pitch * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32), RATE)
    frames = np.zeros((4, 32, 32, 3), np.uint8)
    frames[..., 0 if label else 2] = 200  # ... and in the picture
    write_video(root / f"{i}.mp4", frames, fps=4)
    return {"id": i, "audio": f"{i}.wav", "video": f"{i}.mp4", "text": "what is this clip", "label": "low" if label else "high"}


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("test", 8)):
        rows = [_clip(root, f"{split}{i}", i % 2, rng) for i in range(n)]  # type: ignore[arg-type]
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # one test row whose sound file is missing: skipped by default, zero-filled on request
    (root / "test.jsonl").open("a").write(json.dumps({"id": "lost", "audio": "nowhere.wav", "video": "test0.mp4", "text": "x", "label": "low"}) + "\n")
    return root


def _config(tmp: Path, clips: Path, missing: str) -> Path:
    source = {"format": "jsonl", "root": str(clips), "id_field": "id", "image_field": None, "audio_field": "audio", "video_field": "video"}
    cfg = {
        "seed": 0,
        "output_dir": str(tmp / "run"),
        "data": {split: source | {"path": str(clips / f"{split}.jsonl")} for split in ("train", "test")},
        "model": {"type": "classifier", "encoders": {"audio": AUDIO, "video": VIDEO, "text": TEXT}, "stage": "late", "fusion": "concat", "fusion_dim": 32},
        "tokenizer": {"vocab_size": 50, "max_length": 16},
        "image": {"size": 32},
        "audio": {"sample_rate": RATE, "n_fft": 256, "hop_length": 80, "n_mels": 16, "time_masks": 1},
        "video": {"num_frames": 4},
        "missing_modality": missing,
        "optim": {"lr": 3e-3, "warmup_steps": 1},
        "train": {"task": "classification", "epochs": 8, "batch_size": 8, "eval_batch_size": 16, "num_workers": 0, "checkpoint_every": 1000},
    }
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("missing", ["skip", "learned"])
def test_audio_video_text_classifier_trains_and_reloads_its_decoding(tmp_path: Path, clips: Path, missing: str) -> None:
    from polymodal.evaluate import evaluate_checkpoint

    summary = Trainer(load_config(_config(tmp_path, clips, missing)), progress=False).fit()
    assert summary["test"]["accuracy"] >= 0.75  # the classes differ in both sound and colour
    processors = json.loads(next((tmp_path / "run").glob("checkpoints/step_*/processors.json")).read_text())
    assert processors["media"]["audio"]["n_mels"] == 16 and processors["media"]["video"]["num_frames"] == 4
    assert processors["media"]["missing"] == missing
    spec = tmp_path / "data.yaml"
    spec.write_text(yaml.safe_dump({"data": yaml.safe_load((tmp_path / "run.yaml").read_text())["data"]}))
    result = evaluate_checkpoint(tmp_path / "run", spec, splits=["test"], report=False)
    assert abs(result["metrics"]["test"]["accuracy"] - summary["test"]["accuracy"]) < 0.2
    expected = {"skipped": 1} if missing == "skip" else {"filled/audio": 1}
    assert result["splits"]["test"]["dropped"] == expected  # the row whose sound file is missing


def test_audio_text_retrieval_trains_a_dual_encoder_with_an_audio_tower(tmp_path: Path, clips: Path) -> None:
    """A sound takes the image's place: clips are padded with silence to one length (the tower has no mask)."""
    for split in ("train", "test"):
        rows = [json.loads(line) for line in (clips / f"{split}.jsonl").read_text().splitlines()]
        captions = [{"id": r["id"], "audio": r["audio"], "text": f"a {r['label']} tone"} for r in rows if r["id"] != "lost"]
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in captions))
    source = {"format": "jsonl", "root": str(clips), "id_field": "id", "image_field": None, "label_field": None, "audio_field": "audio"}
    cfg = {
        "seed": 0,
        "output_dir": str(tmp_path / "run"),
        "data": {split: source | {"path": str(tmp_path / f"{split}.jsonl")} for split in ("train", "test")},
        "model": {"type": "dual_encoder", "vision": AUDIO, "text": TEXT | {"causal": True}, "embed_dim": 16},
        "tokenizer": {"vocab_size": 50, "max_length": 16},
        "audio": {"sample_rate": RATE, "n_fft": 256, "hop_length": 80, "n_mels": 16, "max_seconds": 0.5},
        "optim": {"lr": 3e-3, "warmup_steps": 1},
        "train": {"task": "retrieval", "epochs": 2, "batch_size": 8, "eval_batch_size": 16, "num_workers": 0, "checkpoint_every": 1000},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    summary = Trainer(load_config(tmp_path / "run.yaml"), progress=False).fit()
    assert summary["steps"] == 6 and 0.0 <= summary["test"]["t2i_R@1"] <= 1.0
    processors = json.loads(next((tmp_path / "run").glob("checkpoints/step_*/processors.json")).read_text())
    media = processors["media"]
    assert media["audio_key"] == "image" and media["audio"]["pad_to_max"] and media["audio"]["max_seconds"] == 0.5


def test_video_qa_on_another_runs_frozen_image_tower_with_motion_tokens(tmp_path: Path, clips: Path) -> None:
    """The AV-world recipe in small: a first run's image tower becomes the frozen frame encoder of a video
    QA model (``frame_encoder: {name: run_vision, path: RUN, freeze: true}``, ``motion: true``). The
    video model learns; the tower's weights in its checkpoint are the first run's, untouched."""
    from PIL import Image
    from safetensors.torch import load_file

    from polymodal.data.video import read_video

    # run 1: a tiny image-text retrieval model on the clips' first frames
    rows = []
    for i, row in enumerate(json.loads(line) for line in (clips / "train.jsonl").read_text().splitlines()):
        Image.fromarray(read_video(clips / row["video"], num_frames=1)[0]).save(tmp_path / f"frame{i}.png")
        rows.append({"id": i, "image": f"frame{i}.png", "text": f"a {'red' if row['label'] == 'low' else 'blue'} picture"})
    (tmp_path / "frames.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    image_source = {"format": "jsonl", "path": str(tmp_path / "frames.jsonl"), "root": str(tmp_path), "id_field": "id", "label_field": None}
    first = {
        "seed": 0, "output_dir": str(tmp_path / "tower_run"), "data": {"train": image_source},
        "model": {"type": "dual_encoder", "vision": VIDEO["frame_encoder"], "text": TEXT | {"causal": True}, "embed_dim": 16},
        "tokenizer": {"vocab_size": 50, "max_length": 16}, "image": {"size": 32},
        "optim": {"lr": 3e-3, "warmup_steps": 1},
        "train": {"task": "retrieval", "epochs": 1, "batch_size": 8, "num_workers": 0, "checkpoint_every": 1000},
    }
    (tmp_path / "first.yaml").write_text(yaml.safe_dump(first))
    Trainer(load_config(tmp_path / "first.yaml"), progress=False).fit()
    tower = {k.split("image_encoder.", 1)[1]: v for k, v in load_file(next((tmp_path / "tower_run").glob("checkpoints/step_*/model.safetensors"))).items()
             if "image_encoder." in k}
    assert tower

    # run 2: video QA ("what colour is the clip?") over that tower, frozen, with motion tokens
    for split in ("train", "test"):
        qa = [{"id": r["id"], "video": r["video"], "text": "what colour is the clip?", "answers": ["red" if r["label"] == "low" else "blue"]}
              for r in map(json.loads, (clips / f"{split}.jsonl").read_text().splitlines()) if r["id"] != "lost"]
        (tmp_path / f"qa_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in qa))
    source = {"format": "jsonl", "root": str(clips), "id_field": "id", "image_field": None, "answers_field": "answers", "video_field": "video"}
    frame = {"name": "run_vision", "path": "tower_run", "freeze": True}  # relative to the config's folder
    second = {
        "seed": 0, "output_dir": str(tmp_path / "video_qa"),
        "data": {split: source | {"path": str(tmp_path / f"qa_{split}.jsonl")} for split in ("train", "test")},
        "model": {"type": "vqa", "vision": {"name": "video", "frame_encoder": frame, "temporal": "mean", "tokens": "patches", "motion": True},
                  "text": TEXT, "fusion_depth": 1},
        "tokenizer": {"vocab_size": 50, "max_length": 16}, "image": {"size": 32}, "video": {"num_frames": 4},
        "optim": {"lr": 1e-2, "warmup_steps": 1},  # the frozen tower trained for 3 steps: weak features, a larger step
        "train": {"task": "vqa", "epochs": 20, "batch_size": 8, "eval_batch_size": 16, "num_workers": 0, "checkpoint_every": 1000},
    }
    (tmp_path / "second.yaml").write_text(yaml.safe_dump(second))
    summary = Trainer(load_config(tmp_path / "second.yaml"), progress=False).fit()
    assert summary["test"]["accuracy"] >= 0.75
    weights = load_file(next((tmp_path / "video_qa").glob("checkpoints/step_*/model.safetensors")))
    frame_weights = {k.split("frame_encoder.", 1)[1]: v for k, v in weights.items() if "frame_encoder." in k}
    assert frame_weights.keys() == tower.keys() and all(frame_weights[k].equal(tower[k]) for k in tower)
    # nothing moves in these clips: the motion projection (zero-initialised) sees only zero changes, so its
    # weight gets no gradient and stays zero, while its bias (added to every token) is trained
    motion = {k.rsplit(".", 1)[1]: v for k, v in weights.items() if "motion_proj." in k}
    assert motion["weight"].abs().sum() == 0 and motion["bias"].abs().sum() > 0


def test_init_from_keeps_the_audio_and_video_decoding_the_weights_were_trained_on(tmp_path: Path, clips: Path) -> None:
    """A run started from an audio-video classifier decodes as that run did (8 kHz, 16 mel bands, 32 px
    frames), though its config gives none of it; changing what the weights read is refused."""
    from polymodal.errors import ConfigError

    (tmp_path / "first").mkdir()
    first = yaml.safe_load(_config(tmp_path / "first", clips, "skip").read_text())
    first["train"]["max_steps"] = 1
    (tmp_path / "first/run.yaml").write_text(yaml.safe_dump(first))
    Trainer(load_config(tmp_path / "first/run.yaml"), progress=False).fit()

    second = {k: v for k, v in first.items() if k not in ("model", "tokenizer", "image", "audio", "video")}
    second |= {"output_dir": str(tmp_path / "second"), "init_from": str(tmp_path / "first/run"), "audio": {"freq_masks": 1}}
    path = tmp_path / "second.yaml"
    path.write_text(yaml.safe_dump(second))
    trainer = Trainer(load_config(path), progress=False)
    trainer.fit()
    audio, frames = trainer.train_media.audio.config, trainer.train_media.video.config
    assert (audio.sample_rate, audio.n_mels, audio.hop_length, audio.freq_masks) == (RATE, 16, 80, 1)  # SpecAugment: this config's
    assert frames.num_frames == 4 and frames.image.size == 32
    written = yaml.safe_load((tmp_path / "second/config.yaml").read_text())
    assert written["audio"]["n_mels"] == 16 and written["image"]["size"] == 32  # the run records what it decoded with

    path.write_text(yaml.safe_dump(second | {"audio": {"n_mels": 32}}))
    with pytest.raises(ConfigError, match=r"audio: n_mels cannot be changed with init_from.*n_mels=16"):
        Trainer(load_config(path), progress=False, overwrite=True).fit()
    assert (tmp_path / "second/checkpoints").is_dir()  # the failed start removed nothing of the earlier run
    # the same inputs spelled out: f_max at Nyquist is the unset default, a stride is unused by uniform sampling
    path.write_text(yaml.safe_dump(second | {"audio": {"f_max": RATE / 2}, "video": {"stride": 2, "sampling": "uniform"}}))
    trainer = Trainer(load_config(path), progress=False, overwrite=True)
    trainer.setup()
    assert trainer.cfg.audio.f_max is None and trainer.cfg.video.stride == 4  # the run's own spelling
    path.write_text(yaml.safe_dump(second | {"audio": {"f_max": RATE / 4}}))
    with pytest.raises(ConfigError, match=r"audio: f_max cannot be changed with init_from.*f_max=4000.0"):
        Trainer(load_config(path), progress=False, overwrite=True).setup()
    path.write_text(yaml.safe_dump(second | {"video": {"sampling": "stride"}}))
    with pytest.raises(ConfigError, match=r"video: sampling cannot be changed with init_from.*sampling='uniform'"):
        Trainer(load_config(path), progress=False, overwrite=True).setup()


def test_init_from_an_audio_text_classifier_leaves_the_image_settings_to_the_config(tmp_path: Path, clips: Path) -> None:
    """A model that reads no pixels recorded image settings it never used: a config that gives others
    asks for no other input, and is not refused."""
    (tmp_path / "first").mkdir()
    first = yaml.safe_load(_config(tmp_path / "first", clips, "skip").read_text())
    first["model"]["encoders"].pop("video")
    first["train"]["max_steps"] = 1
    (tmp_path / "first/run.yaml").write_text(yaml.safe_dump(first))
    Trainer(load_config(tmp_path / "first/run.yaml"), progress=False).fit()
    second = {k: v for k, v in first.items() if k not in ("model", "tokenizer", "audio", "video")}
    second |= {"output_dir": str(tmp_path / "second"), "init_from": str(tmp_path / "first/run"), "image": {"size": 48}}
    (tmp_path / "second.yaml").write_text(yaml.safe_dump(second))
    trainer = Trainer(load_config(tmp_path / "second.yaml"), progress=False)
    trainer.setup()
    assert trainer.cfg.audio.n_mels == 16  # what its weights read still comes with them
