"""Checkpoints: lossless round trips, atomic saves that survive crashes, retention, and clear errors."""

from __future__ import annotations

import json
import re
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from polymodal.data.processors import ImageProcessor, ImageProcessorConfig
from polymodal.data.tokenizers import train_tokenizer
from polymodal.errors import PolymodalError
from polymodal.models.vqa import AnswerVocab
from polymodal.train import checkpoint as ckpt
from polymodal.train.checkpoint import (
    Checkpoint,
    CheckpointError,
    best_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    mark_best,
    resolve_checkpoint,
    save_checkpoint,
)

CONFIG = {"type": "toy", "width": 8}


class TiedLM(nn.Module):
    """Embedding and output projection share one Parameter: both names appear in state_dict."""

    def __init__(self, vocab: int = 11, width: int = 6) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.mix = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("scale", torch.tensor([2.0]))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.embed(ids))) * self.scale)


class UntiedLM(TiedLM):
    def __init__(self, vocab: int = 11, width: int = 6) -> None:
        super().__init__(vocab, width)
        self.head.weight = nn.Parameter(torch.zeros(vocab, width))


def _mlp(out: int = 3) -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, out))


def _train(model: nn.Module, steps: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    for _ in range(steps):
        _step(model, opt, sched, torch.randn(5, 4))
    return opt, sched


def _step(model, opt, sched, x):
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    opt.step()
    sched.step()


def _draws() -> tuple:
    return (
        tuple(torch.rand(3).tolist()),
        tuple(np.random.rand(3).tolist()),
        random.random(),
        random.gauss(0, 1),
    )


def _save(run: Path, step: int, model: nn.Module | None = None, **kw) -> Path:
    return save_checkpoint(run, model=model or _mlp(), model_config=CONFIG, global_step=step, **kw)


# ----- round trip ---------------------------------------------------------------------------------


def test_round_trip_restores_weights_optimizer_scheduler_rng_and_train_state(tmp_path: Path) -> None:
    model = _mlp()
    opt, sched = _train(model)
    torch.manual_seed(123), np.random.seed(456), random.seed(789)
    random.gauss(0, 1)  # leaves a cached gaussian in python's state: it must survive too
    train_state = {
        "epoch": 1,
        "step_in_epoch": 3,
        "best": np.float64(0.25),
        "bad_evals": 1,
        "sampler_seed": 7,
        "history": [{"loss": 1.5}],
    }
    path = save_checkpoint(
        tmp_path,
        model=model,
        model_config=CONFIG,
        global_step=3,
        optimizer=opt,
        scheduler=sched,
        train_state=train_state,
    )
    expected_draws = _draws()
    x = torch.randn(5, 4)

    torch.manual_seed(999), np.random.seed(999), random.seed(999)  # a fresh process: other RNG states
    other = _mlp()
    other_opt, other_sched = _train(other, steps=1, seed=5)
    loaded = load_checkpoint(tmp_path)
    assert loaded.path == path and loaded.global_step == 3 and loaded.model_type == "toy"
    loaded.load_model_state(other)
    restored = loaded.load_training_state(other_opt, other_sched)

    assert _draws() == expected_draws
    assert restored == {**train_state, "best": 0.25, "global_step": 3}
    assert type(restored["best"]) is float
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    assert other_sched.last_epoch == sched.last_epoch == 3
    assert other_sched.get_last_lr() == sched.get_last_lr()
    for p, q in zip(model.parameters(), other.parameters()):
        s, t = opt.state[p], other_opt.state[q]
        assert torch.equal(s["exp_avg"], t["exp_avg"]) and torch.equal(s["exp_avg_sq"], t["exp_avg_sq"])
        assert float(s["step"]) == float(t["step"]) == 3
    # the resumed run takes exactly the step the original would have taken
    model.eval(), other.eval()
    _step(model, opt, sched, x)
    _step(other, other_opt, other_sched, x)
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.equal(a, b)


def test_layout_meta_and_pointer(tmp_path: Path) -> None:
    tok = train_tokenizer(["a red cube", "a blue ball"], vocab_size=60)
    path = _save(tmp_path, 42, tokenizer=tok, processors={"text_max_length": 16})
    assert path == tmp_path / "checkpoints" / "step_00000042"
    assert sorted(p.name for p in path.iterdir()) == sorted(
        [
            "model.safetensors",
            "model_config.json",
            "processors.json",
            "tokenizer.json",
            "training_state.pt",
            "meta.json",
        ]
    )
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000042"
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if ".tmp-" in p.name] == []
    meta = json.loads((path / "meta.json").read_text())
    import hashlib

    assert meta["model_sha256"] == hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    assert meta["global_step"] == 42 and meta["model_type"] == "toy"
    assert meta["torch_version"] == torch.__version__ and meta["polymodal_version"] and meta["created"]
    assert json.loads((path / "model_config.json").read_text()) == CONFIG
    assert json.loads((path / "processors.json").read_text()) == {
        "text_max_length": 16,
        "tokenizer": "tokenizer.json",
    }


