"""The benchmark scripts import their shared helpers (``provenance``) from their own folder, and each
test module gets its script as the ``bench`` fixture (named by the module's ``BENCHMARK``)."""

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
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


@pytest.fixture
def script_heap(request: pytest.FixtureRequest) -> Callable[[list[str], Path], tuple[str, str]]:
    """Runs ``benchmarks/<BENCHMARK>.py`` as a script (``GLIBC_TUNABLES`` unset, so it may re-run itself
    with the heap kept) and returns the ``heap`` its JSON at ``out`` records, and its output."""
    script = BENCHMARKS / f"{request.module.BENCHMARK}.py"

    def run(args: list[str], out: Path) -> tuple[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
        done = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(out.read_text(encoding="utf-8"))["heap"], done.stdout

    return run
