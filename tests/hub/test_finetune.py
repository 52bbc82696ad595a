"""Fine-tuning Hugging Face checkpoints with `polymodal train` (model type `pretrained`), on world data."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import safetensors.torch
import torch
import yaml

from polymodal.api import load_model
from polymodal.config import load_config
from polymodal.data.world import WorldConfig, generate_world
from polymodal.errors import ConfigError, DataError
from polymodal.evaluate import evaluate_checkpoint
from polymodal.train.checkpoint import latest_checkpoint
from polymodal.train.trainer import Trainer

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ftworld")
    generate_world(root, WorldConfig(num_scenes=30, seed=5, image_size=32), workers=1)
    return root


def questions(world: Path, split: str) -> dict:
    return {"format": "vqa_v2", "questions": str(world / f"vqa/questions_{split}.json"), "annotations": str(world / f"vqa/annotations_{split}.json"),
            "images": str(world / f"images/{split}"), "image_template": "{split}_{image_id:06d}.png"}


def captions(world: Path, split: str) -> dict:
    return {"format": "coco_captions", "annotations": str(world / f"annotations/captions_{split}.json"), "images": str(world / f"images/{split}")}


def run_config(tmp: Path, world: Path, model: dict, task: str = "retrieval", name: str = "run", extra: dict | None = None, **train: object) -> Path:
    cfg = {
        "seed": 3,
        "output_dir": str(tmp / name),
        "data": {split: captions(world, split) for split in ("train", "val", "test")},
        "model": model,
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "train": {"task": task, "epochs": 1, "max_steps": 3, "batch_size": 8, "eval_batch_size": 32, "num_workers": 0,
                  "log_every": 1, "checkpoint_every": 1000} | train,
    } | (extra or {})
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def hf_weights(run: Path) -> dict[str, torch.Tensor]:
    """The fine-tuned transformers weights of a run's latest checkpoint, under transformers' own names."""
    tensors = safetensors.torch.load_file(str(latest_checkpoint(run) / "model.safetensors"))
    return {k.removeprefix("hf."): v for k, v in tensors.items()}


def image_features(clip: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    out = clip.get_image_features(pixel_values=pixels)  # a tensor in older transformers, an output in newer
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def take_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's gradients, cleared from it (so the next backward starts from zero)."""
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def test_clip_fine_tunes_on_coco_captions_and_the_run_reloads_as_plain_transformers_weights(tmp_path: Path, world: Path, hf_folders: dict[str, Path]) -> None:
    trainer = Trainer(load_config(run_config(tmp_path, world, {"type": "pretrained", "path": str(hf_folders["clip"])})), progress=False)
    summary = trainer.fit()
    run = tmp_path / "run"
    assert summary["steps"] == 3 and "t2i_R@1" in summary["test"]
    step = latest_checkpoint(run)
    assert (step / "hf" / "config.json").is_file() and (step / "hf" / "preprocessor_config.json").is_file()
    assert not (step / "hf" / "model.safetensors").exists()  # the weights are stored once, in model.safetensors

    base = transformers.CLIPModel.from_pretrained(hf_folders["clip"]).eval()
    tuned = transformers.CLIPModel.from_pretrained(hf_folders["clip"]).eval()
    missing, unexpected = tuned.load_state_dict(hf_weights(run), strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)
    model, proc = load_model(run)
    assert proc.model_type == "dual_encoder" and proc.task == "retrieval"
    pixels = proc.images([world / "images/test" / p for p in sorted((world / "images/test").iterdir())[:3]])
    ids, mask = proc.texts(["a red cube", "two blue spheres"])
    with torch.no_grad():
        ours = model.encode_image(pixels, normalize=False)
        assert torch.allclose(ours, image_features(tuned, pixels), atol=1e-5)
        assert not torch.allclose(ours, image_features(base, pixels), atol=1e-3)  # training changed the weights
        assert torch.allclose(model.encode_text(ids, mask), trainer.eval_model.eval().encode_text(ids, mask), atol=1e-6)


