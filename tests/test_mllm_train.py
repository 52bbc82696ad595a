"""The two-stage assistant recipe through the trainer: what each stage trains, checkpoints, evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

from polymodal.api import load_model
from polymodal.config import RunConfig
from polymodal.data.world.writer import WorldConfig, generate_world
from polymodal.errors import ConfigError, PolymodalError
from polymodal.models.mllm import MultimodalLM
from polymodal.models.tiny_lm import build_tiny_lm, world_corpus
from polymodal.train.checkpoint import latest_checkpoint, load_checkpoint
from polymodal.train.trainer import Trainer


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mllm_world") / "world"
    generate_world(root, WorldConfig(num_scenes=24, seed=3, image_size=32), workers=1)
    return root


@pytest.fixture(scope="module")
def lm(world: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mllm_lm") / "lm"
    build_tiny_lm(world_corpus(world), out, width=32, depth=1, heads=2, context=256, vocab_size=300, steps=2, batch_size=4, progress=False)
    return out


def _config(world: Path, lm: Path, out: Path, data: dict[str, Any], **model: Any) -> RunConfig:
    tree = {
        "seed": 0,
        "output_dir": str(out),
        "data": data,
        "model": {"type": "mllm", "vision": {"name": "cnn", "image_size": 32, "channels": [8, 16], "width": 16}, "lm": str(lm)} | model,
        "image": {"size": 32},
        "optim": {"lr": 1e-2, "warmup_steps": 0},
        "train": {"task": "mllm", "epochs": 1, "max_steps": 3, "batch_size": 4, "num_workers": 0, "eval_batch_size": 8, "max_eval_samples": 6},
    }
    return RunConfig.model_validate(tree)


def _captions(world: Path, split: str) -> dict:
    return {"format": "coco_captions", "annotations": str(world / f"annotations/captions_{split}.json"), "images": str(world / f"images/{split}")}


def _vqa(world: Path, split: str) -> dict:
    return {"format": "vqa_v2", "questions": str(world / f"vqa/questions_{split}.json"), "annotations": str(world / f"vqa/annotations_{split}.json"),
            "images": str(world / f"images/{split}"), "image_template": "{split}_{image_id:06d}.png"}


def _chats(world: Path, split: str) -> dict:
    return {"format": "llava", "path": str(world / f"conversations/{split}.json"), "images": str(world)}


def _weights(model: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def stage1(world: Path, lm: Path, tmp_path_factory) -> tuple[Path, Trainer]:
    out = tmp_path_factory.mktemp("stage1") / "run"
    trainer = Trainer(_config(world, lm, out, {"train": [_captions(world, "train")], "val": [_captions(world, "val")]}, freeze=["vision", "lm"]), progress=False)
    trainer.setup()
    before = {p: _weights(trainer.model, p) for p in ("lm.", "vision.", "connector.")}
    trainer.fit()
    after = {p: _weights(trainer.model, p) for p in ("lm.", "vision.", "connector.")}
    trainer.stage_changes = {p: any(not torch.equal(before[p][k], after[p][k]) for k in before[p]) for p in before}  # type: ignore[attr-defined]
    return out, trainer


def test_stage1_trains_only_the_connector(stage1) -> None:
    _, trainer = stage1
    assert trainer.stage_changes == {"lm.": False, "vision.": False, "connector.": True}


def test_stage1_checkpoint_carries_the_lm_files_and_reloads(stage1, world: Path) -> None:
    out, trainer = stage1
    ckpt = latest_checkpoint(out)
    assert ckpt is not None and (ckpt / "lm" / "config.json").is_file() and (ckpt / "lm" / "tokenizer.json").is_file()
    model, proc = load_model(out)
    assert isinstance(model, MultimodalLM) and proc.chat is not None and proc.model_type == "mllm"
    for k, v in trainer.model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v)
    ids, _n = proc.chat.prompt([("user", "<image>\nDescribe the image briefly.")])
    image = proc.images([world / "images/test" / min((world / "images/test").iterdir()).name])
    replies = model.generate([ids], image, max_new_tokens=4)
    assert len(replies.sequences[0]) <= 4
    metrics = (out / "metrics.json").read_text()
    assert "caption_CIDEr" in metrics


def test_stage2_starts_from_stage1_and_evaluates_generated_text(stage1, world: Path, lm: Path, tmp_path: Path) -> None:
    first, s1 = stage1
    data = {"train": [_chats(world, "train"), _vqa(world, "train")], "test": [_vqa(world, "test"), _captions(world, "test"), _chats(world, "test")]}
    cfg = _config(world, lm, tmp_path / "s2", data, freeze=[], init_from=str(first))
    trainer = Trainer(cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_eval_samples": None})}), progress=False)
    trainer.setup()
    for k, v in s1.model.state_dict().items():  # every weight of stage 1, the LM's and the vision tower's too
        torch.testing.assert_close(trainer.model.state_dict()[k], v)
    assert all(p.requires_grad for p in trainer.model.parameters())
    summary = trainer.fit()
    test = summary["test"]
    for key in ("vqa_accuracy", "caption_CIDEr", "caption_Bleu_4", "dialogue_loss", "dialogue_turn_accuracy"):
        assert key in test and test[key] >= 0
    assert 0 <= test["vqa_accuracy"] <= 1 and test["dialogue_loss"] > 0
    assert summary["test_details"]["vqa"]["by_family"] and summary["test_details"]["captioning"]["examples"]


def test_lora_stage_trains_adapters_and_reloads(stage1, world: Path, lm: Path, tmp_path: Path) -> None:
    pytest.importorskip("peft")
    first, _ = stage1
    cfg = _config(world, lm, tmp_path / "lora", {"train": [_chats(world, "train")]}, freeze=["vision"], init_from=str(first), lora={"r": 2, "alpha": 4})
    trainer = Trainer(cfg, progress=False)
    trainer.fit()
    model, _ = load_model(tmp_path / "lora")
    names = [n for n, _ in model.named_parameters()]
    assert any("lora_A" in n for n in names)
    for k, v in trainer.model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v)


def test_blind_run_never_loads_an_image(world: Path, lm: Path, tmp_path: Path) -> None:
    cfg = _config(world, lm, tmp_path / "blind", {"train": [_chats(world, "train")]})
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"blind": True})})
    trainer = Trainer(cfg, progress=False)
    trainer.setup()
    from polymodal.train.data import ResumableSampler, make_train_loader

    sampler = ResumableSampler(len(trainer.train_items), seed=0)
    loader = make_train_loader(trainer.train_items, trainer.train_processor, trainer.tokenizer, 32, 4, 0, sampler, seed=0, task=trainer.task)
    batch = next(iter(loader))
    assert "images" not in batch and (batch["input_ids"] == trainer.model.image_token_id).sum() == 0


def test_init_from_a_missing_run_names_the_key(world: Path, lm: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.init_from .*missing.* does not exist"):
        Trainer(_config(world, lm, tmp_path / "x", {"train": [_chats(world, "train")]}, init_from=str(tmp_path / "missing")), progress=False).setup()


def test_task_and_model_type_must_match(world: Path, lm: Path, tmp_path: Path) -> None:
    cfg = _config(world, lm, tmp_path / "y", {"train": [_chats(world, "train")]})
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"task": "vqa"})})
    with pytest.raises(ConfigError, match="needs a model of type 'vqa'"):
        Trainer(cfg, progress=False).setup()


def test_fixed_length_padding_is_refused_for_an_assistant(world: Path, lm: Path, tmp_path: Path) -> None:
    cfg = _config(world, lm, tmp_path / "z", {"train": [_chats(world, "train")]})
    cfg = cfg.model_copy(update={"tokenizer": cfg.tokenizer.model_copy(update={"padding": "max_length"})})
    with pytest.raises(ConfigError, match="tokenizer.padding: 'max_length'.*task mllm"):
        Trainer(cfg, progress=False).setup()


def test_checkpoint_reports_its_model_type(stage1) -> None:
    out, _ = stage1
    assert load_checkpoint(out).model_type == "mllm"


def test_eval_cli_path_scores_generated_text_and_reports_it(stage1, world: Path, tmp_path: Path) -> None:
    from polymodal.evaluate import evaluate_checkpoint

    out, _ = stage1
    result = evaluate_checkpoint(out, world, out_dir=tmp_path / "eval", splits=["test"], device="cpu", num_workers=0)
    metrics = result["splits"]["test"]["metrics"]
    assert 0 <= metrics["vqa_accuracy"] <= 1 and metrics["caption_CIDEr"] >= 0
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "vqa_accuracy" in report and "existence" in report  # the per-family table


def test_a_runs_vision_tower_is_a_pretrained_tower_for_the_next_model(stage1, world: Path, lm: Path, tmp_path: Path) -> None:
    """``vision: {name: run_vision, path: RUN}``: the weights and the image preprocessing of that run's tower."""
    first, s1 = stage1
    cfg = _config(world, lm, tmp_path / "z", {"train": [_captions(world, "train")]}, freeze=["vision", "lm"])
    tree = cfg.model_dump(mode="json")
    tree["model"]["vision"] = {"name": "run_vision", "path": str(first)}
    tree["image"] = {}  # the size comes from the run's tower
    trainer = Trainer(RunConfig.model_validate(tree), progress=False)
    trainer.setup()
    assert trainer.cfg.image.size == 32
    theirs = s1.model.vision.encoder.state_dict()
    for k, v in trainer.model.vision.encoder.state_dict().items():
        torch.testing.assert_close(v, theirs[k])
    assert not any(p.requires_grad for p in trainer.model.vision.parameters())
    trainer.model.train()
    assert not trainer.model.vision.encoder.training  # a frozen tower's batch-norm statistics never move
    tree["model"]["vision"]["path"] = str(tmp_path / "nowhere")
    with pytest.raises(PolymodalError, match="no run at .*nowhere.*Train that run first"):
        Trainer(RunConfig.model_validate(tree), progress=False).setup()


