"""Hugging Face towers without `transformers` installed: a clear install hint, not an ImportError trace."""

from __future__ import annotations

import sys

import pytest

from polymodal.errors import PolymodalError
from polymodal.modules.encoders.hf import HFTextTower, HFVisionTower, MissingDependencyError


@pytest.mark.parametrize("tower", [HFVisionTower, HFTextTower])
def test_missing_transformers_gives_an_install_hint(monkeypatch, tmp_path, tower):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(MissingDependencyError, match=r"polymodal\[hf\]") as info:
        tower.from_pretrained(tmp_path)
    assert isinstance(info.value, PolymodalError)