def test_tied_weights_are_stored_once_and_come_back_tied(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TiedLM()
    path = _save(tmp_path, 1, model)
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert "embed.weight" in keys and "head.weight" not in keys  # one copy of the shared matrix
    fresh = TiedLM()
    load_checkpoint(path).load_model_state(fresh)
    assert fresh.head.weight is fresh.embed.weight
    assert torch.equal(fresh.embed.weight, model.embed.weight) and torch.equal(fresh.scale, model.scale)
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(fresh(ids), model(ids))
    # a model that does not tie them still gets both names filled (strict), from the recorded alias
    untied = UntiedLM()
    load_checkpoint(path).load_model_state(untied)
    assert torch.equal(untied.head.weight, model.embed.weight)


def test_wrapped_model_saves_bare_keys(tmp_path: Path) -> None:
    class Compiled(nn.Module):  # what torch.compile / DDP wrappers look like: the model one level down
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self._orig_mod = inner

    inner = _mlp()
    path = _save(tmp_path, 1, Compiled(inner))
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        assert set(f.keys()) == set(inner.state_dict())
    target = Compiled(_mlp())
    load_checkpoint(path).load_model_state(target)
    assert torch.equal(target._orig_mod[0].weight, inner[0].weight)


def test_tokenizer_and_processors_round_trip(tmp_path: Path) -> None:
    tok = train_tokenizer(["a red cube left of a ball", "two blue spheres"], vocab_size=80)
    image = ImageProcessor(ImageProcessorConfig(size=32, random_resized_crop=(0.8, 1.0)))
    vocab = AnswerVocab(("yes", "no", "2"))
    processors = {"image": image.to_dict(), "answer_vocab": vocab.to_dict(), "text_max_length": 16}
    _save(tmp_path, 1, tokenizer=tok, processors=processors)
    loaded = load_checkpoint(tmp_path)
    assert loaded.tokenizer is not None and "tokenizer" not in loaded.processors
    texts = ["a red ball left of two cubes"]
    assert torch.equal(loaded.tokenizer.encode(texts, 16).input_ids, tok.encode(texts, 16).input_ids)
    assert ImageProcessor.from_dict(loaded.processors["image"]).config == image.config
    assert AnswerVocab.from_dict(loaded.processors["answer_vocab"]) == vocab
    assert loaded.processors["text_max_length"] == 16


def test_training_state_is_weights_only_and_never_unpickled_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _mlp()
    opt, sched = _train(model)
    path = _save(tmp_path, 3, model, optimizer=opt, scheduler=sched)
    state = torch.load(path / "training_state.pt", weights_only=True)  # plain data and tensors only
    assert state["train_state"]["global_step"] == 3 and state["optimizer"]["state"]
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    loaded = load_checkpoint(path)
    loaded.load_model_state(_mlp())
    loaded.load_training_state(*_train(_mlp(), steps=1))
    assert calls == [True]


def test_unloadable_train_state_fails_before_anything_is_written(tmp_path: Path) -> None:
    first = _save(tmp_path, 1)
    with pytest.raises(CheckpointError, match=r"training_state\.pt.*'sampler'.*weights_only"):
        _save(tmp_path, 2, train_state={"sampler": object()})
    with pytest.raises(CheckpointError, match=r"model_config\.json"):
        save_checkpoint(tmp_path, model=_mlp(), model_config={"type": "toy", "bad": object()}, global_step=3)
    with pytest.raises(ValueError, match="reserved"):
        _save(tmp_path, 4, processors={"tokenizer": "x"})
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir()] == [first.name]
    assert latest_checkpoint(tmp_path) == first