def test_bf16_residual_on_a_hugging_face_model_is_a_named_config_error(tmp_path: Path, world: Path, hf_folders: dict[str, Path]) -> None:
    path = run_config(tmp_path, world, {"type": "pretrained", "path": str(hf_folders["clip"])}, precision="bf16", bf16_residual=True)
    with pytest.raises(ConfigError, match="train.bf16_residual: this model has no polymodal transformer stack"):
        Trainer(load_config(path), progress=False).setup()


def test_frozen_text_tower_stays_bit_identical_while_the_image_tower_learns(tmp_path: Path, world: Path, hf_folders: dict[str, Path]) -> None:
    Trainer(load_config(run_config(tmp_path, world, {"type": "pretrained", "path": str(hf_folders["clip"]), "freeze": ["text"]})), progress=False).fit()
    tuned = hf_weights(tmp_path / "run")
    base = transformers.CLIPModel.from_pretrained(hf_folders["clip"]).state_dict()
    text = [k for k in base if k.startswith(("text_model.", "text_projection."))]
    vision = [k for k in base if k.startswith(("vision_model.", "visual_projection.")) and base[k].is_floating_point()]
    assert text and all(torch.equal(tuned[k], base[k]) for k in text if k in tuned)
    assert any(not torch.equal(tuned[k], base[k]) for k in vision)


def test_a_pretrained_fine_tune_loads_its_data_in_worker_processes(tmp_path: Path, world: Path, hf_folders: dict[str, Path]) -> None:
    """train.num_workers defaults to 2: the loader must take a transformers image processor (it crashed
    asking that processor for polymodal's decoded-image cache)."""
    summary = Trainer(load_config(run_config(tmp_path, world, {"type": "pretrained", "path": str(hf_folders["clip"])}, num_workers=2)), progress=False).fit()
    assert summary["steps"] == 3


def test_siglip_fine_tunes_with_its_sigmoid_loss(tmp_path: Path, world: Path, hf_folders: dict[str, Path]) -> None:
    summary = Trainer(load_config(run_config(tmp_path, world, {"type": "pretrained", "path": str(hf_folders["siglip"])})), progress=False).fit()
    assert summary["steps"] == 3 and 0.0 <= summary["test"]["t2i_R@1"] <= 1.0
    losses = [float(line.split(",")[-1]) for line in (tmp_path / "run/log.csv").read_text().splitlines() if ",train,loss," in line]
    assert len(losses) == 3 and all(math.isfinite(v) and v > 0 for v in losses)
    _, proc = load_model(tmp_path / "run")
    ids, _ = proc.texts(["a red cube"])
    assert ids.shape[1] == proc.max_length  # SigLIP keeps padding texts to its max_length after reloading


def test_blip_captioner_fine_tunes_and_the_reloaded_run_generates_the_same_captions(tmp_path: Path, world: Path, hf_folders: dict[str, Path]) -> None:
    trainer = Trainer(load_config(run_config(tmp_path, world, {"type": "pretrained", "path": str(hf_folders["blip_caption"])}, task="captioning", max_steps=2,
                                   extra={"data": {s: captions(world, s) for s in ("train", "test")}})), progress=False)  # no val: METEOR's JVM starts once
    summary = trainer.fit()
    assert "CIDEr" in summary["test"]
    model, proc = load_model(tmp_path / "run")
    pixels = proc.images([world / "images/test" / p for p in sorted((world / "images/test").iterdir())[:2]])
    assert torch.equal(model.generate(pixels, max_length=6).sequences, trainer.eval_model.eval().generate(pixels, max_length=6).sequences)


