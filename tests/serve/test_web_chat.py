"""The chat panel in a real browser (Playwright + headless Chromium, as tests/serve/test_web.py): shown only
for an assistant; attach an image, send a message, and the streamed reply equals ChatSession's answer;
a second message continues the conversation. Skipped without playwright or chromium."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("playwright")
from playwright.sync_api import Page, expect

from polymodal.chat import ChatSession
from polymodal.serve import create_app
from tests.mllm_fixtures import Assistant, assistant_fixture  # noqa: F401 - registers the 'assistant' fixture
from tests.serve import test_web  # importing it also skips this module without chromium
from tests.serve.conftest import Served
from tests.serve.test_web import _open, _Server, _serving

browser, page = test_web.browser, test_web.page  # its browser fixtures, shared


@pytest.fixture(scope="module")
def chat_server(assistant: Assistant) -> Iterator[_Server]:
    with _serving(create_app(assistant.model, assistant.processors)) as s:
        yield s


def _reply(page: Page, n: int) -> str:
    """Wait for the n-th assistant bubble (1-based) to finish streaming; its text."""
    bubble = page.locator("#chat-log li[data-role=assistant]").nth(n - 1)
    page.wait_for_selector(f"#chat-log li[data-role=assistant]:nth-of-type({2 * n})[data-state=done]", state="attached")
    return str(bubble.locator(".text").inner_text())


def test_chat_panel_streams_the_sessions_answer(assistant: Assistant, chat_server: _Server, page: Page) -> None:
    img = assistant.images[0]
    session = ChatSession(assistant.model, assistant.processors, max_new_tokens=64)
    want1 = "".join(session.ask("<image>\nWhat is in the picture?", [img]))
    want2 = "".join(session.ask("And what else?"))
    assert want1

    _open(page, chat_server)
    expect(page.locator("#chat-panel")).to_be_visible()
    expect(page.locator("#image-panel")).to_be_hidden()  # an assistant neither captions nor answers by form
    expect(page.locator("#model-info")).to_contain_text("mllm")
    page.set_input_files("#chat-image", str(img))
    expect(page.locator("#chat-attached")).to_contain_text(img.name)
    page.fill("#chat-input", "What is in the picture?")  # no marker typed: the page puts the image first
    page.click("#chat-send")
    assert _reply(page, 1) == want1
    expect(page.locator("#chat-log li[data-role=user] img")).to_have_count(1)
    expect(page.locator("#chat-attached")).to_have_text("")

    page.fill("#chat-input", "And what else?")
    page.press("#chat-input", "Enter")
    assert _reply(page, 2) == want2
    expect(page.locator("#error")).to_be_hidden()

    page.click("#chat-reset")
    expect(page.locator("#chat-log li")).to_have_count(0)
    page.fill("#chat-input", "<image> what is this?")  # a marker but no image: the API's error is shown
    page.click("#chat-send")
    expect(page.locator("#error")).to_contain_text("1 <image> marker(s) but 0 image(s)")


def test_chat_panel_is_hidden_for_a_clip_style_model(served: Served, page: Page) -> None:
    with _serving(create_app(*served.retrieval)) as server:
        _open(page, server)
        expect(page.locator("#chat-panel")).to_be_hidden()
        expect(page.locator("#model-info")).to_contain_text("dual_encoder")
