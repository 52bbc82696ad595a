"""``load_model``: a run folder in, the trained model and its exact preprocessing out.

The tiny runs trained here (one per task, 3 optimizer steps on a 60-scene world) are shared with
``tests/test_evaluate.py`` and ``tests/test_predict.py`` through :func:`tiny_runs`, which trains them
once per process.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from polymodal.api import Processors, load_model
from polymodal.data.images import open_image
from polymodal.errors import ConfigError, PolymodalError
from polymodal.train.checkpoint import CheckpointError

VIT = {"name": "vit", "image_size": 32, "patch_size": 8, "width": 32, "depth": 1, "heads": 2}
TEXT = {"name": "text_transformer", "max_length": 32, "width": 32, "depth": 1, "heads": 2}
TPL = "{split}_{image_id:06d}.png"
MODELS = {
    "retrieval": ("captions", {"type": "dual_encoder", "vision": VIT, "text": TEXT | {"causal": True}, "embed_dim": 32}),
    "captioning": ("captions", {"type": "captioner", "vision": VIT, "decoder": TEXT | {"causal": True}}),
    "vqa": ("vqa", {"type": "vqa", "vision": VIT, "text": TEXT | {"causal": False}, "fusion_depth": 1}),
    "classification": ("statements", {"type": "classifier", "encoders": {"image": VIT, "text": TEXT | {"causal": False}}, "stage": "late", "fusion": "concat", "fusion_dim": 32}),
    "multitask": ("all", {"type": "multitask", "vision": {"name": "cnn", "image_size": 32, "channels": [8, 16], "width": 32, "positions": True}, "text": TEXT | {"causal": False}, "decoder": TEXT, "fusion_depth": 1}),
}


@dataclass
class TinyRuns:
    world: Path
    runs: dict[str, Path]  # task -> run folder
    configs: dict[str, Path]  # task -> run config YAML
    trainers: dict[str, Any]  # task -> the Trainer after fit() (its model holds the final weights)


def _source(world: Path, kind: str, split: str) -> dict | list[dict]:
    if kind == "all":
        return [_source(world, k, split) for k in ("captions", "vqa", "statements")]  # type: ignore[misc]
    if kind == "captions":
        return {"format": "coco_captions", "annotations": str(world / f"annotations/captions_{split}.json"), "images": str(world / f"images/{split}")}
    if kind == "vqa":
        return {"format": "vqa_v2", "questions": str(world / f"vqa/questions_{split}.json"), "annotations": str(world / f"vqa/annotations_{split}.json"), "images": str(world / f"images/{split}"), "image_template": TPL}
    return {"format": "jsonl", "path": str(world / f"classification/{split}.jsonl"), "root": str(world), "id_field": "id"}


def _train(root: Path, world: Path, task: str) -> tuple[Path, Path, Any]:
    from polymodal.config import load_config
    from polymodal.train.trainer import Trainer

    kind, model = MODELS[task]
    cfg = {
        "seed": 1,
        "output_dir": str(root / task),
        "data": {split: _source(world, kind, split) for split in ("train", "val", "test")},
        "model": model,
        "tokenizer": {"vocab_size": 200, "max_length": 32},
        "image": {"size": 32},
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "train": {"task": task, "epochs": 1, "max_steps": 3, "batch_size": 16, "eval_batch_size": 64, "num_workers": 0, "log_every": 1, "checkpoint_every": 1000, "device": "cpu"},
    }
    path = root / f"{task}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    trainer = Trainer(load_config(path), progress=False)
    trainer.fit()
    return root / task, path, trainer


_CACHE: dict[str, TinyRuns] = {}


def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> TinyRuns:
    """Train the four tiny runs once per process (METEOR, which starts Java, is left out of captioning)."""
    if "runs" not in _CACHE:
        from polymodal.data.world import WorldConfig, generate_world
        from polymodal.tasks import captioning

        root = tmp_path_factory.mktemp("tiny_runs")
        world = root / "world"
        generate_world(world, WorldConfig(num_scenes=60, seed=2, image_size=32), workers=1)
        runs, configs, trainers = {}, {}, {}
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(captioning, "meteor_available", lambda: False)
            for task in MODELS:
                runs[task], configs[task], trainers[task] = _train(root, world, task)
        _CACHE["runs"] = TinyRuns(world, runs, configs, trainers)
    return _CACHE["runs"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> TinyRuns:
    return tiny_runs(tmp_path_factory)


def vqa_samples(runs: TinyRuns, split: str = "test", n: int = 10) -> list:
    from polymodal.config import parse_source
    from polymodal.data.formats import read_source

    spec = parse_source(_source(runs.world, "vqa", split), "test", runs.world)
    return [s for s in read_source(spec)][:n]


# ----------------------------------------------------------------------------------------------- tests


def test_vqa_answers_equal_the_trained_model(runs: TinyRuns) -> None:
    from polymodal import predict

    model, proc = load_model(runs.runs["vqa"])
    trainer = runs.trainers["vqa"]
    samples = vqa_samples(runs)
    expected = trainer.task.predict(trainer.model, samples, lambda ss, img=True: trainer.eval_loader(ss, img), torch.device("cpu"))
    got = predict.answer(model, proc, [s.image_path for s in samples], [s.text for s in samples])
    assert got == expected
    ids, mask = proc.texts([s.text for s in samples])
    pixels = proc.images([s.image_path for s in samples])
    trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(model(pixels, ids, mask).logits, trainer.model(pixels, ids, mask).logits)


@pytest.mark.parametrize("task", list(MODELS))
def test_every_model_type_loads_with_the_trained_weights(runs: TinyRuns, task: str) -> None:
    model, proc = load_model(runs.runs[task])
    assert isinstance(proc, Processors)
    assert not model.training
    assert proc.task == task and proc.max_length == 32 and proc.image.config.size == 32
    assert proc.tokenizer is not None and proc.tokenizer.vocab_size == runs.trainers[task].tokenizer.vocab_size
    trained = runs.trainers[task].model.state_dict()
    loaded = model.state_dict()
    assert loaded.keys() == trained.keys()
    assert all(torch.equal(loaded[k], trained[k]) for k in trained)
    if task == "vqa":
        assert list(model.vocab.answers) == proc.task_state["answer_vocab"]["answers"]
    if task == "classification":
        assert proc.task_state["classes"] == runs.trainers[task].task.classes


def test_processors_reproduce_the_training_preprocessing(runs: TinyRuns) -> None:
    _, proc = load_model(runs.runs["retrieval"] / "checkpoints")
    trainer = runs.trainers["retrieval"]
    paths = sorted((runs.world / "images/test").iterdir())[:3]
    pixels = proc.images(paths)
    assert pixels.shape == (3, 3, 32, 32) and pixels.dtype == torch.float32
    assert torch.equal(pixels[1], trainer.eval_processor(open_image(paths[1])))
    assert torch.equal(proc.images([open_image(paths[0])])[0], pixels[0])  # PIL images work too
    ids, mask = proc.texts(["a red cube", "two small blue spheres behind a cylinder"])
    enc = trainer.tokenizer.encode(["a red cube", "two small blue spheres behind a cylinder"], 32)
    assert torch.equal(ids, enc.input_ids) and torch.equal(mask, enc.attention_mask)
    assert ids.shape[0] == 2 and ids.shape[1] <= proc.max_length


def test_a_step_folder_loads_too(runs: TinyRuns) -> None:
    step = max((runs.runs["vqa"] / "checkpoints").glob("step_*"))
    _, proc = load_model(step)
    assert proc.source == str(step) and proc.model_type == "vqa"


def test_a_hub_name_not_on_disk_says_where_it_looked_and_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(PolymodalError, match="not on disk") as err:
        load_model("clip-vit-base-patch32")
    msg = str(err.value)
    assert "openai/clip-vit-base-patch32" in msg and str(tmp_path / "cache") in msg and "hf download" in msg
    with pytest.raises(PolymodalError, match="neither a folder .* nor a zoo name"):
        load_model("no-such-model")


def test_a_folder_that_is_not_a_checkpoint_is_named(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a polymodal checkpoint") as err:
        load_model(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_expect_type_rejects_another_model_type(runs: TinyRuns) -> None:
    with pytest.raises(CheckpointError, match="'vqa' model.*'dual_encoder'"):
        load_model(runs.runs["vqa"], expect_type="dual_encoder")
    model, _ = load_model(runs.runs["vqa"], expect_type="vqa")
    assert type(model).__name__ == "VQAClassifier"


def test_missing_image_is_named(runs: TinyRuns, tmp_path: Path) -> None:
    _, proc = load_model(runs.runs["vqa"])
    with pytest.raises(PolymodalError, match="nope.png"):
        proc.images([tmp_path / "nope.png"])


@pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(), reason="asserts the errors of a machine without a GPU")
@pytest.mark.parametrize(("name", "message"), [
    ("banana", "is not a device name"),
    ("cuda:0", "no CUDA device is available"),
    ("mps", "Apple's MPS backend is not available here"),  # was a bare RuntimeError when the model moved there
    ("meta", "polymodal runs on 'cpu', 'cuda' ('cuda:N') or 'mps'"),
])
def test_a_device_that_cannot_run_here_is_named(name: str, message: str) -> None:
    from polymodal.api import resolve_device

    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve_device(name)
    assert resolve_device(" CPU ") == resolve_device("auto") == torch.device("cpu")