def test_blip_itm_fine_tunes_with_itc_and_hard_negative_itm(tmp_path: Path, world: Path, hf_folders: dict[str, Path]) -> None:
    trainer = Trainer(load_config(run_config(tmp_path, world, {"type": "pretrained", "path": str(hf_folders["blip_itm"])})), progress=False)
    summary = trainer.fit()
    assert summary["steps"] == 3 and 0.0 <= summary["test"]["t2i_R@1"] <= 1.0
    base = transformers.BlipForImageTextRetrieval.from_pretrained(hf_folders["blip_itm"]).state_dict()
    tuned = hf_weights(tmp_path / "run")
    assert not torch.equal(tuned["itm_head.weight"], base["itm_head.weight"])  # the ITM loss reached the head
    assert not torch.equal(tuned["vision_proj.weight"], base["vision_proj.weight"])  # and the ITC loss the projections
    model, proc = load_model(tmp_path / "run")
    assert proc.model_type == "matcher" and proc.task == "retrieval"
    pixels = proc.images([world / "images/test" / p for p in sorted((world / "images/test").iterdir())[:2]])
    ids, mask = proc.texts(["a red cube", "two blue spheres"])
    assert torch.allclose(model.match(pixels, ids, mask), trainer.eval_model.eval().match(pixels, ids, mask), atol=1e-6)


@pytest.mark.parametrize("family", ["vilt", "blip_vqa"])
def test_vqa_checkpoints_fine_tune_on_vqa_v2_data_and_reload(tmp_path: Path, world: Path, hf_folders: dict[str, Path], family: str) -> None:
    data = {"data": {s: questions(world, s) for s in ("train", "test")}}
    trainer = Trainer(load_config(run_config(tmp_path, world, {"type": "pretrained", "path": str(hf_folders[family])}, task="vqa", extra=data)), progress=False)
    summary = trainer.fit()
    assert summary["steps"] == 3 and 0.0 <= summary["test"]["accuracy"] <= 1.0
    losses = [float(line.split(",")[-1]) for line in (tmp_path / "run/log.csv").read_text().splitlines() if ",train,loss," in line]
    assert len(losses) == 3 and all(math.isfinite(v) and v > 0 for v in losses)
    base = transformers.AutoConfig.from_pretrained(hf_folders[family])
    tuned = hf_weights(tmp_path / "run")
    original = getattr(transformers, base.architectures[0]).from_pretrained(hf_folders[family]).state_dict()
    assert any(not torch.equal(tuned[k], original[k]) for k in tuned if k in original and original[k].is_floating_point())
    model, proc = load_model(tmp_path / "run")
    assert proc.model_type == "vqa" and proc.task == "vqa"
    if family == "vilt":  # the classifier keeps the checkpoint's answer labels, saved as the task's vocabulary
        assert proc.task_state["answer_vocab"]["answers"] == [base.id2label[i] for i in range(len(base.id2label))]
    pixels = proc.images([world / "images/test" / p for p in sorted((world / "images/test").iterdir())[:2]])
    ids, mask = proc.texts(["what color is the cube?", "how many spheres are there?"])
    assert model.answer(pixels, ids, mask) == trainer.eval_model.eval().answer(pixels, ids, mask)


def test_a_vilt_whose_labels_cover_no_training_answer_is_refused(tmp_path: Path, world: Path, hf_folders: dict[str, Path]) -> None:
    import json
    import shutil

    folder = shutil.copytree(hf_folders["vilt"], tmp_path / "vilt")
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {str(i): w for i, w in enumerate(["zebra", "kayak", "violin", "tundra"])}
    config["label2id"] = {w: i for i, w in config["id2label"].items()}
    (folder / "config.json").write_text(json.dumps(config))
    data = {"data": {s: questions(world, s) for s in ("train", "test")}}
    with pytest.raises(DataError, match=r"none of the \d+ training questions has an answer among the 4 answer labels"):
        Trainer(load_config(run_config(tmp_path, world, {"type": "pretrained", "path": str(folder)}, task="vqa", extra=data)), progress=False).fit()


