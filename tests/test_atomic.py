"""Atomic text writes: the old content or the new, never part of one, and no temporary file left."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from polymodal.atomic import write_text


def test_the_new_content_replaces_the_old_and_nothing_else_is_left(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text("old")
    write_text(path, '{"é": 1}\n', durable=True)
    assert path.read_text(encoding="utf-8") == '{"é": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_failed_rename_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "report.html"
    path.write_text("old")

    def refuse(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
