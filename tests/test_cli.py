"""The command line as a user meets it: help with examples, clean one-paragraph errors, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from polymodal.cli import main

COMMANDS = ["score", "quickstart", "train", "eval", "predict", "index", "search", "serve", "bench model"]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("command", COMMANDS + ["data world", "data check", "data stats"])
def test_every_command_has_help_with_an_example(capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, out, _ = run(capsys, *command.split(), "--help")
    assert code == 0 and "Example" in out and "polymodal" in out


def test_data_world_then_check_and_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "data", "world", "--out", str(tmp_path / "w"), "--scenes", "30", "--seed", "1", "--workers", "1")
    assert code == 0 and "world written to" in out and (tmp_path / "w/world.json").is_file()
    code, out, _ = run(capsys, "data", "check", str(tmp_path / "w"))
    assert code == 0, out
    assert "coco_captions" in out and "vqa_v2" in out
    code, out, _ = run(capsys, "data", "stats", str(tmp_path / "w"))
    assert code == 0 and "samples" in out.lower()


def test_data_check_finds_a_corrupt_image_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "data", "world", "--out", str(tmp_path / "w"), "--scenes", "30", "--workers", "1")
    victim = sorted((tmp_path / "w/images/val").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:40])
    code, out, _ = run(capsys, "data", "check", str(tmp_path / "w"))
    assert code == 1
    assert "corrupt_image" in out and victim.name in out


def test_user_errors_are_one_paragraph_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "data", "check", str(tmp_path / "nothing-here"))
    assert code == 2 and err.startswith("error:") and "Traceback" not in err
    code, _, err = run(capsys, "train", "cfg.yaml")
    assert code == 2 and "not available yet" in err


def test_console_script_is_installed() -> None:
    out = subprocess.run([sys.executable, "-m", "polymodal.cli", "--help"], capture_output=True, text=True, check=True)
    assert "quickstart" in out.stdout and "data" in out.stdout
