"""torchrun's variables read with named errors: before, WORLD_SIZE=abc was a bare ValueError, WORLD_SIZE=2
without RANK torch's own error, RANK=5 of 2 a wait of torch's 30-minute rendezvous timeout, and
WORLD_SIZE=-3 a silent single-process run."""

from __future__ import annotations

import pytest
import torch

from polymodal.errors import ConfigError
from polymodal.train.trainer import init_distributed

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    "env, named",
    [
        ({"WORLD_SIZE": "abc"}, r"WORLD_SIZE='abc': expected a whole number >= 1"),
        ({"WORLD_SIZE": "-3"}, r"WORLD_SIZE='-3': expected a whole number >= 1"),
        ({"WORLD_SIZE": "0"}, r"WORLD_SIZE='0': expected a whole number >= 1"),
        ({"WORLD_SIZE": "2"}, r"RANK is not set, but WORLD_SIZE=2 asks for a distributed run"),
        ({"WORLD_SIZE": "2", "RANK": "5"}, r"RANK='5': expected a whole number in 0\.\.1"),
        ({"WORLD_SIZE": "2", "RANK": "x"}, r"RANK='x': expected a whole number in 0\.\.1"),
        ({"WORLD_SIZE": "2", "RANK": "1"}, r"MASTER_ADDR is not set, but WORLD_SIZE=2"),
        ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "localhost"}, r"MASTER_PORT is not set"),
    ],
)
def test_a_bad_launcher_variable_is_named_before_any_rendezvous(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=named) as raised:
        init_distributed(CPU)
    assert "unset WORLD_SIZE, RANK and LOCAL_RANK to train in one process" in str(raised.value)


@pytest.mark.parametrize("world", [None, "1", " 1 "])
def test_one_process_needs_no_launcher(monkeypatch: pytest.MonkeyPatch, world: str | None) -> None:
    for name in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    if world is not None:
        monkeypatch.setenv("WORLD_SIZE", world)
    assert init_distributed(CPU) == (0, 1)
