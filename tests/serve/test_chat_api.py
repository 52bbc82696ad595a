"""POST /v1/chat: streamed (SSE) and plain answers agree with each other and with ChatSession, images come
as base64 or data: URLs, and every bad request is a 4xx naming the field; other models answer 400."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from polymodal.chat import ChatSession
from polymodal.serve import ServeSettings, create_app
from tests.mllm_fixtures import Assistant, assistant_fixture  # noqa: F401 - registers the 'assistant' fixture
from tests.serve.conftest import Served

QUESTION = "<image>\nWhat is in the picture?"


@pytest.fixture(scope="module")
def client(assistant: Assistant) -> TestClient:
    return TestClient(create_app(assistant.model, assistant.processors, settings=ServeSettings(max_new_tokens=32, max_chat_images=2, max_text_chars=4000)))


def _b64(path: Any) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _events(client: TestClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    with client.stream("POST", "/v1/chat", json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    blocks = [b for b in raw.split("\n\n") if b.strip()]
    assert all(b.startswith("data: ") for b in blocks), raw
    return [json.loads(b[len("data: "):]) for b in blocks]


def _error(r: Any, status: int, *needles: str) -> str:
    assert r.status_code == status, r.text
    message = r.json()["error"]["message"]
    for n in needles:
        assert n in message, message
    return str(message)


def test_streamed_and_plain_answers_agree_with_the_session(assistant: Assistant, client: TestClient) -> None:
    img = assistant.images[0]
    body = {"messages": [{"role": "user", "content": QUESTION}], "images": [_b64(img)], "max_new_tokens": 12}
    plain = client.post("/v1/chat", json=body)
    assert plain.status_code == 200, plain.text
    text = plain.json()["text"]
    events = _events(client, body)
    assert events[-1] == {"done": True, "text": text}
    deltas = [e["delta"] for e in events[:-1]]
    assert len(deltas) > 1 and "".join(deltas) == text
    want = "".join(ChatSession(assistant.model, assistant.processors, max_new_tokens=12).ask(QUESTION, [img]))
    assert text == want and text
    # a data: URL is the same image; a second round sees the first
    url = "data:image/png;base64," + _b64(img)
    follow = {"messages": [*body["messages"], {"role": "assistant", "content": text}, {"role": "user", "content": "And then?"}],
              "images": [url], "max_new_tokens": 12}
    session = ChatSession(assistant.model, assistant.processors, max_new_tokens=12)
    list(session.ask(QUESTION, [img]))
    assert client.post("/v1/chat", json=follow).json()["text"] == "".join(session.ask("And then?"))


def test_models_lists_chat_for_an_assistant_only(client: TestClient, served: Served) -> None:
    assert "chat" in client.get("/v1/models").json()["models"][0]["operations"]
    mt = TestClient(create_app(*served.multitask))
    assert "chat" not in mt.get("/v1/models").json()["models"][0]["operations"]
    r = mt.post("/v1/chat", json={"messages": [{"role": "user", "content": "hi"}]})
    _error(r, 400, "/v1/chat needs an assistant", "'multitask' model")
    assert r.json()["error"]["code"] == "unsupported_for_model"


@pytest.mark.parametrize(("body", "status", "needles"), [
    ({"messages": [{"role": "bot", "content": "hi"}]}, 422, ("messages.0.role",)),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}, 422, ("max_tokens",)),
    ({"messages": []}, 422, ("messages", "empty")),
    ({"messages": [{"role": "user", "content": "   "}]}, 422, ("messages[0].content",)),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, 422, ("messages", "last message")),
    ({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}, 422, ("messages[0]", "expected role 'user'")),
    ({"messages": [{"role": "user", "content": "hi"}], "max_new_tokens": 0}, 422, ("max_new_tokens",)),
    ({"messages": [{"role": "user", "content": "hi"}], "max_new_tokens": 33}, 422, ("max_new_tokens", "at most 32")),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": -1}, 422, ("temperature",)),
    ({"messages": [{"role": "user", "content": "hi"}], "seed": 2**70}, 422, ("seed",)),  # was a 500 (int64 overflow)
    ({"messages": [{"role": "user", "content": "hi"}], "seed": -1}, 422, ("seed",)),
    ({"messages": [{"role": "user", "content": QUESTION}]}, 422, ("1 <image> marker(s) but 0 image(s)",)),
    ({"messages": [{"role": "user", "content": "hi"}], "images": ["%%%not base64"]}, 422, ("images[0]", "base64")),
    ({"messages": [{"role": "user", "content": "hi"}], "images": [base64.b64encode(b"plain text").decode()]}, 415, ("images[0]",)),
    ({"messages": [{"role": "user", "content": "hi"}], "images": ["data:text/plain,abc"]}, 422, ("images[0]", "data URL")),
    ({"messages": [{"role": "user", "content": "hi"}], "images": ["a", "b", "c"]}, 422, ("images", "at most 2")),
    ({"messages": [{"role": "user", "content": " ".join(["the cube"] * 300)}]}, 422, ("newest question", "context window")),
])
def test_bad_requests_name_the_field(client: TestClient, body: dict[str, Any], status: int, needles: tuple[str, ...]) -> None:
    _error(client.post("/v1/chat", json=body), status, *needles)
    _error(client.post("/v1/chat", json={**body, "stream": True}), status, *needles)  # refused before any event is sent


def test_a_body_that_is_not_json_says_so_and_where(client: TestClient) -> None:
    """Before: the message was '14: JSON decode error', the offset reading as a field name."""
    r = client.post("/v1/chat", content=b'{"messages": [', headers={"content-type": "application/json"})
    _error(r, 422, "the request body is not valid JSON (at character 14")


def test_image_count_must_match_markers(assistant: Assistant, client: TestClient) -> None:
    img = _b64(assistant.images[0])
    r = client.post("/v1/chat", json={"messages": [{"role": "user", "content": "no marker here"}], "images": [img]})
    _error(r, 422, "0 <image> marker(s) but 1 image(s)")