def test_a_conversation_about_two_images_batches_both_in_marker_order(world: Path, lm: Path, tmp_path: Path) -> None:
    import json

    from PIL import Image

    from polymodal.data.formats import read_source
    from polymodal.data.sources import LlavaSource
    from polymodal.tasks.mllm import ConversationCollator, ConversationDataset

    images = sorted(p.relative_to(world).as_posix() for p in (world / "images/train").iterdir())[:2]
    chat = [{"id": "pair", "image": images, "conversations": [{"from": "human", "value": "<image> or <image>: which has more cubes?"},
                                                              {"from": "gpt", "value": "the first"}]}]
    (tmp_path / "pair.json").write_text(json.dumps(chat))
    samples = list(read_source(LlavaSource(format="llava", path=tmp_path / "pair.json", images=world)))
    trainer = Trainer(_config(world, lm, tmp_path / "pair", {"train": [_chats(world, "train")]}), progress=False)
    trainer.setup()
    item = ConversationDataset(samples, trainer.task.encoder, trainer.eval_processor)[0]
    assert item is not None and item.images.shape[0] == 2
    expected = torch.stack([trainer.eval_processor(Image.open(world / p).convert("RGB")) for p in images])
    torch.testing.assert_close(item.images, expected)
    batch = ConversationCollator(trainer.tokenizer.pad_token_id)([item])
    out = trainer.model(batch["input_ids"], batch["attention_mask"], batch["images"], batch["labels"])
    assert torch.isfinite(out.loss) and int(out.tokens) > 0


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(world: Path, lm: Path, tmp_path: Path) -> None:
    """Conversations differ in length, so the loss is the mean over the assistant tokens of both ranks."""
    import json
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    def write(folder: Path, batch: int) -> Path:
        cfg = _config(world, lm, folder / "run", {"train": [_chats(world, "train")]}, freeze=["vision"])
        tree = cfg.model_dump(mode="json")
        tree["train"] |= {"batch_size": batch, "max_steps": 3}
        path = folder / "config.yaml"
        folder.mkdir()
        path.write_text(json.dumps(tree))
        return path

    env = dict(os.environ, OMP_NUM_THREADS="1")
    single, ddp = write(tmp_path / "one", 8), write(tmp_path / "two", 4)
    subprocess.run([sys.executable, "-m", "polymodal.cli", "train", str(single)], check=True, env=env, capture_output=True)
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541", "-m", "polymodal.cli",
                          "train", str(ddp)], check=False, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    a = load_file(str(latest_checkpoint(tmp_path / "one/run") / "model.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "two/run") / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5), name
    start = load_file(str(lm / "model.safetensors"))  # the runs did train: the LM moved from where it started
    assert not torch.allclose(a["lm.model.norm.weight"], start["model.norm.weight"])