def test_a_killed_pretrained_run_resumes_to_the_same_weights(tmp_path: Path, world: Path, hf_folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from polymodal.tasks.retrieval import RetrievalTask

    model = {"type": "pretrained", "path": str(hf_folders["clip"])}
    Trainer(load_config(run_config(tmp_path, world, model, name="full", max_steps=4)), progress=False).fit()
    calls, real_loss = [], RetrievalTask.loss

    def dies_in_step_three(self, model, batch):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed after the checkpoint of step 2
        return real_loss(self, model, batch)

    monkeypatch.setattr(RetrievalTask, "loss", dies_in_step_three)
    with pytest.raises(KeyboardInterrupt):
        Trainer(load_config(run_config(tmp_path, world, model, name="part", max_steps=4, checkpoint_every=2)), progress=False).fit()
    assert latest_checkpoint(tmp_path / "part").name == "step_00000002"
    monkeypatch.setattr(RetrievalTask, "loss", real_loss)
    Trainer(load_config(run_config(tmp_path, world, model, name="part", max_steps=4, checkpoint_every=2)), resume=True, progress=False).fit()
    full, resumed = hf_weights(tmp_path / "full"), hf_weights(tmp_path / "part")
    assert full.keys() == resumed.keys() and all(torch.allclose(full[k], resumed[k], atol=1e-6) for k in full)


def test_eval_runs_on_a_hugging_face_folder_and_on_a_fine_tuned_run(tmp_path: Path, world: Path, hf_folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "data.yaml"
    spec.write_text(yaml.safe_dump({"data": {"test": captions(world, "test")}}))
    raw = evaluate_checkpoint(hf_folders["clip"], spec, report=False)
    assert raw["task"] == "retrieval" and 0.0 <= raw["metrics"]["test"]["t2i_R@1"] <= 1.0
    assert Path(raw["eval_json"]).is_relative_to(tmp_path / "eval")  # not inside the (possibly read-only) checkpoint
    Trainer(load_config(run_config(tmp_path, world, {"type": "pretrained", "path": str(hf_folders["clip"])})), progress=False).fit()
    tuned = evaluate_checkpoint(tmp_path / "run", spec, report=False)
    assert tuned["model_type"] == "dual_encoder" and "t2i_R@1" in tuned["metrics"]["test"]
    spec.write_text(yaml.safe_dump({"data": {"test": questions(world, "test")}}))
    vqa = evaluate_checkpoint(hf_folders["vilt"], spec, out_dir=tmp_path / "vilt_eval", report=False)
    assert vqa["task"] == "vqa" and 0.0 <= vqa["metrics"]["test"]["accuracy"] <= 1.0


@pytest.mark.parametrize(
    "model, task, extra, message",
    [
        ({"path": "blip_itm"}, "captioning", {}, r"BlipForImageTextRetrieval \(matcher; train it with task 'retrieval'\)"),
        ({"path": "clip"}, "captioning", {}, r"train.task 'captioning' needs a captioner model.*CLIPModel.*task 'retrieval'"),
        ({"path": "clip"}, "retrieval", {"image": {"size": 64}}, r"image: size cannot be set when fine-tuning a pretrained checkpoint"),
        ({"path": "clip"}, "retrieval", {"image": {"mean": [0.5, 0.5, 0.5], "flip_prob": 0.5}}, r"image: mean cannot be set when fine-tuning"),
        ({"path": "clip", "freeze": ["audio"]}, "retrieval", {}, r"model.freeze"),
    ],
)
def test_fine_tuning_mistakes_are_named(tmp_path: Path, world: Path, hf_folders: dict[str, Path], model: dict, task: str, extra: dict, message: str) -> None:
    spec = {"type": "pretrained"} | model | {"path": str(hf_folders[model["path"]])}
    with pytest.raises(ConfigError, match=message):
        Trainer(load_config(run_config(tmp_path, world, spec, task=task, extra=extra)), progress=False).fit()


def test_the_shipped_clip_fine_tuning_config_is_valid() -> None:
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "finetune_clip_coco.yaml")
    assert cfg.model.type == "pretrained" and cfg.model.path == "clip-vit-base-patch32" and cfg.train.task == "retrieval"


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_accumulated_clip_and_siglip_steps_give_the_full_batch_gradients(hf_folders: dict[str, Path], family: str) -> None:
    """Gradient-cached accumulation on the Hugging Face towers: every gradient (scale and SigLIP's bias
    included) equals one step on the whole batch."""
    from polymodal.data.sample import Sample
    from polymodal.tasks.retrieval import RetrievalTask
    from polymodal.train.contrastive_accum import split_micro_batches

    model, proc = load_model(hf_folders[family])
    model.train()
    ids, mask = proc.texts(["a red cube", "two blue spheres", "the green cone", "a cube", "one sphere", "red"])
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(6, 3, 30, 30, generator=g), "text_ids": ids, "text_mask": mask,
             "samples": [Sample(sample_id=str(i), image_id=str(min(i, 4))) for i in range(6)]}
    task = RetrievalTask(proc.tokenizer, proc.max_length)
    assert task.keeps_negatives_across(model)

    task.loss(model, batch).loss.backward()
    full = take_grads(model)
    task.accumulated_loss(model, model, split_micro_batches(batch, 2))
    cached = take_grads(model)
    assert full.keys() == cached.keys() and "hf.logit_scale" in full and (family == "clip" or "hf.logit_bias" in full)
    for name in full:
        assert (cached[name] - full[name]).abs().max() <= 1e-6 * full[name].abs().max() + 1e-7, name


