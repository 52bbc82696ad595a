"""--resume continues the saved run: settings its state depends on must not change, the rest may and are
named; the log keeps no rows from steps a killed run took past its last checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from polymodal.config import load_config
from polymodal.errors import ConfigError
from polymodal.train.checkpoint import latest_checkpoint
from polymodal.train.trainer import Trainer
from tests.train.test_trainer import world, write_config  # noqa: F401 - the module-scoped world fixture

__all__ = ["world"]


def _first_run(tmp_path: Path, world: Path, **train: object) -> Path:  # noqa: F811
    path = write_config(tmp_path, world, "retrieval", **{"max_steps": 4, "checkpoint_every": 2, "keep_checkpoints": 5} | train)
    Trainer(load_config(path), progress=False).fit()
    return path


@pytest.mark.parametrize(
    "change, named",
    [
        ("optim.lr=0.0005", r"optim\.lr 0\.001 -> 0\.0005 \(the restored optimizer and schedule keep the saved values\)"),
        ("train.batch_size=8", r"train\.batch_size 16 -> 8 \(the saved position in the epoch counts batches of the saved size\)"),
        ("image.mean=[0.5,0.5,0.5]", r"image\.mean \[0\.48145466, .*\] -> \[0\.5, 0\.5, 0\.5\] \(the saved weights were trained on that preprocessing\)"),
        ("model.embed_dim=16", r"model\.embed_dim 32 -> 16 \(the saved weights were built for it\)"),
        ("seed=2", r"seed 1 -> 2 \(it orders the samples of every epoch\)"),
        # keys on one side only: an encoder option added, an early-stopping rule added
        ("model.vision.pool=mean", r"model\.vision\.pool \(not set\) -> \"mean\" \(the saved weights were built for it\)"),
        ("train.early_stopping={metric: t2i_R@1}", r"train\.early_stopping\.metric \(not set\) -> \"t2i_R@1\" \(the restored best value"),
    ],
)
def test_a_setting_the_saved_state_depends_on_cannot_change_on_resume(tmp_path: Path, world: Path, change: str, named: str) -> None:  # noqa: F811
    """Before: a new lr was overridden by the restored optimizer while config.yaml recorded it, a new batch
    size restarted the epoch at the wrong sample, a new normalisation was taken silently, and a new
    embed_dim failed with 'pass strict=False', which the CLI cannot do."""
    path = _first_run(tmp_path, world)
    config_before = (tmp_path / "run/config.yaml").read_text()
    with pytest.raises(ConfigError, match=named) as refused:
        Trainer(load_config(path, [change, "train.max_steps=6"]), resume=True, progress=False).fit()
    assert "init_from:" in str(refused.value) and str(tmp_path / "run") in str(refused.value)
    assert (tmp_path / "run/config.yaml").read_text() == config_before  # still what the run trained with
    assert latest_checkpoint(tmp_path / "run").name == "step_00000004"


def test_operational_settings_and_the_schedule_may_change_and_are_named(tmp_path: Path, world: Path, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    path = _first_run(tmp_path, world)
    # encoder options spelled out at their defaults change nothing (encoder specs are free-form, so the
    # defaults come from the encoder itself)
    spelled_out = ["model.vision.pool=cls", "model.vision.activation=gelu", "model.vision.freeze=false"]
    with caplog.at_level("INFO", logger="polymodal"):
        summary = Trainer(load_config(path, ["train.max_steps=6", "train.log_every=2", "optim.grad_clip=0.5", *spelled_out]), resume=True, progress=False).fit()
    assert summary["steps"] == 6
    assert "changed since the checkpoint: optim.grad_clip 1.0 -> 0.5, train.max_steps 4 -> 6, train.log_every 1 -> 2" in caplog.text
    assert "the learning-rate schedule now ends at step 6, not 4" in caplog.text
    assert yaml.safe_load((tmp_path / "run/config.yaml").read_text())["train"]["max_steps"] == 6
    record = json.loads((latest_checkpoint(tmp_path / "run") / "run.json").read_text())
    assert record["total_steps"] == 6 and record["config"]["optim"]["grad_clip"] == 0.5


def test_moved_data_resume_but_other_data_do_not(tmp_path: Path, world: Path) -> None:  # noqa: F811
    path = _first_run(tmp_path, world)
    moved = tmp_path / "moved_world"
    shutil.copytree(world, moved)
    text = path.read_text().replace(str(world), str(moved))
    path.write_text(text)
    assert Trainer(load_config(path, ["train.max_steps=5"]), resume=True, progress=False).fit()["steps"] == 5

    other = tmp_path / "other.yaml"  # the validation captions in place of the training ones
    tree = yaml.safe_load(text)
    tree["data"]["train"] = tree["data"]["val"]
    other.write_text(yaml.safe_dump(tree))
    with pytest.raises(ConfigError, match=r"the training data differ from the run's .*\(\d+ training samples then, \d+ now; .*init_from:"):
        Trainer(load_config(other, ["train.max_steps=6"]), resume=True, progress=False).fit()
    assert latest_checkpoint(tmp_path / "run").name == "step_00000005"


def test_a_checkpoint_from_before_run_records_is_compared_with_config_yaml(tmp_path: Path, world: Path, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    path = _first_run(tmp_path, world)
    for step in (tmp_path / "run/checkpoints").glob("step_*"):  # as an earlier polymodal wrote them
        (step / "run.json").unlink()
        meta = json.loads((step / "meta.json").read_text())
        (step / "meta.json").write_text(json.dumps(meta | {"files": [f for f in meta["files"] if f != "run.json"]}))
    with pytest.raises(ConfigError, match=r"optim\.lr 0\.001 -> 0\.002"):
        Trainer(load_config(path, ["optim.lr=0.002", "train.max_steps=6"]), resume=True, progress=False).fit()
    with caplog.at_level("INFO", logger="polymodal"):
        assert Trainer(load_config(path, ["train.max_steps=6"]), resume=True, progress=False).fit()["steps"] == 6
    assert "predates run.json; settings are compared with" in caplog.text


def test_the_log_keeps_no_rows_from_steps_past_the_resumed_checkpoint(tmp_path: Path, world: Path, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    """A run killed after logging steps 3-4 but before checkpointing them resumes from step 2 and logs
    3-4 again: before, log.csv then held those steps twice."""
    path = _first_run(tmp_path, world)
    checkpoints = tmp_path / "run/checkpoints"
    shutil.rmtree(checkpoints / "step_00000004")
    (checkpoints / "latest").write_text("step_00000002\n")
    (checkpoints / "best").write_text("step_00000002\n")
    rows_before = (tmp_path / "run/log.csv").read_text().splitlines()
    assert any(r.startswith("4,") for r in rows_before)
    with caplog.at_level("INFO", logger="polymodal"):
        Trainer(load_config(path), resume=True, progress=False).fit()
    rows = (tmp_path / "run/log.csv").read_text().splitlines()
    keys = [tuple(r.split(",")[:4]) for r in rows[1:]]
    assert len(keys) == len(set(keys)), "a step's value was logged twice"
    assert rows[0] == "step,epoch,split,name,value"
    assert sorted({k[0] for k in keys}, key=int) == ["1", "2", "3", "4"]
    assert rows[: len([r for r in rows_before if not r[0].isdigit() or int(r.split(",")[0]) <= 2])] == [
        r for r in rows_before if not r[0].isdigit() or int(r.split(",")[0]) <= 2
    ]
    assert "dropped" in caplog.text and "past step 2" in caplog.text
