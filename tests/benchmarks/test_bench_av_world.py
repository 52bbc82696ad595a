"""The audio-visual world benchmark's baseline: the answer prior of each question text, computed right."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_av_world.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_av_world", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


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
    prior = _load().question_prior(tmp_path)
    # per family: motion_what gets cube (right), cube (wrong), unseen -> "cube" (wrong); sound_count gets two (wrong)
    assert prior["motion_what"] == pytest.approx(1 / 3)
    assert prior["sound_count"] == 0.0
    assert prior["accuracy"] == pytest.approx(1 / 4)