# ----- atomicity -----------------------------------------------------------------------------------


def _only_step_dirs(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())


def test_crash_while_writing_weights_keeps_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _mlp()
    first = _save(tmp_path, 1, model)
    real = ckpt._write_bytes

    def dying_write(path: Path, data: bytes) -> None:
        if path.name == "model.safetensors":
            path.write_bytes(data[: len(data) // 2])  # half a file, then the "crash"
            raise OSError("disk full")
        real(path, data)

    monkeypatch.setattr(ckpt, "_write_bytes", dying_write)
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path, 2, _mlp())
    assert _only_step_dirs(tmp_path) == ["step_00000001"]  # the half-written folder is gone
    assert latest_checkpoint(tmp_path) == first
    target = _mlp()
    load_checkpoint(tmp_path).load_model_state(target)
    assert torch.equal(target[0].weight, model[0].weight)


def test_crash_at_rename_keeps_previous_and_latest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _save(tmp_path, 1)
    real = os.replace

    def failing_replace(src, dst):
        if ".tmp-" in str(src) and Path(src).is_dir():
            raise OSError("killed during rename")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="killed"):
        _save(tmp_path, 2)
    monkeypatch.undo()
    assert _only_step_dirs(tmp_path) == ["step_00000001"]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000001"
    assert latest_checkpoint(tmp_path) == first


def test_crash_before_pointer_update_leaves_latest_on_previous(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _save(tmp_path, 1)
    real = os.replace

    def failing_replace(src, dst):
        if Path(dst).name == "latest":
            raise OSError("killed before the pointer moved")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="pointer"):
        _save(tmp_path, 2)
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path) == first
    assert load_checkpoint(tmp_path).global_step == 1


def test_killed_save_leftover_is_ignored_then_cleaned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _save(tmp_path, 1)

    def killed(*args, **kwargs):  # SIGKILL: no except-clause cleanup runs
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "_remove", lambda path: None)
    monkeypatch.setattr(ckpt, "replace_dir", killed)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 2)
    monkeypatch.undo()
    leftovers = [p for p in (tmp_path / "checkpoints").iterdir() if ".tmp-" in p.name]
    assert len(leftovers) == 1 and (leftovers[0] / "model.safetensors").is_file()
    assert latest_checkpoint(tmp_path) == first and resolve_checkpoint(tmp_path) == first
    with pytest.raises(CheckpointError, match="unfinished"):
        resolve_checkpoint(leftovers[0])
    _save(tmp_path, 3)
    assert not leftovers[0].exists()
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_00000003"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_scratch_of_dead_process_cleaned_live_one_kept(tmp_path: Path) -> None:
    first = _save(tmp_path, 1)
    root = tmp_path / "checkpoints"
    dead, live = _dead_pid(), os.getppid()
    stale = root / f"step_00000009.tmp-{dead}"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    (root / f"latest.tmp-{dead}").write_text("step_00000009\n")
    busy = root / f"step_00000008.tmp-{live}"
    busy.mkdir()
    assert latest_checkpoint(tmp_path) == first  # loading ignores scratch
    _save(tmp_path, 2)
    assert not stale.exists() and not (root / f"latest.tmp-{dead}").exists()
    assert busy.exists()  # a live process' save is not ours to delete


def test_interrupted_replacement_of_same_step_is_recovered(tmp_path: Path) -> None:
    first = _save(tmp_path, 1)
    # a save of step 1 again died after moving the old folder aside, before moving the new one in
    aside = first.with_name(f"{first.name}.old-{_dead_pid()}")
    os.replace(first, aside)
    assert latest_checkpoint(tmp_path) is None
    _save(tmp_path, 2)
    assert first.is_dir() and not aside.exists()
    assert load_checkpoint(first).global_step == 1


