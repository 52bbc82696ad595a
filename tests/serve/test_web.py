"""The web page in a real browser: Playwright drives headless Chromium against the server (uvicorn on
127.0.0.1), uploads an image, reads the caption and the answer, searches by text and checks the
thumbnail grid against ``polymodal.predict`` and the index. Skipped without playwright or chromium."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("playwright")
uvicorn = pytest.importorskip("uvicorn")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
if CHROMIUM is None:
    pytest.skip("no chromium binary on PATH", allow_module_level=True)

import httpx
from playwright.sync_api import Browser, Page, expect, sync_playwright

from polymodal import predict
from polymodal.explain import answer_heatmap
from polymodal.serve import ServeSettings, create_app
from tests.serve.conftest import Served

TIMEOUT_MS = 20_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Server:
    """uvicorn serving ``app`` on 127.0.0.1:<free port> in a background thread."""

    def __init__(self, app: Any) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if not self.thread.is_alive():
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the server on {self.url} did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@contextmanager
def _serving(app: Any) -> Iterator[_Server]:
    server = _Server(app)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def mt_server(served: Served) -> Iterator[_Server]:
    """The multi-task model without an index: caption / answer, no search."""
    with _serving(create_app(*served.multitask)) as s:
        yield s


@pytest.fixture(scope="module")
def ret_server(served: Served) -> Iterator[_Server]:
    """The retrieval model with the index: text -> images, image -> nearest texts."""
    with _serving(create_app(*served.retrieval, index=served.index)) as s:
        yield s


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    ctx = browser.new_context()
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    ctx.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _open(page: Page, server: _Server) -> None:
    page.goto(server.url + "/")
    page.wait_for_selector("body[data-ready=true]")


def test_upload_caption_and_answer_agree_with_predict(served: Served, mt_server: _Server, page: Page) -> None:
    model, proc = served.multitask
    img = served.images[0]
    want_caption = predict.caption(model, proc, [img])[0]
    q = "what color is the cube?"
    want_answer = predict.answer(model, proc, [img], [q])[0]
    assert want_caption and want_answer

    _open(page, mt_server)
    expect(page.locator("#image-panel")).to_be_visible()
    expect(page.locator("#search-panel")).to_be_hidden()  # no index
    expect(page.locator("#model-info")).to_contain_text("multitask")
    page.set_input_files("#image-input", str(img))
    page.wait_for_selector("#caption[data-state=done]", state="attached")
    assert page.locator("#caption").inner_text() == want_caption
    assert page.locator("#preview").evaluate("el => el.naturalWidth") > 0  # the preview shows the upload

    page.fill("#question", q)
    page.click("#answer-btn")
    page.wait_for_selector("#answer[data-state=done]", state="attached")
    assert page.locator("#answer").inner_text() == want_answer
    expect(page.locator("#error")).to_be_hidden()
    # the answer's heat-map: the canvas shows the grid of Grad-CAM weights over the image, tinted red
    expect(page.locator("#heatmap-box")).to_be_visible()
    grid = answer_heatmap(model, proc, img, q).heatmap
    assert page.locator("#heatmap").get_attribute("data-cells") == str(len(grid) * len(grid[0]))
    red = page.locator("#heatmap").evaluate(
        "c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;"
        " for (let i = 0; i < d.length; i += 4) if (d[i] > d[i + 1] + 40) n++; return n; }")
    assert red > 0  # some cells were tinted


def test_text_search_shows_the_index_order_as_loaded_thumbnails(served: Served, ret_server: _Server, page: Page) -> None:
    k, query = 5, "a red cube left of a blue sphere"
    want = [h.path for h in served.index.search_text(query, k=k, target="image")]
    assert len(want) == k

    _open(page, ret_server)
    expect(page.locator("#search-panel")).to_be_visible()
    expect(page.locator("#caption-box")).to_be_hidden()  # a dual encoder does not caption
    page.fill("#query", query)
    page.fill("#k", str(k))
    page.click("#search-btn")
    page.wait_for_selector("#grid[data-state=done]", state="attached")
    figs = page.locator("#grid figure")
    expect(figs).to_have_count(k)
    assert [figs.nth(i).get_attribute("data-path") for i in range(k)] == want
    scores = [float(figs.nth(i).get_attribute("data-score") or "nan") for i in range(k)]
    assert scores == sorted(scores, reverse=True)
    # every thumbnail really loaded from /v1/files
    page.wait_for_function("() => [...document.querySelectorAll('#grid img')].every(i => i.complete)")
    widths = page.eval_on_selector_all("#grid img", "imgs => imgs.map(i => i.naturalWidth)")
    assert len(widths) == k and all(w > 0 for w in widths), widths
    srcs = page.eval_on_selector_all("#grid img", "imgs => imgs.map(i => i.getAttribute('src'))")
    assert srcs == [f"/v1/files/{p}" for p in want]

    # the same image as a query: its nearest texts come from the index's texts
    page.set_input_files("#image-input", str(served.images[0]))
    page.wait_for_selector("#near-texts[data-state=done]", state="attached")
    want_texts = [h.text for h in served.index.search_image(served.images[0], k=5, target="text")]
    got = page.eval_on_selector_all("#near-texts li", "lis => lis.map(l => l.firstChild.textContent.trim())")
    assert got == want_texts and len(got) == 3
    expect(page.locator("#error")).to_be_hidden()


def test_invalid_upload_shows_the_api_error(served: Served, mt_server: _Server, page: Page, tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("this is not an image\n")
    api = httpx.post(mt_server.url + "/v1/caption", files={"image": (bad.name, bad.read_bytes(), "text/plain")})
    assert 400 <= api.status_code < 500
    message = api.json()["error"]["message"]

    _open(page, mt_server)
    expect(page.locator("#error")).to_be_hidden()
    page.set_input_files("#image-input", str(bad))
    page.wait_for_selector("#caption[data-state=error]", state="attached")
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error")).to_have_text(message)
    assert page.locator("#caption").inner_text() == ""


def test_page_without_index_hides_search_and_api_key_is_sent(served: Served, page: Page) -> None:
    with _serving(create_app(*served.multitask)) as plain:
        r = httpx.get(plain.url + "/")
        assert r.status_code == 200 and "text/html" in r.headers["content-type"] and "/static/app.js" in r.text
        assert httpx.get(plain.url + "/static/app.js").status_code == 200
        assert httpx.get(plain.url + "/static/nope.js").status_code == 404
        _open(page, plain)
        expect(page.locator("#search-panel")).to_be_hidden()
        expect(page.locator("#near-texts-box")).to_be_hidden()
        expect(page.locator("#caption-box")).to_be_visible()
        expect(page.locator("#key-panel")).to_be_hidden()

    # a server with a key: the page asks for it, then works with it
    with _serving(create_app(*served.multitask, settings=ServeSettings(api_key="s3cret"))) as keyed:
        page.goto(keyed.url + "/")
        expect(page.locator("#key-panel")).to_be_visible()
        expect(page.locator("#error")).to_contain_text("API key")
        page.fill("#api-key", "s3cret")
        page.click("#key-save")
        page.wait_for_selector("body[data-ready=true]")
        expect(page.locator("#error")).to_be_hidden()
        # drag-and-drop this time: a drop event carrying the PNG
        data = list(served.images[1].read_bytes())
        dt = page.evaluate_handle(
            "bytes => { const dt = new DataTransfer();"
            " dt.items.add(new File([new Uint8Array(bytes)], 'drop.png', {type: 'image/png'})); return dt; }",
            data,
        )
        page.dispatch_event("#drop", "drop", {"dataTransfer": dt})
        page.wait_for_selector("#caption[data-state=done]", state="attached")
        assert page.locator("#caption").inner_text() == predict.caption(*served.multitask, [served.images[1]])[0]
