"""Shared fixtures for the metric tests.

Tests that compare with pycocoevalcap need it installed (it is in the ``dev`` extra); those that
run its Java parts (PTBTokenizer, METEOR) also need ``java`` on PATH and skip with the reason
otherwise (CI installs a JRE, so they run there).
"""

from __future__ import annotations

import shutil

import pytest

JAVA = shutil.which("java") is not None

requires_java = pytest.mark.skipif(not JAVA, reason="needs `java` on PATH (pycocoevalcap's PTBTokenizer/METEOR are Java)")


@pytest.fixture(scope="session")
def pycoco():
    """The pycocoevalcap scorer classes, or skip."""
    pytest.importorskip("pycocoevalcap", reason="pycocoevalcap (dev extra) is the reference implementation")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    return {"Bleu": Bleu, "Cider": Cider, "Rouge": Rouge}