def test_saving_the_same_step_twice_replaces_it(tmp_path: Path) -> None:
    a, b = _mlp(), _mlp()
    _save(tmp_path, 5, a)
    path = _save(tmp_path, 5, b)
    target = _mlp()
    load_checkpoint(path).load_model_state(target)
    assert torch.equal(target[0].weight, b[0].weight) and not torch.equal(target[0].weight, a[0].weight)
    assert _only_step_dirs(tmp_path) == ["step_00000005"]


# ----- retention and pointers ----------------------------------------------------------------------


def test_retention_keeps_last_n_and_best(tmp_path: Path) -> None:
    for step in range(1, 6):
        path = _save(tmp_path, step, keep_last=2)
        if step == 2:
            assert mark_best(tmp_path, path) == path
    assert _only_step_dirs(tmp_path) == ["step_00000002", "step_00000004", "step_00000005"]
    assert best_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_00000002"
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_00000005"
    _save(tmp_path, 6, keep_last=1, is_best=True)
    assert _only_step_dirs(tmp_path) == ["step_00000006"]
    assert best_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_00000006"


def test_keep_last_zero_keeps_everything(tmp_path: Path) -> None:
    for step in range(1, 5):
        _save(tmp_path, step, keep_last=0)
    assert len(_only_step_dirs(tmp_path)) == 4


def test_mark_best_rejects_other_paths(tmp_path: Path) -> None:
    _save(tmp_path, 1)
    with pytest.raises(CheckpointError, match="step_00000007.*not a complete checkpoint"):
        mark_best(tmp_path, "step_00000007")
    with pytest.raises(CheckpointError, match="not a step folder"):
        mark_best(tmp_path, tmp_path)
    assert best_checkpoint(tmp_path) is None


def test_broken_latest_pointer_falls_back_to_newest_complete(tmp_path: Path) -> None:
    _save(tmp_path, 1, keep_last=0)
    second = _save(tmp_path, 2, keep_last=0)
    (tmp_path / "checkpoints" / "latest").write_text("step_00000077\n")
    with pytest.warns(UserWarning, match="not a complete checkpoint"):
        assert latest_checkpoint(tmp_path) == second
    (second / "meta.json").unlink()  # an incomplete folder is never returned
    with pytest.warns(UserWarning):
        assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_00000001"


# ----- resolving paths ------------------------------------------------------------------------------


def test_resolve_checkpoint_accepts_run_checkpoints_and_step_dirs(tmp_path: Path) -> None:
    first = _save(tmp_path, 1, keep_last=0)
    second = _save(tmp_path, 2, keep_last=0)
    assert resolve_checkpoint(tmp_path) == second  # no best: latest
    assert resolve_checkpoint(tmp_path / "checkpoints") == second
    assert resolve_checkpoint(first) == first
    assert resolve_checkpoint(first / "model.safetensors") == first
    mark_best(tmp_path, first)
    assert resolve_checkpoint(tmp_path) == first  # best wins for a run folder
    assert resolve_checkpoint(str(tmp_path / "checkpoints")) == first


def test_resolve_checkpoint_errors_name_the_path(tmp_path: Path) -> None:
    garbage = tmp_path / "photos"
    garbage.mkdir()
    (garbage / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(
        CheckpointError,
        match=rf"no model\.safetensors in {garbage}: not a polymodal checkpoint \(expected model\.safetensors, model_config\.json",
    ):
        resolve_checkpoint(garbage)
    with pytest.raises(CheckpointError, match=rf"{tmp_path / 'nope'} does not exist"):
        resolve_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="is a file"):
        resolve_checkpoint(garbage / "cat.jpg")
    empty_run = tmp_path / "run"
    (empty_run / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=rf"{empty_run / 'checkpoints'} holds no complete checkpoint"):
        resolve_checkpoint(empty_run)
    assert latest_checkpoint(empty_run) is None and latest_checkpoint(tmp_path / "missing") is None
    assert issubclass(CheckpointError, PolymodalError)


# ----- load errors ---------------------------------------------------------------------------------


def test_incomplete_folder_names_the_missing_file(tmp_path: Path) -> None:
    path = _save(tmp_path, 1)
    (path / "processors.json").unlink()
    with pytest.raises(
        CheckpointError, match=rf"{path} is an incomplete checkpoint: missing processors\.json"
    ):
        load_checkpoint(path)


