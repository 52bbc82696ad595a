"""Fixture helpers for the format tests: tiny real files written inside ``tmp_path``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from polymodal.data.report import DataReport


def _write_image(
    path: Path, color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (4, 3)
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)  # format from the extension (.png / .jpg)
    return path


def _write_json(path: Path, tree: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(tree), encoding="utf-8")
    return path


@pytest.fixture
def write_image() -> Callable[..., Path]:
    return _write_image


@pytest.fixture
def write_json() -> Callable[[Path, Any], Path]:
    return _write_json


@pytest.fixture
def report() -> DataReport:
    return DataReport(source="test")
