"""The command line as a user meets it: help with examples, clean one-paragraph errors, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_runner import run_cli

COMMANDS = ["score", "quickstart", "train", "eval", "predict", "models", "export", "index", "index build", "index add", "index delete", "index info", "search", "serve", "bench model", "chat", "mllm init-lm"]


run = run_cli


@pytest.mark.parametrize("command", COMMANDS + ["data world", "data check", "data stats"])
def test_every_command_has_help_with_an_example(capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, out, _ = run(capsys, *command.split(), "--help")
    assert code == 0 and "Example" in out and "polymodal" in out


def test_data_world_then_check_and_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "data", "world", "--out", str(tmp_path / "w"), "--scenes", "30", "--seed", "1", "--workers", "1")
    assert code == 0 and "world written to" in out and (tmp_path / "w/world.json").is_file()
    code, out, _ = run(capsys, "data", "check", str(tmp_path / "w"))
    assert code == 0, out
    assert "coco_captions" in out and "vqa_v2" in out and out.rstrip().endswith("all 17 sources checked: no problems")
    code, out, _ = run(capsys, "data", "stats", str(tmp_path / "w"))
    assert code == 0 and "samples" in out.lower()


def test_data_check_finds_a_corrupt_image_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "data", "world", "--out", str(tmp_path / "w"), "--scenes", "30", "--workers", "1")
    victim = sorted((tmp_path / "w/images/val").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:40])
    (tmp_path / "w/vqa/questions_train.json").unlink()
    code, out, _ = run(capsys, "data", "check", str(tmp_path / "w"))
    assert code == 1
    assert "corrupt_image" in out and victim.name in out
    assert "[unreadable_source] whole source: vqa_v2 source: questions file not found" in out
    assert out.rstrip().splitlines()[-1].startswith("6 of 17 sources have problems: train[1], val[0]")  # every val source reads the image


def test_user_errors_are_one_paragraph_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "data", "check", str(tmp_path / "nothing-here"))
    assert code == 2 and err.startswith("error:") and "Traceback" not in err
    code, _, err = run(capsys, "train", str(tmp_path / "cfg.yaml"))
    assert code == 2 and "config file not found" in err and "cfg.yaml" in err
    code, _, err = run(capsys, "serve", "--model", str(tmp_path / "no-run"))
    assert code == 2 and str(tmp_path / "no-run") in err and "does not exist" in err and "Traceback" not in err


def test_console_script_is_installed() -> None:
    out = subprocess.run([sys.executable, "-m", "polymodal.cli", "--help"], capture_output=True, text=True, check=True)
    assert "quickstart" in out.stdout and "data" in out.stdout


def test_score_command_on_world_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Score perfect and wrong predictions in the official result formats against world annotations."""
    import json

    run(capsys, "data", "world", "--out", str(tmp_path / "w"), "--scenes", "30", "--workers", "1")
    coco = json.loads((tmp_path / "w/annotations/captions_val.json").read_text())
    first = {}
    for a in coco["annotations"]:
        first.setdefault(a["image_id"], a["caption"])
    (tmp_path / "caps.json").write_text(json.dumps([{"image_id": i, "caption": c} for i, c in first.items()]))
    code, out, err = run(capsys, "score", "caption", str(tmp_path / "caps.json"), str(tmp_path / "w/annotations/captions_val.json"),
                         "--metric", "bleu", "--metric", "cider", "--json", str(tmp_path / "s.json"))
    assert code == 0, err
    scores = json.loads((tmp_path / "s.json").read_text())
    assert scores["Bleu_1"] > 0.9 and "CIDEr" in out
    anns = json.loads((tmp_path / "w/vqa/annotations_val.json").read_text())["annotations"]
    right = [{"question_id": a["question_id"], "answer": a["multiple_choice_answer"]} for a in anns]
    wrong = [{"question_id": a["question_id"], "answer": "purple elephant"} for a in anns]
    for preds, expected in ((right, 1.0), (wrong, 0.0)):
        (tmp_path / "vqa.json").write_text(json.dumps(preds))
        code, out, err = run(capsys, "score", "vqa", str(tmp_path / "vqa.json"), str(tmp_path / "w/vqa/annotations_val.json"),
                             "--questions", str(tmp_path / "w/vqa/questions_val.json"), "--json", str(tmp_path / "v.json"))
        assert code == 0, err
        assert json.loads((tmp_path / "v.json").read_text())["overall"] == pytest.approx(expected)
    (tmp_path / "vqa.json").write_text(json.dumps(right[:-1]))  # one question without a prediction
    code, _, err = run(capsys, "score", "vqa", str(tmp_path / "vqa.json"), str(tmp_path / "w/vqa/annotations_val.json"))
    assert code == 2 and "vqa.json" in err
    # an unknown metric and a --json below a folder that does not exist: were a ValueError and a FileNotFoundError
    # traceback (the latter after the scores were printed)
    code, _, err = run(capsys, "score", "caption", str(tmp_path / "caps.json"), str(tmp_path / "w/annotations/captions_val.json"), "--metric", "foo")
    assert code == 2 and "unknown caption metric 'foo'" in err and "Traceback" not in err
    deep = tmp_path / "not/yet/there.json"
    code, _, err = run(capsys, "score", "caption", str(tmp_path / "caps.json"), str(tmp_path / "w/annotations/captions_val.json"), "--metric", "bleu", "--json", str(deep))
    assert code == 0, err
    assert "Bleu_4" in json.loads(deep.read_text())
    (tmp_path / "a_file").write_text("")
    code, _, err = run(capsys, "score", "caption", str(tmp_path / "caps.json"), str(tmp_path / "w/annotations/captions_val.json"), "--json", str(tmp_path / "a_file/s.json"))
    assert code == 2 and "--json" in err and "cannot make its folder" in err


def test_an_unknown_option_is_a_usage_message_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    from polymodal.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--bogus"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "No such option: --bogus" in err and "Traceback" not in err


def test_ctrl_c_ends_with_a_line_and_exit_130_not_a_traceback(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from polymodal import cli

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "app", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["chat", "--model", "x"])
    assert exit_info.value.code == 130
    assert capsys.readouterr().err.strip() == "aborted"
