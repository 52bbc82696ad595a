"""Run the ``polymodal`` CLI in-process and capture what a user would see."""

from __future__ import annotations

import pytest

from polymodal.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``polymodal ARGS``."""
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err
