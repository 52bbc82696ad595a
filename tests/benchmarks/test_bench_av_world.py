"""The audio-visual world benchmark's baseline: the answer prior of each question text, computed right."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_av_world import question_prior  # benchmarks/ is on sys.path (conftest.py)


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_question_prior_answers_each_text_with_its_most_frequent_training_answer(tmp_path: Path) -> None:
    q = lambda text, answer, family: {"text": text, "answers": [answer], "family": family}
    _write(tmp_path / "train.jsonl", [
        q("what moved left?", "cube", "motion_what"), q("what moved left?", "cube", "motion_what"), q("what moved left?", "cone", "motion_what"),
        q("how many sounds?", "two", "sound_count"), q("how many sounds?", "two", "sound_count"),
        {"text": "a red cube slides left.", "kind": "caption"},  # captions carry no answers and are not counted
    ])
    _write(tmp_path / "test.jsonl", [
        q("what moved left?", "cube", "motion_what"), q("what moved left?", "cone", "motion_what"),
        q("how many sounds?", "one", "sound_count"),
        q("what moved up?", "two", "motion_what"),  # unseen text: the overall most frequent answer ("cube" 2 = "two" 2: first seen wins)
    ])
    prior = question_prior(tmp_path)
    # per family: motion_what gets cube (right), cube (wrong), unseen -> "cube" (wrong); sound_count gets two (wrong)
    assert prior["motion_what"] == pytest.approx(1 / 3)
    assert prior["sound_count"] == 0.0
    assert prior["accuracy"] == pytest.approx(1 / 4)


def test_the_workdir_holds_the_shipped_config_and_the_given_quickstart(tmp_path: Path) -> None:
    from cli_steps import prepare_workdir

    finished = tmp_path / "qs"
    (finished / "run").mkdir(parents=True)
    (tmp_path / "work" / "stale").mkdir(parents=True)  # a previous run's leftovers are removed
    work, seconds = prepare_workdir(tmp_path / "work", ["av_world_vqa.yaml"], finished)
    assert seconds == {} and not (work / "stale").exists()
    assert (work / "quickstart_out" / "run").is_dir()
    assert "../quickstart_out/run" in (work / "configs" / "av_world_vqa.yaml").read_text()  # resolves to work/quickstart_out
