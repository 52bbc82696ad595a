"""The benchmark scripts import their shared helpers (``provenance``) from their own folder, and each
test module gets its script as the ``bench`` fixture (named by the module's ``BENCHMARK``)."""

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))


@pytest.fixture(scope="module")
def bench(request: pytest.FixtureRequest) -> Iterator[ModuleType]:
    """``benchmarks/<BENCHMARK>.py`` loaded from its file (the scripts are not part of the package)."""
    name = request.module.BENCHMARK
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there while being built
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(name, None)
