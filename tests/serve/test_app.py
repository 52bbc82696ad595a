"""The REST API: every endpoint agrees with ``polymodal.predict`` / the index on the same inputs,
micro-batching shares forward passes, and bad input always gets a 4xx JSON error."""

from __future__ import annotations

import asyncio
import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from polymodal import predict
from polymodal.data.images import open_image
from polymodal.serve import ServeSettings, create_app
from tests.serve.conftest import Served


@pytest.fixture(scope="module")
def mt(served: Served) -> TestClient:
    return TestClient(create_app(*served.multitask))


@pytest.fixture(scope="module")
def ret(served: Served) -> TestClient:
    return TestClient(create_app(*served.retrieval, index=served.index))


def _png(path: Path) -> tuple[str, bytes, str]:
    return (path.name, path.read_bytes(), "image/png")


def _error(r: Any, status: int, code: str | None = None) -> str:
    """Assert a JSON error of ``status`` (and ``code``); return its message."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]["message"]


# ------------------------------------------------------------------------------ health, models, schema


def test_health_models_and_openapi(mt: TestClient, ret: TestClient) -> None:
    assert mt.get("/v1/health").json() == {"status": "ok", "model_type": "multitask", "index": False}
    assert ret.get("/v1/health").json()["index"] is True
    m = mt.get("/v1/models").json()
    assert m["models"][0]["model_type"] == "multitask" and m["index"] is None
    assert {"caption", "answer", "classify", "explain"} <= set(m["models"][0]["operations"])
    assert "search" not in m["models"][0]["operations"]  # no index
    assert "match" not in m["models"][0]["operations"]  # trained without the itm objective: no head to match with
    r = ret.get("/v1/models").json()
    assert r["index"]["images"] > 0 and r["index"]["texts"] == 3
    assert "/" not in r["models"][0]["name"]  # no absolute path leaks
    paths = set(mt.get("/openapi.json").json()["paths"])
    expected = {f"/v1/{p}" for p in ("embed", "search", "caption", "answer", "classify", "match", "health", "models")}
    assert expected <= paths


# ---------------------------------------------------------------------------------- happy paths


def test_caption_answer_classify_agree_with_predict(served: Served, mt: TestClient) -> None:
    model, proc = served.multitask
    img = served.images[0]
    r = mt.post("/v1/caption", files={"image": _png(img)})
    assert r.status_code == 200 and r.json()["caption"] == predict.caption(model, proc, [img])[0]
    q = "what color is the cube?"
    r = mt.post("/v1/answer", files={"image": _png(img)}, data={"question": q})
    assert r.status_code == 200 and r.json()["answer"] == predict.answer(model, proc, [img], [q])[0]
    t = "the cube is left of the sphere"
    r = mt.post("/v1/classify", files={"image": _png(img)}, data={"text": t})
    want = predict.classify(model, proc, [img], [t])[0]
    assert r.status_code == 200 and r.json()["label"] == want.label
    assert r.json()["score"] == pytest.approx(want.score, abs=1e-5)


def test_match_says_why_a_model_without_an_itm_head_cannot(served: Served, mt: TestClient) -> None:
    assert not predict.has_itm_head(served.multitask[0])  # the fixture's weights: itc, lm, vqa, cls
    r = mt.post("/v1/match", files={"image": _png(served.images[1])}, data={"text": "a red cube"})
    message = _error(r, 400, "unsupported_for_model")
    assert "without the 'itm' objective" in message and "/v1/caption" in message and "predict" not in message


def test_match_agrees_with_predict_on_a_fusion_encoder(served: Served) -> None:
    from polymodal.models.factory import BuildContext, build_model

    _, proc = served.retrieval
    vit = {"name": "vit", "image_size": 32, "patch_size": 8, "width": 32, "depth": 1, "heads": 2}
    text = {"name": "text_transformer", "max_length": 32, "width": 32, "depth": 1, "heads": 2, "causal": False}
    torch.manual_seed(0)
    model = build_model({"type": "fusion_encoder", "vision": vit, "text": text, "fusion_depth": 1, "weights": {"itc": 1.0, "itm": 1.0}},
                        BuildContext(tokenizer=proc.tokenizer)).eval()
    client = TestClient(create_app(model, proc))
    assert "match" in client.get("/v1/models").json()["models"][0]["operations"]
    img = served.images[1]
    r = client.post("/v1/match", files={"image": _png(img)}, data={"text": "a red cube"})
    want = predict.match(model, proc, [img], ["a red cube"])[0]
    assert r.status_code == 200 and r.json()["score"] == pytest.approx(want, abs=1e-5)


def test_embed_and_zero_shot_agree_with_predict(served: Served, ret: TestClient) -> None:
    model, proc = served.retrieval
    img = served.images[2]
    r = ret.post("/v1/embed", files={"image": _png(img)})
    assert r.status_code == 200 and r.json()["kind"] == "image"
    want = predict.embed_images(model, proc, [open_image(img)], 64)[0].numpy()
    np.testing.assert_allclose(r.json()["embeddings"][0], want, atol=1e-5)
    texts = ["a red cube", "deux sphères bleues ☃"]  # unicode is fine
    r = ret.post("/v1/embed", data={"text": texts})
    assert r.status_code == 200 and r.json()["dim"] == want.shape[0] and len(r.json()["embeddings"]) == 2
    np.testing.assert_allclose(r.json()["embeddings"], predict.embed_texts(model, proc, texts, 64).numpy(), atol=1e-5)
    labels = ["cube", "sphere", "cylinder"]
    r = ret.post("/v1/classify", files={"image": _png(img)}, data={"labels": labels})
    zs = predict.zero_shot(model, proc, [img], labels)[0]
    assert r.status_code == 200 and r.json()["label"] == zs.label
    assert r.json()["scores"] == pytest.approx(zs.scores, abs=1e-5)


def test_search_by_text_and_image_agree_with_the_index(served: Served, ret: TestClient) -> None:
    r = ret.post("/v1/search", data={"text": "a red cube ünïcode", "k": 5})
    assert r.status_code == 200
    got = r.json()["results"]
    want = served.index.search_text("a red cube ünïcode", 5)
    assert [h["id"] for h in got] == [h.id for h in want] and [h["rank"] for h in got] == [1, 2, 3, 4, 5]
    assert all(not Path(h["path"]).is_absolute() and ".." not in h["path"] for h in got)
    assert got[0]["score"] == pytest.approx(want[0].score, abs=1e-5)
    img = served.images[3]
    r = ret.post("/v1/search", files={"image": _png(img)}, data={"k": "3", "target": "all"})
    want = served.index.search_image(img, 3, target="all")
    assert r.status_code == 200 and [h["id"] for h in r.json()["results"]] == [h.id for h in want]
    assert r.json()["results"][0]["path"] == img.name  # the image itself is its own nearest neighbour
    f = ret.get(f"/v1/files/{img.name}")
    assert f.status_code == 200 and f.content == img.read_bytes()


def test_search_effort_fields_reach_the_index_and_are_validated(served: Served, ret: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.index.conftest import spy_on_vector_search

    seen = spy_on_vector_search(monkeypatch)
    r = ret.post("/v1/search", data={"text": "a red cube", "k": "3", "nprobe": "8", "ef_search": "40"})
    assert r.status_code == 200 and len(r.json()["results"]) == 3
    assert seen == [{"nprobe": 8, "ef_search": 40}]
    for field, value in (("nprobe", "0"), ("ef_search", "-1"), ("nprobe", "lots")):
        body = _error(ret.post("/v1/search", data={"text": "a cube", field: value}), 422)
        assert field in body


def test_search_and_embed_say_which_input_is_missing_or_doubled(served: Served, ret: TestClient) -> None:
    """An empty text field arrives as no field: it was answered 'give either ..., not both'."""
    for path, text, empty in (("/v1/search", "a text field", {"text": ""}), ("/v1/embed", "one or more text fields", {})):
        assert f"give an image upload or {text} (a text field must not be empty)" in _error(ret.post(path, data=empty), 422)
        both = _error(ret.post(path, files={"image": _png(served.images[0])}, data={"text": "a cube"}), 422)
        assert f"give either an image upload or {text}, not both" in both


# ----------------------------------------------------------------------------------- micro-batching


def test_concurrent_requests_share_forward_passes(served: Served) -> None:
    import httpx

    app = create_app(*served.multitask, settings=ServeSettings(batch_ms=300, max_batch=16))
    imgs = (served.images * 2)[:8]  # the tiny world has 6 test images

    async def go() -> tuple[list[str], list[str]]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            concurrent = await asyncio.gather(*(c.post("/v1/caption", files={"image": _png(p)}) for p in imgs))
            sequential = [await c.post("/v1/caption", files={"image": _png(p)}) for p in imgs]
        assert all(r.status_code == 200 for r in concurrent + sequential)
        return [r.json()["caption"] for r in concurrent], [r.json()["caption"] for r in sequential]

    together, alone = asyncio.run(go())
    stats = app.state.batchers["caption"].stats
    assert stats.requests == 16
    assert stats.forward_passes < 16 and stats.largest_batch > 1  # the 8 concurrent ones shared passes
    assert together == alone


def test_a_bad_item_in_a_batch_fails_alone() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from polymodal.serve.batcher import MicroBatcher

    def fn(items: list[int]) -> list[int]:
        if 0 in items:
            raise ValueError("zero")
        return [10 // i for i in items]

    b: MicroBatcher[int, int] = MicroBatcher("div", fn, ThreadPoolExecutor(1), max_batch=8, max_wait_ms=100)

    async def go() -> list[Any]:
        return await asyncio.gather(*(b.submit(i) for i in (1, 2, 0, 5)), return_exceptions=True)

    out = asyncio.run(go())
    assert out[:2] == [10, 5] and out[3] == 2 and isinstance(out[2], ValueError)
    assert b.stats.largest_batch == 4 and b.stats.forward_passes == 5  # one failed pass, then 4 alone


# ------------------------------------------------------------------------------------------ API key


def test_api_key_required_and_accepted(served: Served) -> None:
    c = TestClient(create_app(*served.multitask, settings=ServeSettings(api_key="s3cret")))
    assert c.get("/v1/health").status_code == 200  # health stays open
    _error(c.get("/v1/models"), 401, "unauthorized")
    _error(c.get("/v1/models", headers={"X-API-Key": "wrong"}), 401)
    _error(c.post("/v1/caption", files={"image": _png(served.images[0])}), 401)
    assert c.get("/v1/models", headers={"X-API-Key": "s3cret"}).status_code == 200


# ---------------------------------------------------------------------------------------- bad input


def _huge_png_header(w: int = 20000, h: int = 20000) -> bytes:
    """A valid-looking ~70-byte PNG whose header declares w x h pixels (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_bad_images_get_clear_4xx(served: Served, mt: TestClient) -> None:
    good = served.images[0].read_bytes()
    cases = {
        "truncated": (good[: len(good) // 2], 422),
        "text": (b"hello, I am not an image\n", 415),
        "tiff": (b"II*\x00" + b"\x00" * 64, 415),
        "empty": (b"", 422),
        "bomb": (_huge_png_header(), 422),
    }
    for name, (data, status) in cases.items():
        r = mt.post("/v1/caption", files={"image": (f"{name}.png", data, "image/png")})
        msg = _error(r, status)
        assert "image" in msg, (name, msg)
    assert "9000x9000" in _error(mt.post("/v1/caption", files={"image": ("b.png", _huge_png_header(9000, 9000), "image/png")}), 422, "image_too_large")
    # a real image in an accepted format other than PNG works
    buf = io.BytesIO()
    open_image(served.images[0]).save(buf, "JPEG")
    assert mt.post("/v1/caption", files={"image": ("x.jpg", buf.getvalue(), "image/jpeg")}).status_code == 200


def test_oversized_upload_is_413(served: Served) -> None:
    c = TestClient(create_app(*served.multitask, settings=ServeSettings(max_upload_bytes=2000)))
    _error(c.post("/v1/caption", files={"image": ("big.png", b"\x89PNG\r\n\x1a\n" + b"0" * 5000, "image/png")}), 413, "too_large")


def test_bad_texts_k_and_fields(served: Served, mt: TestClient, ret: TestClient) -> None:
    img = _png(served.images[0])
    _error(mt.post("/v1/answer", files={"image": img}, data={"question": "   "}), 422, "invalid_input")
    _error(mt.post("/v1/answer", files={"image": img}), 422, "invalid_input")  # missing field
    _error(mt.post("/v1/answer", files={"image": img}, data={"question": "x" * 5000}), 422)
    _error(ret.post("/v1/search", data={"text": ""}), 422)
    assert "between 1 and 1000" in _error(ret.post("/v1/search", data={"text": "a cube", "k": str(10**9)}), 422)
    _error(ret.post("/v1/search", data={"text": "a cube", "k": "0"}), 422)
    _error(ret.post("/v1/search", data={"text": "a cube", "k": "many"}), 422)
    _error(ret.post("/v1/search", data={"text": "a cube", "target": "../etc"}), 422)
    _error(ret.post("/v1/classify", files={"image": img}, data={"labels": ["cube"]}), 422)  # one label is no choice
    _error(ret.post("/v1/embed", files={"image": img}, data={"text": "both"}), 422)
    _error(mt.post("/v1/caption", json={"image": "aGVsbG8="}), 422)  # not multipart: the image field is missing
    assert mt.post("/v1/answer", files={"image": img}, data={"question": "¿qué color tiene el cubo? 立方体"}).status_code == 200


def test_paths_with_dotdot_never_reach_the_disk(served: Served, ret: TestClient) -> None:
    import httpx

    for path in ("../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd", "sub/../../x.png", "/etc/passwd"):
        r = ret.get(f"/v1/files/{path}")
        assert 400 <= r.status_code < 500 and "error" in r.json(), (path, r.text)
    _error(ret.get("/v1/files/not_indexed.png"), 404)

    async def raw() -> httpx.Response:  # a raw '..' segment, as a client that does not normalise URLs sends it
        from starlette.types import Message

        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(m: Message) -> None:
            sent.append(m)

        scope = {"type": "http", "method": "GET", "path": "/v1/files/../../etc/passwd", "raw_path": b"/v1/files/../../etc/passwd",
                 "query_string": b"", "headers": [], "http_version": "1.1", "scheme": "http", "server": ("t", 80), "client": ("c", 1)}
        await ret.app(scope, receive, send)
        return httpx.Response(sent[0]["status"], content=b"".join(m.get("body", b"") for m in sent[1:]))

    r = asyncio.run(raw())
    _error(r, 400, "bad_path")


def test_endpoints_the_model_cannot_serve_say_why(served: Served, mt: TestClient, ret: TestClient) -> None:
    img = _png(served.images[0])
    msg = _error(ret.post("/v1/caption", files={"image": img}), 400, "unsupported_for_model")
    assert "dual_encoder" in msg and "captioner" in msg
    _error(ret.post("/v1/answer", files={"image": img}, data={"question": "what?"}), 400, "unsupported_for_model")
    msg = _error(ret.post("/v1/classify", files={"image": img}), 422)
    assert "labels" in msg
    _error(mt.post("/v1/search", data={"text": "a cube"}), 409, "no_index")
    _error(mt.get("/v1/nope"), 404)
    _error(mt.get("/v1/caption"), 405)


def test_timeout_is_504(served: Served) -> None:
    import time

    app = create_app(*served.multitask, settings=ServeSettings(timeout_s=0.05))
    slow = app.state.batchers["caption"]
    fn = slow.fn
    slow.fn = lambda items: (time.sleep(0.3), fn(items))[1]
    _error(TestClient(app).post("/v1/caption", files={"image": _png(served.images[0])}), 504, "timeout")


def test_explain_returns_the_answer_and_a_heatmap_over_the_image(served: Served, mt: TestClient, ret: TestClient) -> None:
    from polymodal.explain import answer_heatmap

    model, proc = served.multitask
    img, q = served.images[0], "what color is the cube?"
    r = mt.post("/v1/explain", files={"image": _png(img)}, data={"question": q})
    assert r.status_code == 200, r.text
    body = r.json()
    want = answer_heatmap(model, proc, img, q)
    assert body["answer"] == want.answer == predict.answer(model, proc, [img], [q])[0]
    assert body["heatmap"] == want.heatmap
    cells = [v for row in body["heatmap"] for v in row]
    assert len(body["heatmap"]) == len(body["heatmap"][0]) and 0.0 <= min(cells) and max(cells) <= 1.0
    assert "explain" in mt.get("/v1/models").json()["models"][0]["operations"]
    msg = _error(ret.post("/v1/explain", files={"image": _png(img)}, data={"question": q}), 400, "unsupported_for_model")
    assert "needs a polymodal VQA or multi-task model" in msg and "dual_encoder" in msg
