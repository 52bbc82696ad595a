"""``polymodal quickstart`` at smoke size: world, multi-task training, evaluation, report, summary.

The full-size run (10,000 scenes, about 10 minutes on 2 cores) is measured in benchmarks/RESULTS.md;
here the same pipeline runs on a tiny world so every stage is exercised in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from polymodal.quickstart import TARGETS, quickstart_config, target_table, world_config
from tests.cli_runner import run_cli


def test_the_shipped_config_is_a_valid_multitask_run() -> None:
    from polymodal.config import RunConfig, validate

    tree = quickstart_config()
    cfg = validate(RunConfig, tree | {"data": {}}, "configs/quickstart.yaml")
    assert cfg.model.type == "multitask" and cfg.train.task == "multitask"
    assert set(cfg.model.weights) >= {"itc", "lm", "vqa", "cls"}


def test_the_world_is_split_for_a_1000_image_gallery() -> None:
    cfg = world_config(10000, 0, 1000)
    assert round(cfg.num_scenes * cfg.test_fraction) == 1000


def test_targets_are_checked_in_both_directions() -> None:
    metrics = {"test": {"retrieval/t2i_R@1": 0.7, "vqa/accuracy": 0.5, "classification/text_only_accuracy": 0.52}}
    rows = {r["target"]: r["status"] for r in target_table(metrics)}
    assert rows["text-to-image R@1"] == "met" and rows["VQA accuracy"] == "MISSED"
    assert rows["text-only ablation (near chance)"] == "met" and rows["captioning CIDEr-D"] == "not measured"
    assert len(rows) == len(TARGETS)


def test_quickstart_runs_every_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "qs"
    code, stdout, err = run_cli(capsys, "quickstart", "--out", str(out), "--scenes", "80", "--steps", "3", "--test-images", "12")
    assert code == 0, err
    summary = json.loads((out / "quickstart.json").read_text())
    assert summary["steps"] == 3
    assert {"test", "test_heldout"} <= set(summary["metrics"])
    assert all(r["status"] in ("met", "MISSED") for r in summary["targets"])  # every target was measured
    assert Path(summary["report"]).is_file() and (out / "run" / "eval" / "report.md").is_file()
    assert yaml.safe_load((out / "quickstart.yaml").read_text())["train"]["max_steps"] == 3
    for line in ("text-to-image R@1", "VQA accuracy", "report:", "polymodal predict caption", "polymodal serve"):
        assert line in stdout, line
    # a second run reuses the world instead of generating it again
    code, stdout, err = run_cli(capsys, "quickstart", "--out", str(out), "--scenes", "80", "--steps", "1", "--test-images", "12")
    assert code == 0 and "reusing" in stdout, err