def test_wrong_model_type_names_both(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, model=_mlp(), model_config={"type": "captioner"}, global_step=1)
    with pytest.raises(CheckpointError, match=r"model_config\.json.*'captioner' model, but a 'vqa' model"):
        load_checkpoint(tmp_path, expect_type="vqa")
    assert load_checkpoint(tmp_path, expect_type="captioner").model_type == "captioner"


def test_missing_tokenizer_is_named(tmp_path: Path) -> None:
    tok = train_tokenizer(["a red cube"], vocab_size=40)
    path = _save(tmp_path, 1, tokenizer=tok)
    (path / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"missing tokenizer\.json"):
        load_checkpoint(path)
    # a hand-assembled copy whose meta.json does not list it: processors.json still asks for it
    meta = json.loads((path / "meta.json").read_text())
    meta["files"].remove("tokenizer.json")
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(
        CheckpointError, match=r"processors\.json says the text tokenizer is in 'tokenizer\.json'.*missing"
    ):
        load_checkpoint(path)


def test_shape_mismatch_names_tensor_file_and_shapes(tmp_path: Path) -> None:
    path = _save(tmp_path, 1, _mlp(out=3))
    model = _mlp(out=5)
    before = model[3].weight.clone()
    with pytest.raises(
        CheckpointError, match=r"model\.safetensors.*'3\.weight': checkpoint \(3, 8\), model expects \(5, 8\)"
    ) as info:
        load_checkpoint(path).load_model_state(model)
    assert str(path) in str(info.value)
    assert torch.equal(model[3].weight, before)  # nothing half-loaded


def test_missing_and_unexpected_tensors(tmp_path: Path) -> None:
    path = _save(tmp_path, 1, nn.Sequential(nn.Linear(4, 8)))
    bigger = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    with pytest.raises(CheckpointError, match=r"missing \['1\.weight', '1\.bias'\]"):
        load_checkpoint(path).load_model_state(bigger)
    load_checkpoint(path).load_model_state(bigger, strict=False)
    saved = load_checkpoint(path).model_state()
    assert torch.equal(bigger[0].weight, saved["0.weight"])


def test_corrupt_weights_fail_the_sha_check(tmp_path: Path) -> None:
    path = _save(tmp_path, 1)
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF  # one flipped bit in a weight: the header still parses, the numbers are wrong
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{path / 'model.safetensors'} is corrupt: its sha256"):
        load_checkpoint(path).load_model_state(_mlp())
    (path / "model.safetensors").write_bytes(bytes(data[:20]))  # truncated, and no sha to compare
    meta = json.loads((path / "meta.json").read_text())
    del meta["model_sha256"]
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(path).load_model_state(_mlp())


def test_training_state_errors(tmp_path: Path) -> None:
    path = _save(tmp_path, 1)  # saved without optimizer or scheduler
    loaded = load_checkpoint(path)
    opt, _ = _train(_mlp(), steps=1)
    with pytest.raises(CheckpointError, match=r"training_state\.pt holds no optimizer state"):
        loaded.load_training_state(opt)
    assert loaded.load_training_state()["global_step"] == 1
    (path / "training_state.pt").write_bytes(b"not a torch file")
    with pytest.raises(
        CheckpointError, match=r"training_state\.pt: cannot be read with torch\.load\(weights_only=True\)"
    ):
        loaded.load_training_state()
    (path / "training_state.pt").unlink()
    (path / "meta.json").write_text(
        json.dumps({**loaded.meta, "files": [f for f in loaded.meta["files"] if f != "training_state.pt"]})
    )
    with pytest.raises(CheckpointError, match="weights only"):
        load_checkpoint(path).load_training_state()
    assert isinstance(load_checkpoint(path), Checkpoint)  # inference does not need it


def test_optimizer_of_another_model_is_rejected(tmp_path: Path) -> None:
    model = _mlp()
    opt, _ = _train(model)
    path = _save(tmp_path, 1, model, optimizer=opt)
    other_opt = torch.optim.AdamW(nn.Linear(2, 2).parameters())
    with pytest.raises(CheckpointError, match=r"training_state\.pt: cannot restore the optimizer state"):
        load_checkpoint(path).load_training_state(other_opt)