def test_full_batch_accumulation_is_refused_where_the_loss_needs_more_than_embeddings(tmp_path: Path, world: Path, hf_folders: dict[str, Path]) -> None:
    """BLIP's ITM head reads both towers' tokens: it cannot be scored from cached embeddings."""
    spec = {"type": "pretrained", "path": str(hf_folders["blip_itm"])}
    cfg = load_config(run_config(tmp_path, world, spec, accumulation=2, contrastive_accumulation="full_batch"))
    with pytest.raises(ConfigError, match="train.contrastive_accumulation: 'full_batch' needs a contrastive dual encoder"):
        Trainer(cfg, progress=False).fit()


@pytest.mark.parametrize("family, task_name", [("blip_caption", "captioning"), ("blip_vqa", "vqa")])
def test_blip_token_losses_are_weighed_by_the_tokens_they_average(hf_folders: dict[str, Path], family: str, task_name: str) -> None:
    """BLIP's losses are means over this process's labelled tokens: two micro-batches weighed by the
    tokens the task reports (as the trainer weighs them) give the whole batch's gradient, for captions
    and answers of different lengths."""
    from polymodal.data.sample import Sample
    from polymodal.tasks import build_task
    from polymodal.train.accumulation import MicroBatchWeights
    from polymodal.train.contrastive_accum import split_micro_batches

    model, proc = load_model(hf_folders[family])
    model.eval()  # no dropout: the two ways must see the same network
    texts = ["a red cube", "two blue spheres on the left of the green cone", "what is it", "how many red cubes are behind the sphere"]
    answers = [["yes"], ["the large green rubber cone"], ["2"], ["red metal cube"]]
    ids, mask = proc.texts(texts)
    batch = {"image": torch.randn(4, 3, 30, 30, generator=torch.Generator().manual_seed(0)), "text_ids": ids, "text_mask": mask,
             "answers": answers, "samples": [Sample(sample_id=str(i), image_id=str(i)) for i in range(4)]}
    task = build_task(task_name, proc.tokenizer, proc.max_length)

    task.loss(model, batch).loss.backward()
    full = take_grads(model)
    weights, micro = MicroBatchWeights(2), split_micro_batches(batch, 2)
    counts = []
    for part in micro:
        out = task.loss(model, part)
        counts.append(out.weight)
        (out.loss * weights.share(out.weight, out.weight)).backward()
    factor = weights.correction()
    accumulated = {n: g * factor for n, g in take_grads(model).items()}
    assert counts[0] != counts[1]  # the micro-batches hold different numbers of tokens, so the weighing matters
    assert full.keys() == accumulated.keys()
    for name in full:
        assert (accumulated[name] - full[name]).abs().max() <= 1e-5 * full[name].abs().max() + 1e-7, name
