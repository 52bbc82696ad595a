"""The training loop end to end on a small built-in world: every task, resume after a kill, NaN stop."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from polymodal.config import load_config
from polymodal.data.world import WorldConfig, generate_world
from polymodal.errors import ConfigError, DataError, PolymodalError
from polymodal.train.trainer import Trainer, TrainingDiverged
from tests.cli_runner import run_cli

VIT = {"name": "vit", "image_size": 32, "patch_size": 8, "width": 32, "depth": 1, "heads": 2}
TEXT = {"name": "text_transformer", "max_length": 32, "width": 32, "depth": 1, "heads": 2}
TPL = "{split}_{image_id:06d}.png"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("trainworld")
    generate_world(root, WorldConfig(num_scenes=60, seed=2, image_size=32), workers=1)
    return root


def sources(world: Path, kind: str, split: str) -> dict | list[dict]:
    if kind == "all":
        return [sources(world, k, split) for k in ("captions", "vqa", "statements")]  # type: ignore[misc]
    if kind == "captions":
        return {"format": "coco_captions", "annotations": str(world / f"annotations/captions_{split}.json"), "images": str(world / f"images/{split}")}
    if kind == "vqa":
        return {"format": "vqa_v2", "questions": str(world / f"vqa/questions_{split}.json"), "annotations": str(world / f"vqa/annotations_{split}.json"), "images": str(world / f"images/{split}"), "image_template": TPL}
    return {"format": "jsonl", "path": str(world / f"classification/{split}.jsonl"), "root": str(world), "id_field": "id"}


MODELS = {
    "retrieval": ("captions", {"type": "dual_encoder", "vision": VIT, "text": TEXT | {"causal": True}, "embed_dim": 32}),
    "captioning": ("captions", {"type": "captioner", "vision": VIT, "decoder": TEXT | {"causal": True}}),
    "vqa": ("vqa", {"type": "vqa", "vision": VIT, "text": TEXT | {"causal": False}, "fusion_depth": 1}),
    "classification": ("statements", {"type": "classifier", "encoders": {"image": VIT, "text": TEXT | {"causal": False}}, "stage": "late", "fusion": "concat", "fusion_dim": 32}),
    "multitask": ("all", {"type": "multitask", "vision": {"name": "cnn", "image_size": 32, "channels": [8, 16], "width": 32, "positions": True},
                          "text": TEXT | {"causal": False}, "decoder": TEXT, "fusion_depth": 1, "dropout": 0.0}),
}


def write_config(tmp: Path, world: Path, task: str, **train: object) -> Path:
    kind, model = MODELS[task]
    cfg = {
        "seed": 1,
        "output_dir": str(tmp / "run"),
        "data": {split: sources(world, kind, split) for split in ("train", "val", "test")},
        "model": model,
        "tokenizer": {"vocab_size": 200, "max_length": 32},
        "image": {"size": 32},
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "train": {"task": task, "epochs": 1, "batch_size": 16, "eval_batch_size": 64, "num_workers": 0, "log_every": 1, "checkpoint_every": 1000} | train,
    }
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(
    "task, metric",
    [("retrieval", "t2i_R@1"), ("captioning", "CIDEr"), ("vqa", "accuracy"), ("classification", "accuracy"), ("multitask", "vqa/accuracy")],
)
def test_every_task_trains_evaluates_and_writes_a_run(tmp_path: Path, world: Path, task: str, metric: str) -> None:
    cfg = load_config(write_config(tmp_path, world, task, max_steps=4, epochs=3))  # a multitask epoch is one pass over images
    summary = Trainer(cfg, progress=False).fit()
    run = tmp_path / "run"
    assert summary["steps"] == 4 and metric in summary["test"]
    assert 0.0 <= summary["test"][metric] <= (10.0 if metric.endswith("CIDEr") else 1.0)
    assert json.loads((run / "metrics.json").read_text())["test"][metric] == pytest.approx(summary["test"][metric])
    log = (run / "log.csv").read_text().splitlines()
    assert log[0] == "step,epoch,split,name,value" and any(",train,loss," in line for line in log)
    assert (run / "checkpoints" / "best").is_file() and (run / "tokenizer.json").is_file() and (run / "config.yaml").is_file()



@pytest.mark.parametrize("task, opened", [("captioning", True), ("retrieval", False)])
def test_each_evaluation_of_a_captioning_run_starts_one_meteor_jar_early(tmp_path: Path, world: Path, monkeypatch: pytest.MonkeyPatch, task: str, opened: bool) -> None:
    """METEOR's jar takes seconds to start: an evaluation that scores captions opens a session before it
    generates them (the jar starts meanwhile) and closes it after; other tasks start none."""
    import contextlib

    import polymodal.train.trainer as trainer_module

    events: list[str] = []

    @contextlib.contextmanager
    def recorded_session():  # type: ignore[no-untyped-def]
        events.append("open")
        yield None
        events.append("closed")

    monkeypatch.setattr(trainer_module, "meteor_session", recorded_session)
    summary = Trainer(load_config(write_config(tmp_path, world, task, max_steps=2)), progress=False).fit()
    assert summary["test"]
    if opened:  # validation after the epoch, then the test split: a jar each, closed after
        assert len(events) >= 4 and events == ["open", "closed"] * (len(events) // 2), events
    else:
        assert events == []


def test_training_lowers_the_loss(tmp_path: Path, world: Path) -> None:
    cfg = load_config(write_config(tmp_path, world, "vqa", epochs=4))
    Trainer(cfg, progress=False).fit()
    losses = [float(line.split(",")[-1]) for line in (tmp_path / "run/log.csv").read_text().splitlines() if ",train,loss," in line]
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses


def test_the_log_splits_each_step_into_data_wait_and_compute(tmp_path: Path, world: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A loader that takes 50 ms per batch must show up as data_seconds, not as step time."""
    import csv

    import polymodal.train.trainer as trainer_module

    real = trainer_module.make_train_loader

    class SlowLoader:
        def __init__(self, loader: object) -> None:
            self.loader = loader

        def __iter__(self):
            for batch in self.loader:  # type: ignore[attr-defined]
                time.sleep(0.05)
                yield batch

    monkeypatch.setattr(trainer_module, "make_train_loader", lambda *a, **k: SlowLoader(real(*a, **k)))
    cfg = load_config(write_config(tmp_path, world, "retrieval", max_steps=3, log_every=1))
    Trainer(cfg, progress=False).fit()
    with open(tmp_path / "run/log.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "train"]
    data = {int(r["step"]): float(r["value"]) for r in rows if r["name"] == "data_seconds"}
    step = {int(r["step"]): float(r["value"]) for r in rows if r["name"] == "step_seconds"}
    assert sorted(data) == sorted(step) == [1, 2, 3]
    assert all(v >= 0.05 for v in data.values()), data
    assert all(v > 0 for v in step.values()), step


def test_nan_loss_stops_before_the_step_and_keeps_the_checkpoint(tmp_path: Path, world: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from polymodal.tasks.vqa import VQATask
    from polymodal.train.checkpoint import latest_checkpoint, load_checkpoint

    cfg = load_config(write_config(tmp_path, world, "vqa", checkpoint_every=2, max_steps=10))
    real = VQATask.loss
    calls = {"n": 0}

    def poisoned(self, model, batch):
        calls["n"] += 1
        out = real(self, model, batch)
        if calls["n"] == 4:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(VQATask, "loss", poisoned)
    with pytest.raises(TrainingDiverged, match="optimizer step 3") as err:
        Trainer(cfg, progress=False).fit()
    assert "step_00000002" in str(err.value)
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert ckpt.meta["global_step"] == 2
    assert all(torch.isfinite(t).all() for t in ckpt.model_state().values())


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    from polymodal.train.checkpoint import latest_checkpoint, load_checkpoint

    return load_checkpoint(latest_checkpoint(run)).model_state()


def test_resume_after_kill_matches_an_unbroken_run(tmp_path: Path, world: Path) -> None:
    """Kill a real training process mid-epoch (SIGKILL), resume it, and compare with an unbroken run."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    unbroken = write_config(tmp_path / "a", world, "vqa", epochs=2, checkpoint_every=3)
    broken = write_config(tmp_path / "b", world, "vqa", epochs=2, checkpoint_every=3)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "polymodal.cli", "train"]
    subprocess.run(cmd + [str(unbroken)], check=True, env=env, capture_output=True)

    proc = subprocess.Popen(cmd + [str(broken)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path / "b/run/checkpoints/latest"
    deadline = time.time() + 120
    while not latest.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "b/run/metrics.json").exists(), "the run finished before it could be killed"
    killed_at = latest.read_text().strip()
    subprocess.run(cmd + [str(broken), "--resume"], check=True, env=env, capture_output=True)

    a, b = _final_weights(tmp_path / "a/run"), _final_weights(tmp_path / "b/run")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), (name, killed_at)
    ma = json.loads((tmp_path / "a/run/metrics.json").read_text())["test"]
    mb = json.loads((tmp_path / "b/run/metrics.json").read_text())["test"]
    assert ma == pytest.approx(mb)


def test_config_mistakes_are_named(tmp_path: Path, world: Path) -> None:
    path = write_config(tmp_path, world, "vqa")
    with pytest.raises(ConfigError, match="needs a model of type 'dual_encoder', but model.type is 'vqa'"):
        Trainer(load_config(path, ["train.task=retrieval"]), progress=False).fit()
    with pytest.raises(ConfigError, match="unknown key 'train.epoch'"):
        load_config(path, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="early_stopping.metric 'bleu'"):
        Trainer(load_config(path, ["train.early_stopping={metric: bleu}", "train.max_steps=1"]), progress=False).fit()
    (tmp_path / "empty.json").write_text("{}")
    for tokenizer, message in [("nope_tok", r"tokenizer\.path: '.*nope_tok' is neither a folder"), ("empty.json", r"tokenizer\.path: .*empty\.json: not a valid tokenizer")]:
        with pytest.raises(PolymodalError, match=message):
            Trainer(load_config(path, [f"tokenizer.path={tokenizer}", "train.max_steps=1"]), progress=False).fit()


def test_a_run_folder_with_checkpoints_is_resumed_or_replaced_only_when_asked(tmp_path: Path, world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A second run into the same output_dir used to overwrite the first one's log and step files silently."""
    path = write_config(tmp_path, world, "retrieval", max_steps=4, checkpoint_every=2)
    Trainer(load_config(path), progress=False).fit()
    steps = sorted(p.name for p in (tmp_path / "run/checkpoints").glob("step_*"))
    log_before = (tmp_path / "run/log.csv").read_text()
    with pytest.raises(ConfigError, match=r"output_dir .*run already holds a run \(latest checkpoint step_00000004\); continue it with --resume"):
        Trainer(load_config(path, ["train.max_steps=2"]), progress=False).fit()
    assert sorted(p.name for p in (tmp_path / "run/checkpoints").glob("step_*")) == steps
    assert (tmp_path / "run/log.csv").read_text() == log_before
    Trainer(load_config(path, ["train.max_steps=2"]), progress=False, overwrite=True).fit()
    assert sorted(p.name for p in (tmp_path / "run/checkpoints").glob("step_*")) == ["step_00000002"]  # no orphaned step 4
    code, _, err = run_cli(capsys, "train", str(path), "--resume", "--overwrite")
    assert code == 2 and "give one of them" in err


def test_bf16_residual_trains_under_bf16_autocast_and_needs_it(tmp_path: Path, world: Path, caplog: pytest.LogCaptureFixture) -> None:
    from polymodal.modules.transformer import Transformer

    path = write_config(tmp_path, world, "retrieval", max_steps=2, precision="bf16", bf16_residual=True)
    with caplog.at_level("INFO", logger="polymodal"):
        trainer = Trainer(load_config(path), progress=False)
        summary = trainer.fit()
    assert summary["steps"] == 2 and math.isfinite(summary["test"]["t2i_R@1"])
    assert [m.bf16_residual for m in trainer.model.modules() if isinstance(m, Transformer)] == [True, True]
    assert "2 transformer stacks keep their residual stream in bf16" in caplog.text
    for precision in ("fp32", "fp16"):
        with pytest.raises(ConfigError, match=f"train.bf16_residual.*needs precision: bf16.*got precision: {precision}"):
            load_config(path, [f"train.precision={precision}"])


def _train_losses(run: Path) -> dict[int, float]:
    return {int(line.split(",")[0]): float(line.split(",")[-1]) for line in (run / "log.csv").read_text().splitlines() if ",train,loss," in line}


def with_scene_graphs(path: Path, world: Path) -> Path:
    """The multi-task run at ``path`` with the quickstart's object and grounding objectives (grounded readout)."""
    cfg = yaml.safe_load(path.read_text())
    cfg["data"]["train"].append({"format": "scenes", "path": str(world / "scenes/train.json"), "images": str(world / "images/train")})
    cfg["model"]["weights"] = {"itc": 1.0, "lm": 1.0, "vqa": 1.0, "cls": 1.0, "obj": 1.0, "ground": 1.0}
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_compiled_multitask_training_matches_eager_and_compiles_once_per_shape_kind(
    tmp_path: Path, world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train.compile on the model with every stack (packed on CPU when eager), string answers and the grounded
    readout. It crashed inside Dynamo (packing's custom autograd function); the batch's answer strings, traced,
    became guards (a recompile every step until Dynamo gave up and ran the forward eagerly); the readout's
    losses broke the graph at every boolean index."""
    import torch._dynamo

    modes: list[object] = []
    real_compile = torch.compile

    def recording_compile(model: object, **kwargs: object) -> object:
        modes.append(kwargs.get("mode"))
        return real_compile(model, **kwargs)

    monkeypatch.setattr(torch, "compile", recording_compile)
    steps = 4
    (tmp_path / "eager").mkdir()
    Trainer(load_config(with_scene_graphs(write_config(tmp_path / "eager", world, "multitask", max_steps=steps, epochs=5), world)), progress=False).fit()
    assert modes == []
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch._dynamo.utils.guard_failures.clear()
    (tmp_path / "compiled").mkdir()
    # reduce-overhead: on a CPU Inductor leaves out the CUDA graphs, but the trainer still marks each step before its forward
    from polymodal.tasks.multitask import MultiTaskTask

    events: list[str] = []
    real_mark, real_loss = torch.compiler.cudagraph_mark_step_begin, MultiTaskTask.loss
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: events.append("mark") or real_mark())
    monkeypatch.setattr(MultiTaskTask, "loss", lambda self, model, batch: events.append("forward") or real_loss(self, model, batch))
    compiled = with_scene_graphs(write_config(tmp_path / "compiled", world, "multitask", max_steps=steps, epochs=5, compile=True, compile_mode="reduce-overhead"), world)
    summary = Trainer(load_config(compiled), progress=False).fit()
    assert modes == ["reduce-overhead"] and events == ["mark", "forward"] * steps
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the forward did run compiled
    assert summary["steps"] == steps and math.isfinite(summary["test"]["vqa/accuracy"])
    eager, compiled_losses = _train_losses(tmp_path / "eager/run"), _train_losses(tmp_path / "compiled/run")
    assert sorted(eager) == sorted(compiled_losses) == list(range(1, steps + 1))
    for step in eager:  # the same batches and weights; eager packs the padded tokens away, compiled keeps them
        assert compiled_losses[step] == pytest.approx(eager[step], rel=2e-3), (step, eager, compiled_losses)
    # one graph: the answer targets come from the loader, the grounded readout and object losses read nothing back
    assert not torch._dynamo.utils.counters["graph_break"], dict(torch._dynamo.utils.counters["graph_break"])
    assert summary["test"]["vqa/accuracy"] >= 0.0 and any(",train,loss_ground," in line for line in (tmp_path / "compiled/run/log.csv").read_text().splitlines())
    # recompiles happen for new batch shapes (until dynamic shapes take over), never for the batch's contents
    reasons = [reason for failures in torch._dynamo.utils.guard_failures.values() for reason in failures]
    assert reasons and all(re.search(r"(size|stride) mismatch", reason) for reason in reasons), reasons


def test_texts_padded_to_max_length_compile_the_forward_once(tmp_path: Path, world: Path, caplog: pytest.LogCaptureFixture) -> None:
    """tokenizer.padding: max_length gives every batch the same shapes: no recompile, so CUDA graphs record one graph."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.guard_failures.clear()
    torch._dynamo.utils.counters.clear()
    # VQA: its questions' lengths differ from batch to batch (padded to the longest, step 2 recompiles)
    cfg = load_config(write_config(tmp_path, world, "vqa", max_steps=3, compile=True), ["tokenizer.padding=max_length"])
    trainer = Trainer(cfg, progress=False)
    summary = trainer.fit()
    assert summary["steps"] == 3 and trainer.tokenizer.pad_to_max_length
    assert "train.compile on a CPU" in caplog.text and "compile is for GPUs" in caplog.text  # slower than eager there
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    assert not torch._dynamo.utils.guard_failures, dict(torch._dynamo.utils.guard_failures)  # padded to the longest, it recompiled
    # the task gives the model its answer targets: strings reaching the compiled model would break its graph
    assert not torch._dynamo.utils.counters["graph_break"], dict(torch._dynamo.utils.counters["graph_break"])



@pytest.mark.parametrize("task", ["retrieval", "captioning", "classification"])
def test_every_task_trains_compiled_without_a_graph_break(tmp_path: Path, world: Path, task: str) -> None:
    """A break splits the compiled step into graphs run apart (and CUDA graphs recorded apart); VQA and the
    multi-task model are checked with their own compile tests above."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    summary = Trainer(load_config(write_config(tmp_path, world, task, max_steps=2, compile=True)), progress=False).fit()
    assert summary["steps"] == 2 and torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    assert not torch._dynamo.utils.counters["graph_break"], dict(torch._dynamo.utils.counters["graph_break"])


def test_compile_mode_mistakes_are_named(tmp_path: Path, world: Path) -> None:
    path = write_config(tmp_path, world, "retrieval", max_steps=1)
    with pytest.raises(ConfigError, match="train.compile_mode.*'max-autotune' is a torch.compile mode and acts only with compile: true"):
        load_config(path, ["train.compile_mode=max-autotune"])
    with pytest.raises(ConfigError, match="train.compile_mode.*Input should be 'default', 'reduce-overhead'"):
        load_config(path, ["train.compile=true", "train.compile_mode=fast"])
    for mode in ("reduce-overhead", "max-autotune"):  # CUDA graphs overwrite the gradients kept between micro-batches
        with pytest.raises(ConfigError, match=f"train.compile_mode.*'{mode}' replays CUDA graphs.*accumulation: 2.*accumulation: 1"):
            load_config(path, ["train.compile=true", "train.accumulation=2", f"train.compile_mode={mode}"])
    assert load_config(path, ["train.compile=true", "train.accumulation=2", "train.compile_mode=max-autotune-no-cudagraphs"]).train.accumulation == 2


@pytest.mark.parametrize("task", ["classification", "multitask"])
def test_corrupt_images_are_skipped_and_counted(tmp_path: Path, world: Path, caplog: pytest.LogCaptureFixture, task: str) -> None:
    import shutil

    copy = tmp_path / "w"
    shutil.copytree(world, copy)
    images = sorted((copy / "images/train").iterdir())
    broken = images[: int(0.3 * len(images))]
    for p in broken:
        p.write_bytes(b"not a png")
    cfg = load_config(write_config(tmp_path, copy, task, epochs=1, batch_size=8))
    cfg.data.val, cfg.data.test = [], []  # their images are intact; this is about training
    with caplog.at_level("WARNING"):
        summary = Trainer(cfg, progress=False).fit()
    assert summary["steps"] >= 1
    counted = [r.message for r in caplog.records if "samples skipped (unreadable" in r.message]
    assert counted
    skipped = sum(int(m.split(": ")[1].split()[0]) for m in counted)
    # every broken image is counted once per draw: each statement row (classification) or each image (multitask)
    assert skipped == (len(broken) * 2 if task == "classification" else len(broken))


@pytest.mark.parametrize(
    "task, accumulation, strategy, broken, port",
    [("retrieval", 1, "ddp", False, 29533), ("captioning", 1, "ddp", False, 29536), ("captioning", 2, "ddp", False, 29540),
     ("captioning", 2, "fsdp", False, 29541), ("classification", 1, "ddp", True, 29543), ("classification", 2, "ddp", True, 29542),
     ("retrieval", 1, "ddp", True, 29544), ("retrieval", 2, "ddp", True, 29545), ("retrieval-local", 2, "ddp", True, 29546),
     ("multitask", 1, "ddp", True, 29547), ("vqa", 1, "ddp", False, 29548)],
)
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(
    tmp_path: Path, world: Path, task: str, accumulation: int, strategy: str, broken: bool, port: int
) -> None:
    """torchrun with 2 CPU processes (gloo), batch 8 each, must reach the weights of one process with
    batch 16: retrieval gathers ITC negatives across ranks, captioning averages its loss over the
    tokens of both ranks (captions differ in length, so per-rank means would weight tokens unequally),
    and with 2 micro-batches of 4 a rank, over the tokens of both ranks and both micro-batches (the
    step's gradient is rescaled once its token count is known: on FSDP's sharded gradients too).
    With a fifth of the images unreadable, ranks and micro-batches hold different numbers of samples:
    each classification sample (a mean over its rank's samples) still weighs 1/N, and retrieval gathers
    the ranks' unequal batches (as micro-batches, and scored as one accumulated batch), and the multi-task
    loss weighs its caption LM (a mean over every rank's tokens) apart from its per-rank VQA and
    classification means."""
    if broken:
        import shutil

        shutil.copytree(world, tmp_path / "w")
        world = tmp_path / "w"
        for p in sorted((world / "images/train").iterdir())[::5]:
            p.write_bytes(b"not a png")
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    variant, task = task, task.removesuffix("-local")
    single = write_config(tmp_path / "one", world, task, batch_size=16, max_steps=4)
    ddp = write_config(tmp_path / "two", world, task, batch_size=8 // accumulation, accumulation=accumulation, max_steps=4, distributed=strategy)
    for path in (single, ddp):
        tree = yaml.safe_load(path.read_text())
        if task in ("classification", "vqa"):  # ranks draw their own dropout masks: none, to compare
            tree["model"]["dropout"] = 0.0
        if variant == "retrieval-local":  # each rank scores its own rows against every column
            tree["model"]["local_loss"] = True
        path.write_text(yaml.safe_dump(tree))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "polymodal.cli", "train", str(single)], check=True, env=env, capture_output=True)
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port), "-m", "polymodal.cli", "train", str(ddp)],
        env=env, capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    a, b = _final_weights(tmp_path / "one/run"), _final_weights(tmp_path / "two/run")
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5), name
    # the logged loss is over the items of every rank and micro-batch, as the one process logs it
    assert _logged_losses(tmp_path / "two/run") == pytest.approx(_logged_losses(tmp_path / "one/run"), rel=1e-5)
    # only rank 0 wrote checkpoints and logs
    assert len(list((tmp_path / "two/run/checkpoints").glob("step_*"))) >= 1
    assert not any(p.name.startswith("step_") and ".tmp" in p.name for p in (tmp_path / "two/run/checkpoints").iterdir())


def _logged_losses(run: Path) -> list[float]:
    return [float(line.split(",")[-1]) for line in (run / "log.csv").read_text().splitlines() if ",train,loss," in line]


def test_multitask_runs_under_two_process_ddp(tmp_path: Path, world: Path) -> None:
    """Every parameter of the multi-task model gets a gradient (DDP refuses unused ones), questions per
    image work per rank, ITM draws its hard negatives among the rank's own pairs (the ITC logits span
    both ranks), and rank 0 alone writes the run."""
    cfg = write_config(tmp_path, world, "multitask", batch_size=4, max_steps=2, questions_per_image=2)
    tree = yaml.safe_load(cfg.read_text())
    tree["model"]["weights"] = {"itc": 1.0, "itm": 1.0, "lm": 1.0, "vqa": 1.0, "cls": 1.0}
    cfg.write_text(yaml.safe_dump(tree))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29534", "-m", "polymodal.cli", "train", str(cfg)],
        env=env, capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["steps"] == 2 and "classification/text_only_accuracy" in summary["test"]


def test_two_process_fsdp_matches_one_process_and_resumes(tmp_path: Path, world: Path) -> None:
    """train.distributed: fsdp shards the model over 2 gloo processes; the full weights it writes equal a
    single process with the same global batch, load anywhere, and --resume continues the sharded run."""
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    single = write_config(tmp_path / "one", world, "retrieval", batch_size=16, max_steps=4)
    sharded = write_config(tmp_path / "two", world, "retrieval", batch_size=8, max_steps=4, distributed="fsdp", checkpoint_every=2)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "polymodal.cli", "train", str(single)], check=True, env=env, capture_output=True)
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29535", "-m", "polymodal.cli", "train", str(sharded)]
    out = subprocess.run(launch, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    a, b = _final_weights(tmp_path / "one/run"), _final_weights(tmp_path / "two/run")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5), name
    summary = json.loads((tmp_path / "two/run/metrics.json").read_text())
    assert "t2i_R@1" in summary["test"]  # rank 0 evaluated its gathered copy
    # resume the sharded run from step 2: the optimizer state is gathered and re-sharded
    for step in (tmp_path / "two/run/checkpoints").glob("step_*"):
        if step.name.endswith("00000004"):
            import shutil

            shutil.rmtree(step)
    (tmp_path / "two/run/checkpoints/latest").write_text("step_00000002\n")
    out = subprocess.run([*launch, "--resume"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    c = _final_weights(tmp_path / "two/run")
    for name in a:
        assert torch.allclose(a[name], c[name], atol=1e-5), name


def _train(tmp: Path, world: Path, name: str, **train: object) -> dict[str, torch.Tensor]:
    (tmp / name).mkdir()
    Trainer(load_config(write_config(tmp / name, world, "retrieval", **{"max_steps": 3} | train)), progress=False).fit()
    return _final_weights(tmp / name / "run")


def test_contrastive_accumulation_without_accumulation_is_said_to_do_nothing(tmp_path: Path, world: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"):
        _train(tmp_path, world, "one", max_steps=1, contrastive_accumulation="micro_batch")
    assert any("has no effect with train.accumulation: 1" in r.message for r in caplog.records)


def test_contrastive_accumulation_scores_the_whole_accumulated_batch(tmp_path: Path, world: Path) -> None:
    """Two micro-batches of 8 reach the weights of one batch of 16: every pair of the 16 is a negative.
    Summing micro-batch losses (the 'micro_batch' mode) sees 8 negatives a row and ends elsewhere."""
    whole = _train(tmp_path, world, "whole", batch_size=16)
    cached = _train(tmp_path, world, "cached", batch_size=8, accumulation=2)
    summed = _train(tmp_path, world, "summed", batch_size=8, accumulation=2, contrastive_accumulation="micro_batch")
    for name in whole:
        assert torch.allclose(whole[name], cached[name], atol=1e-6), name
    assert max((whole[n] - summed[n]).abs().max().item() for n in whole) > 1e-4


@pytest.mark.parametrize("strategy, port", [("ddp", 29537), ("fsdp", 29538)])
def test_contrastive_accumulation_under_two_processes_matches_one_batch(tmp_path: Path, world: Path, strategy: str, port: int) -> None:
    """2 processes x 2 micro-batches of 4 = one process with a batch of 16: the cached features are
    gathered across ranks, and the temperature's gradient reaches DDP/FSDP through the forward pass."""
    whole = _train(tmp_path, world, "whole", batch_size=16)
    (tmp_path / "two").mkdir()
    cfg = write_config(tmp_path / "two", world, "retrieval", batch_size=4, accumulation=2, max_steps=3, distributed=strategy)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port), "-m", "polymodal.cli", "train", str(cfg)]
    out = subprocess.run(launch, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    two = _final_weights(tmp_path / "two/run")
    for name in whole:
        assert torch.allclose(whole[name], two[name], atol=1e-5), name


def _init_config(tmp: Path, world: Path, start: Path, drop: tuple[str, ...] = ("model", "tokenizer", "image"), **train: object) -> Path:
    """A retrieval config that starts from the run ``start`` and leaves out what that run decides."""
    tmp.mkdir(exist_ok=True)
    path = write_config(tmp, world, "retrieval", **{"max_steps": 2} | train)
    tree = yaml.safe_load(path.read_text())
    for key in drop:
        tree.pop(key)
    path.write_text(yaml.safe_dump(tree | {"init_from": str(start)}))
    return path


def test_a_run_starts_from_another_runs_weights_tokenizer_and_preprocessing(tmp_path: Path, world: Path) -> None:
    from polymodal.api import load_model
    from polymodal.train.checkpoint import load_checkpoint

    first = _train(tmp_path, world, "first", batch_size=8)
    saved = load_checkpoint(tmp_path / "first/run")
    trainer = Trainer(load_config(_init_config(tmp_path / "second", world, tmp_path / "first/run")), progress=False)
    trainer.setup()
    assert trainer.model_config.model_dump() == saved.model_config
    state = trainer.model.state_dict()
    assert all(torch.equal(state[name], first[name]) for name in first)
    assert trainer.tokenizer.tokenizer.get_vocab() == saved.tokenizer.tokenizer.get_vocab() and trainer.max_length == saved.processors["text_max_length"]
    assert json.loads(json.dumps(trainer.eval_processor.to_dict())) == saved.processors["image"]  # 32 px: the default is 64

    summary = Trainer(load_config(_init_config(tmp_path / "third", world, tmp_path / "first/run")), progress=False).fit()
    assert summary["steps"] == 2 and "t2i_R@1" in summary["test"]
    tuned = _final_weights(tmp_path / "third/run")
    assert any(not torch.equal(tuned[name], first[name]) for name in first)  # it trained on from there
    written = yaml.safe_load((tmp_path / "third/run/config.yaml").read_text())
    assert written["model"]["type"] == "dual_encoder"  # the run is complete without the first one
    model, proc = load_model(tmp_path / "third/run")
    assert proc.max_length == saved.processors["text_max_length"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"init_from": "/no/such/run"}, r"init_from '/no/such/run': .*does not exist"),
        ({"model": MODELS["vqa"][1]}, r"holds a 'dual_encoder' model, but model.type is 'vqa'"),
        ({"tokenizer": {"vocab_size": 300}}, r"tokenizer: vocab_size cannot be set with init_from"),
        ({"image": {"size": 48, "flip_prob": 0.5}}, r"image: size cannot be changed with init_from: .*size=32"),
    ],
)
def test_init_from_mistakes_are_named(tmp_path: Path, world: Path, change: dict, message: str) -> None:
    _train(tmp_path, world, "first", batch_size=8, max_steps=1)
    path = _init_config(tmp_path / "second", world, tmp_path / "first/run")
    path.write_text(yaml.safe_dump(yaml.safe_load(path.read_text()) | change))
    with pytest.raises(ConfigError, match=message):
        Trainer(load_config(path), progress=False).fit()


def test_a_model_section_with_init_from_changes_the_runs_own_model(tmp_path: Path, world: Path) -> None:
    """`model: {vision: {freeze: true}}` (or `--set model.text.freeze=true`) locks one tower of the run
    it starts from; the rest of the model is that run's."""
    first = _train(tmp_path, world, "first", batch_size=8, max_steps=1)
    path = _init_config(tmp_path / "second", world, tmp_path / "first/run")
    path.write_text(yaml.safe_dump(yaml.safe_load(path.read_text()) | {"model": {"vision": {"freeze": True}}}))
    cfg = load_config(path, ["model.text.freeze=true", "model.text.freeze=false"])
    assert cfg.model.vision.options()["freeze"] is True and cfg.model.text.options()["freeze"] is False
    assert cfg.model.embed_dim == 32 and cfg.model.vision.options()["width"] == 32  # the first run's, not the defaults
    Trainer(cfg, progress=False).fit()
    tuned = _final_weights(tmp_path / "second/run")
    vision = [n for n in first if n.startswith("image_encoder.")]
    text = [n for n in first if n.startswith("text_encoder.")]
    assert vision and all(torch.equal(tuned[n], first[n]) for n in vision)
    assert any(not torch.equal(tuned[n], first[n]) for n in text)


def test_a_runs_own_config_resumes_with_accumulation_on_a_non_contrastive_task(tmp_path: Path, world: Path) -> None:
    """config.yaml spells out every setting; contrastive_accumulation left unset must not turn into a
    'full_batch' request that a captioner cannot honour when the run is resumed from it."""
    cfg = load_config(write_config(tmp_path, world, "captioning", batch_size=8, accumulation=2, max_steps=2, checkpoint_every=1))
    cfg.data.val = []
    Trainer(cfg, progress=False).fit()
    saved = load_config(tmp_path / "run/config.yaml", ["train.max_steps=3"])
    assert Trainer(saved, resume=True, progress=False).fit()["steps"] == 3


def test_an_init_from_run_resumes_from_its_own_checkpoint_after_the_first_run_moved(tmp_path: Path, world: Path) -> None:
    import shutil

    _train(tmp_path, world, "first", batch_size=8, max_steps=1)
    path = _init_config(tmp_path / "second", world, tmp_path / "first/run", max_steps=2, checkpoint_every=1)
    Trainer(load_config(path), progress=False).fit()
    written = yaml.safe_load((tmp_path / "second/run/config.yaml").read_text())
    assert written["image"]["size"] == 32 and written["model"]["type"] == "dual_encoder"  # what it ran with, not defaults
    from polymodal.train.checkpoint import load_checkpoint

    assert written["tokenizer"]["vocab_size"] == load_checkpoint(tmp_path / "first/run").tokenizer.vocab_size  # the one it used
    shutil.move(tmp_path / "first", tmp_path / "moved")
    partial = tmp_path / "partial.yaml"  # a LiT-style change to the first run's model, which is gone now
    partial.write_text(yaml.safe_dump(yaml.safe_load(path.read_text()) | {"model": {"vision": {"freeze": False}}}))
    for config in (path, tmp_path / "second/run/config.yaml", partial):  # as started, as written, with model changes
        summary = Trainer(load_config(config, ["train.max_steps=3"]), resume=True, progress=False).fit()
        assert summary["steps"] == 3
        shutil.rmtree(tmp_path / "second/run/checkpoints/step_00000003")
        (tmp_path / "second/run/checkpoints/latest").write_text("step_00000002\n")


@pytest.mark.parametrize("relabel", ["all", "some"])
def test_training_labels_outside_the_inherited_classes(tmp_path: Path, world: Path, relabel: str, caplog: pytest.LogCaptureFixture) -> None:
    """A classifier started from a run whose classes are '0'/'1': labels 'no'/'yes' are named in a
    DataError (not a NaN loss blamed on the learning rate); where only '1' became 'yes', those rows are
    left out and counted, and the rest trains."""
    import shutil

    (tmp_path / "first").mkdir()
    Trainer(load_config(write_config(tmp_path / "first", world, "classification", max_steps=1)), progress=False).fit()
    relabelled = tmp_path / "w"
    shutil.copytree(world, relabelled)
    names = ["no", "yes"] if relabel == "all" else ["0", "yes"]
    for split in ("train", "val", "test"):
        rows = [json.loads(line) for line in (relabelled / f"classification/{split}.jsonl").read_text().splitlines()]
        (relabelled / f"classification/{split}.jsonl").write_text("".join(json.dumps(r | {"label": names[int(r["label"])]}) + "\n" for r in rows))
    path = write_config(tmp_path, relabelled, "classification", max_steps=4, batch_size=2)
    tree = {k: v for k, v in yaml.safe_load(path.read_text()).items() if k not in ("model", "tokenizer", "image")}
    path.write_text(yaml.safe_dump(tree | {"init_from": str(tmp_path / "first/run")}))
    if relabel == "all":
        with pytest.raises(DataError, match=r"none of the 96 training targets is among the classes of init_from .*'no', 'yes'"):
            Trainer(load_config(path), progress=False).fit()
        return
    with caplog.at_level("WARNING"):
        trainer = Trainer(load_config(path), progress=False)
        assert trainer.fit()["steps"] == 4
    assert any("training samples have targets outside the classes" in r.message and "'yes'" in r.message for r in caplog.records)
    assert {str(s.label) for s in trainer.train_samples} == {"0"}


@pytest.mark.parametrize("accumulation", [2, 3])
def test_the_epochs_short_last_accumulation_step_is_a_mean_like_every_other(tmp_path: Path, world: Path, accumulation: int) -> None:
    """96 statements in micro-batches of 11: with accumulation 2 the epoch ends in a step of one
    micro-batch of 8 rows, whose loss must not be halved; with 3, in a step of 11 + 11 + 8 rows, where
    the 8 must weigh 8/30 of the step, not a third. Batches of 22 / 33 take the same rows in the same steps."""
    weights = []
    for name, train in (("whole", {"batch_size": 11 * accumulation}), ("accumulated", {"batch_size": 11, "accumulation": accumulation})):
        (tmp_path / name).mkdir()
        cfg = load_config(write_config(tmp_path / name, world, "classification", epochs=1, **train))
        cfg.data.val = []
        assert Trainer(cfg, progress=False).fit()["steps"] == math.ceil(96 / (11 * accumulation))
        weights.append(_final_weights(tmp_path / name / "run"))
    for name in weights[0]:
        assert torch.allclose(weights[0][name], weights[1][name], atol=1e-6), name


def test_accumulated_caption_batches_weigh_every_token_alike(tmp_path: Path, world: Path) -> None:
    """A caption loss is a mean over tokens, and captions differ in length: two micro-batches of 4 must
    reach the weights of one batch of 8 (the mean of the two micro-batch means would not)."""
    weights = []
    for name, train in (("whole", {"batch_size": 8}), ("accumulated", {"batch_size": 4, "accumulation": 2})):
        (tmp_path / name).mkdir()
        cfg = load_config(write_config(tmp_path / name, world, "captioning", max_steps=3, **train))
        cfg.data.val = []
        Trainer(cfg, progress=False).fit()
        weights.append(_final_weights(tmp_path / name / "run"))
    for name in weights[0]:
        assert torch.allclose(weights[0][name], weights[1][name], atol=1e-6), name


def test_a_batch_empty_on_one_rank_is_skipped_on_every_rank(tmp_path: Path, world: Path) -> None:
    """With single-sample batches and a third of the images unreadable, one rank's batch is empty while
    the other's is not: DDP must skip that step on both ranks instead of waiting forever."""
    import shutil

    copy = tmp_path / "w"
    shutil.copytree(world, copy)
    for p in sorted((copy / "images/train").iterdir())[::3]:
        p.write_bytes(b"not a png")
    cfg = write_config(tmp_path, copy, "classification", batch_size=1, max_steps=12)
    tree = yaml.safe_load(cfg.read_text())
    tree["data"].pop("val")
    cfg.write_text(yaml.safe_dump(tree))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29539", "-m", "polymodal.cli", "train", str(cfg)]
    out = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "dropped with another rank's empty batch" in out.stderr
    assert json.loads((tmp_path / "run/metrics.json").read_text())["steps"] == 12


def test_init_from_records_and_keeps_the_runs_draft_decoding_unless_the_config_changes_it(tmp_path: Path, world: Path) -> None:
    (tmp_path / "first").mkdir()
    first = write_config(tmp_path / "first", world, "retrieval", batch_size=8, max_steps=1)
    first.write_text(yaml.safe_dump(yaml.safe_load(first.read_text()) | {"image": {"size": 32, "jpeg_draft": True}}))
    Trainer(load_config(first), progress=False).fit()
    path = _init_config(tmp_path / "second", world, tmp_path / "first/run", max_steps=1)
    trainer = Trainer(load_config(path), progress=False)
    trainer.setup()
    assert trainer.eval_processor.config.jpeg_draft and trainer.cfg.image.jpeg_draft  # used, and what config.yaml records
    path.write_text(yaml.safe_dump(yaml.safe_load(path.read_text()) | {"image": {"jpeg_draft": False}}))
    trainer = Trainer(load_config(path), progress=False)
    trainer.setup()
    assert not trainer.eval_processor.config.jpeg_draft  # a decoding speed choice, the config's to make


def test_validation_labels_outside_the_training_classes_fail_before_training(tmp_path: Path, world: Path) -> None:
    """Found at the first validation, the error would end the run after a full epoch, before its checkpoint."""
    rows = [json.loads(line) for line in (world / "classification/val.jsonl").read_text().splitlines()]
    (tmp_path / "val_words.jsonl").write_text("".join(json.dumps(r | {"label": "yes" if r["label"] else "no"}) + "\n" for r in rows))
    path = write_config(tmp_path, world, "classification", max_steps=2)
    with pytest.raises(DataError, match=r"none of the \d+ val samples has a label among the model's classes \('0', '1'\)"):
        Trainer(load_config(path, [f"data.val={{format: jsonl, path: {tmp_path / 'val_words.jsonl'}, root: {world}, id_field: id}}"]), progress=False).fit()
    assert not (tmp_path / "run/checkpoints").exists()