def test_newer_format_is_refused(tmp_path: Path) -> None:
    path = _save(tmp_path, 1)
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(CheckpointError, match=r"meta\.json: checkpoint format 99 is newer"):
        load_checkpoint(path)
    for edited in ("1", 0, True, 1.5):  # was called 'newer than this polymodal reads'
        (path / "meta.json").write_text(json.dumps({**meta, "format_version": edited}))
        with pytest.raises(CheckpointError, match=rf"meta\.json: format_version is {re.escape(repr(edited))}; polymodal writes a whole number from 1"):
            load_checkpoint(path)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="global_step"):
        _save(tmp_path, -1)
    with pytest.raises(ValueError, match="keep_last"):
        _save(tmp_path, 1, keep_last=-1)
    with pytest.raises(ValueError, match="disagrees"):
        _save(tmp_path, 1, train_state={"global_step": 2})


@pytest.mark.parametrize("name", ["captioner-tiny", "vqa-tiny"])
def test_real_models_round_trip_from_their_pydantic_config(tmp_path: Path, name: str) -> None:
    from polymodal.models.factory import BuildContext, build_model, load_model_config

    tok = train_tokenizer(["a red cube left of a ball", "two blue spheres"], vocab_size=80)
    vocab = AnswerVocab(("yes", "no", "2"))
    config = load_model_config(name)
    torch.manual_seed(0)
    model = build_model(config, BuildContext(tokenizer=tok, answer_vocab=vocab))
    save_checkpoint(
        tmp_path,
        model=model,
        model_config=config,
        global_step=1,
        tokenizer=tok,
        processors={"answer_vocab": vocab.to_dict()},
    )
    loaded = load_checkpoint(tmp_path, expect_type=config.type)
    torch.manual_seed(1)
    ctx = BuildContext(
        tokenizer=loaded.tokenizer, answer_vocab=AnswerVocab.from_dict(loaded.processors["answer_vocab"])
    )
    rebuilt = build_model(loaded.model_config, ctx)
    loaded.load_model_state(rebuilt)
    for (k, a), b in zip(model.state_dict().items(), rebuilt.state_dict().values()):
        assert torch.equal(a, b), k


def test_tied_model_loads_a_file_without_alias_metadata(tmp_path: Path) -> None:
    import hashlib

    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = TiedLM()
    path = _save(tmp_path, 1, model)
    # as written by another tool: the shared matrix once, no polymodal metadata
    plain = {k: v.clone() for k, v in model.state_dict().items() if k != "head.weight"}
    save_file(plain, str(path / "model.safetensors"))
    meta = json.loads((path / "meta.json").read_text())
    meta["model_sha256"] = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    (path / "meta.json").write_text(json.dumps(meta))
    fresh = TiedLM()
    load_checkpoint(path).load_model_state(fresh)  # strict: head.weight is covered by the tie
    assert torch.equal(fresh.head.weight, model.embed.weight)
    with pytest.raises(CheckpointError, match=r"missing \['head\.weight'\]"):
        load_checkpoint(path).load_model_state(UntiedLM())


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_sigkill_mid_save_always_leaves_a_loadable_latest(tmp_path: Path) -> None:
    import signal
    import time

    child = (
        "import sys, torch\n"
        "from torch import nn\n"
        "from polymodal.train.checkpoint import save_checkpoint\n"
        "model = nn.Linear(512, 512)\n"
        "for step in range(1, 10_000):\n"
        "    save_checkpoint(sys.argv[1], model=model, model_config={'type': 'toy'}, global_step=step, keep_last=2)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", child, str(tmp_path)])
    try:
        deadline = time.monotonic() + 60
        while (
            latest_checkpoint(tmp_path) is None or latest_checkpoint(tmp_path).name < "step_00000003"
        ) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(random.Random(0).uniform(0.0, 0.05))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    latest = latest_checkpoint(tmp_path)
    assert latest is not None, "the child never saved"
    loaded = load_checkpoint(tmp_path)
    assert loaded.path == latest
    loaded.load_model_state(nn.Linear(512, 512))  # sha256 verified, every tensor present
    _save(tmp_path, 10_000, nn.Linear(512, 512))  # the next save clears whatever the kill left
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if ".tmp-" in p.name or ".trash-" in p.name]
