"""``polymodal serve``: builds the app from --model/--index and hands it to uvicorn on 127.0.0.1 by default."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.cli_runner import run_cli
from tests.serve.conftest import Served


def test_serve_starts_uvicorn_on_localhost_with_the_settings(served: Served, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append({"app": app} | kw))
    monkeypatch.setenv("PM_TEST_KEY", "k3y")
    _, proc = served.retrieval
    code, _, err = run_cli(capsys, "serve", "--model", proc.source, "--index", str(served.index.path),
                           "--api-key-env", "PM_TEST_KEY", "--max-batch", "4", "--port", "8123")
    assert code == 0, err
    (call,) = calls
    assert call["host"] == "127.0.0.1" and call["port"] == 8123
    app = call["app"]
    assert app.state.settings.api_key == "k3y" and app.state.settings.max_batch == 4
    c = TestClient(app)
    assert c.get("/v1/health").json()["index"] is True
    r = c.post("/v1/search", data={"text": "a red cube", "k": "2"}, headers={"X-API-Key": "k3y"})
    assert r.status_code == 200 and len(r.json()["results"]) == 2


def test_serve_refuses_an_unset_key_variable(served: Served, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PM_NOT_SET", raising=False)
    code, _, err = run_cli(capsys, "serve", "--model", served.retrieval[1].source, "--api-key-env", "PM_NOT_SET")
    assert code == 2 and "PM_NOT_SET" in err


def test_serve_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "serve", "--help")
    assert code == 0 and "Example:" in out and "127.0.0.1" in out
