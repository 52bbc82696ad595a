"""The FastAPI application: ``create_app(model, processors, index, settings)``.

Images arrive as multipart file uploads (field ``image``), texts and numbers as form fields, so one
``curl -F image=@a.png -F question='what color?'`` call works against every endpoint. An endpoint the
loaded model cannot serve answers 400 (``unsupported_for_model``) naming the model type and what the
endpoint needs; ``/v1/search`` answers 409 when the server has no index. ``/v1/chat`` (assistants
only) takes a JSON conversation instead, and streams its answer as server-sent events when asked.
"""

# No `from __future__ import annotations` here: FastAPI must evaluate the endpoints' annotations, some
# of which name objects local to create_app (the API-key header).
import asyncio
import hmac
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, FastAPI, File, Form, Security, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from PIL import Image
from torch import nn

from polymodal import predict
from polymodal.api import Processors
from polymodal.chat import stream_reply
from polymodal.explain import answer_heatmap
from polymodal.models.vqa import VQAClassifier
from polymodal.predict import WrongModelType
from polymodal.serve import guards
from polymodal.serve.batcher import MicroBatcher
from polymodal.serve.chat_stream import chat_prompt, deltas, sse
from polymodal.serve.errors import ApiError, error_body, install_error_handlers
from polymodal.serve.schemas import (
    AnswerResponse,
    CaptionResponse,
    ChatRequest,
    ChatResponse,
    ClassifyResponse,
    EmbedResponse,
    ErrorResponse,
    ExplainResponse,
    HealthResponse,
    IndexInfo,
    MatchResponse,
    ModelInfo,
    ModelsResponse,
    SearchHitOut,
    SearchResponse,
)
from polymodal.serve.settings import ServeSettings

__all__ = ["create_app"]

log = logging.getLogger("polymodal.serve")

STATIC = Path(__file__).parent / "static"  # the web page: index.html + app.js + style.css, no build step

R = TypeVar("R")

# endpoint -> the predict command whose model-type rule it follows
ENDPOINTS: dict[str, str] = {
    "embed": "rank-texts", "search": "rank-texts", "caption": "caption", "answer": "answer",
    "classify": "classify", "zero-shot": "zero-shot", "match": "match",
}
_ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": ErrorResponse} for s in (400, 401, 404, 409, 413, 415, 422, 504)}

ImageFile = Annotated[UploadFile, File(description="An image file: PNG, JPEG, WebP, GIF or BMP.")]
OptImageFile = Annotated[UploadFile | None, File(description="An image file: PNG, JPEG, WebP, GIF or BMP.")]


class _BodyLimit:
    """ASGI middleware: 413 for a body past the limit (by Content-Length, or counted while streaming),
    400 for a URL path with a ``..`` segment; both as the JSON error body."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]], send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if ".." in scope.get("path", "").split("/"):
            await _send_error(send, 400, "bad_path", "the URL path may not contain a '..' segment")
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _send_error(send, 413, "too_large", f"the request body is {int(length)} bytes, more than the limit of {self.max_bytes}")
            return
        seen, started = 0, False

        async def counted() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge
            return message

        async def tracking(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracking)
        except _TooLarge:
            if not started:
                await _send_error(send, 413, "too_large", f"the request body is more than the limit of {self.max_bytes} bytes")


class _TooLarge(Exception):
    pass


async def _send_error(send: Callable[[dict[str, Any]], Awaitable[None]], status: int, code: str, message: str) -> None:
    import json

    body = json.dumps(error_body(code, message)).encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _can(model_type: str, command: str) -> bool:
    try:
        predict.require_model_type(model_type, command)
    except WrongModelType:
        return False
    return True


def create_app(model: nn.Module, processors: Processors, index: Any | None = None, settings: ServeSettings | None = None, *, name: str | None = None) -> FastAPI:
    """The API for one loaded model (and optionally a :class:`~polymodal.index.SearchIndex` built with it).

    Pass the index opened with ``SearchIndex.open(path, model=(model, processors))`` so a model with
    other weights is refused at startup, not at the first search.
    """
    settings = settings or ServeSettings()
    model.eval()
    model_type = predict.model_type_of(model, processors)
    source = name or processors.source or type(model).__name__
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="polymodal-model")  # one pass at a time

    def batcher(op: str, fn: Callable[[list[Any]], Sequence[Any]]) -> MicroBatcher[Any, Any]:
        return MicroBatcher(op, fn, executor, max_batch=settings.max_batch, max_wait_ms=settings.batch_ms)

    def _grouped(items: list[tuple[Any, ...]], key: Callable[[tuple[Any, ...]], Any], run: Callable[[list[tuple[Any, ...]]], list[Any]]) -> list[Any]:
        """Run ``run`` once per group of items sharing ``key`` (e.g. the same zero-shot labels), in input order."""
        out: list[Any] = [None] * len(items)
        groups: dict[Any, list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault(key(it), []).append(i)
        for idx in groups.values():
            for i, r in zip(idx, run([items[i] for i in idx])):
                out[i] = r
        return out

    batchers: dict[str, MicroBatcher[Any, Any]] = {
        "caption": batcher("caption", lambda imgs: predict.caption(model, processors, imgs)),
        "answer": batcher("answer", lambda it: predict.answer(model, processors, [i for i, _ in it], [q for _, q in it])),
        "match": batcher("match", lambda it: predict.match(model, processors, [i for i, _ in it], [t for _, t in it])),
        "classify": batcher("classify", lambda it: _grouped(it, lambda x: (x[0] is None, x[1] is None), lambda g: predict.classify(
            model, processors, [i for i, _ in g if i is not None] or None, [t for _, t in g if t is not None] or None))),
        "zero-shot": batcher("zero-shot", lambda it: _grouped(it, lambda x: x[1], lambda g: predict.zero_shot(model, processors, [i for i, _ in g], list(g[0][1])))),
        "embed-image": batcher("embed-image", lambda imgs: predict.embed_images(model, processors, imgs, 64).tolist()),
        "embed-text": batcher("embed-text", lambda txts: predict.embed_texts(model, processors, txts, 64).tolist()),
        "explain": batcher("explain", lambda it: [answer_heatmap(model, processors, i, q) for i, q in it]),
    }

    async def run(op: str, item: Any) -> Any:
        try:
            return await asyncio.wait_for(batchers[op].submit(item), settings.timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, "timeout", f"{op}: no result within {settings.timeout_s:g} s; the server is busy, try again") from None

    def need(endpoint: str, command: str | None = None) -> None:
        _, what = predict.COMMANDS[command or ENDPOINTS[endpoint]]
        if not _can(model_type, command or ENDPOINTS[endpoint]):
            raise ApiError(400, "unsupported_for_model", f"/v1/{endpoint} needs {what}, but this server holds a {model_type!r} model; "
                           f"it serves {', '.join('/v1/' + e for e in operations) or 'no model endpoint'}")
        if endpoint == "match" and not matches:
            raise ApiError(400, "unsupported_for_model", f"/v1/match needs {what}, but this {model_type!r} model was trained without the "
                           f"'itm' objective; it serves {', '.join('/v1/' + e for e in operations) or 'no model endpoint'}")

    matches = predict.has_itm_head(model)  # a fusion encoder or multi-task model may lack the head its type allows
    operations = [e for e, c in ENDPOINTS.items() if e != "zero-shot" and (_can(model_type, c) or (e == "classify" and _can(model_type, "zero-shot")))]
    if not matches and "match" in operations:
        operations.remove("match")
    if index is None and "search" in operations:
        operations.remove("search")
    explainable = isinstance(getattr(model, "vqa", model), VQAClassifier)
    if explainable:
        operations.append("explain")
    chatty = processors.chat is not None  # an assistant (mllm): /v1/chat
    if chatty:
        operations.append("chat")

    async def image_of(upload: UploadFile, field: str = "image") -> Image.Image:
        data = await upload.read(settings.max_upload_bytes + 1)
        return await run_in_threadpool(guards.check_image, data, field, settings)

    key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="Needed when the server was started with an API key.")

    def check_key(key: Annotated[str | None, Security(key_header)]) -> None:
        if settings.api_key is None:
            return
        if key is None or not hmac.compare_digest(key.encode(), settings.api_key.encode()):
            raise ApiError(401, "unauthorized", "a valid API key is needed in the X-API-Key header")

    app = FastAPI(title="polymodal", version="1", description=__doc__ or "", responses=_ERRORS)
    install_error_handlers(app)
    app.add_middleware(_BodyLimit, max_bytes=settings.max_upload_bytes)
    app.state.batchers, app.state.settings, app.state.model_type = batchers, settings, model_type
    open_routes = APIRouter(prefix="/v1")
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(check_key)])

    @open_routes.get("/health", response_model=HealthResponse)
    def health() -> HealthResponse:
        """Liveness: always open (no API key), cheap, touches no model."""
        return HealthResponse(model_type=model_type, index=index is not None)

    @v1.get("/models", response_model=ModelsResponse)
    def models() -> ModelsResponse:
        """The served model, what it can do, the index's size, and micro-batching counters."""
        info = None
        if index is not None:
            st = index.stats()
            info = IndexInfo(images=st.images, texts=st.texts, embed_dim=index.model_info.embed_dim)
        return ModelsResponse(models=[ModelInfo(name=Path(source).name or source, model_type=model_type, operations=operations)],
                              index=info, batching={k: b.stats.to_dict() for k, b in batchers.items()})

    @v1.post("/embed", response_model=EmbedResponse)
    async def embed(image: OptImageFile = None, text: Annotated[list[str] | None, Form(description="One or more texts (repeat the field).")] = None) -> EmbedResponse:
        """Embed one image, or one or more texts (not both), with the dual encoder's L2-normalised vectors."""
        need("embed")
        guards.one_input(image is not None, bool(text), "an image upload", "one or more text fields")
        if image is not None:
            vecs = [await run("embed-image", await image_of(image))]
        else:
            assert text is not None
            if len(text) > settings.max_texts:
                raise ApiError(422, "invalid_input", f"text: at most {settings.max_texts} texts per request, got {len(text)}")
            txts = [guards.check_text(t, f"text[{i}]", settings) for i, t in enumerate(text)]
            vecs = list(await asyncio.gather(*(run("embed-text", t) for t in txts)))
        return EmbedResponse(kind="image" if image is not None else "text", dim=len(vecs[0]), embeddings=vecs)

    @v1.post("/search", response_model=SearchResponse)
    async def search(
        image: OptImageFile = None,
        text: Annotated[str | None, Form(description="A text query (or upload an image).")] = None,
        k: Annotated[int, Form(description="How many results, 1..max_k (default max_k 1000; more is a 422).")] = 10,
        target: Annotated[Literal["image", "text", "all"], Form(description="Which entries to return.")] = "image",
        nprobe: Annotated[int | None, Form(ge=1, description="IVF index: clusters to scan (more: slower, higher recall; default: the index's own).")] = None,
        ef_search: Annotated[int | None, Form(ge=1, description="HNSW index: candidates to keep (more: slower, higher recall).")] = None,
    ) -> SearchResponse:
        """Search the index by a text or an uploaded image; paths are relative to the collection root."""
        if index is None:
            raise ApiError(409, "no_index", "this server has no index; start it with 'polymodal serve --model M --index IDX' to search")
        need("search")
        guards.check_k(k, settings)
        guards.one_input(image is not None, text is not None, "an image upload", "a text field")
        if image is not None:
            vec = await run("embed-image", await image_of(image))
        else:
            vec = await run("embed-text", guards.check_text(text, "text", settings))
        import numpy as np

        hits = await run_in_threadpool(index.search_vector, np.asarray(vec, dtype=np.float32), k, target=target, nprobe=nprobe, ef_search=ef_search)
        return SearchResponse(results=[SearchHitOut(rank=r, id=h.id, kind=h.kind, score=h.score, path=h.path, text=h.text, caption=h.caption)
                                       for r, h in enumerate(hits, 1)])

    @v1.get("/files/{path:path}", response_class=FileResponse)
    async def files(path: str) -> FileResponse:
        """An indexed image, by the collection-relative path that /v1/search returned (nothing else is served)."""
        if index is None:
            raise ApiError(409, "no_index", "this server has no index, so it serves no files")
        rel = guards.check_rel_path(path)
        full = await run_in_threadpool(index.file_path, rel)  # re-checks: inside the collection, symlinks resolved
        from polymodal.index.errors import SearchIndexError

        try:
            await run_in_threadpool(index.resolve, rel)  # only files the index holds
        except SearchIndexError:
            raise ApiError(404, "not_found", f"the index holds no image {rel!r}") from None
        if not full.is_file():
            raise ApiError(404, "not_found", f"{rel!r} is indexed but its file is gone")
        return FileResponse(full)

    @v1.post("/caption", response_model=CaptionResponse)
    async def caption(image: ImageFile) -> CaptionResponse:
        """A caption for an uploaded image (captioner or multi-task model)."""
        need("caption")
        return CaptionResponse(caption=await run("caption", await image_of(image)))

    @v1.post("/answer", response_model=AnswerResponse)
    async def answer(image: ImageFile, question: Annotated[str, Form()]) -> AnswerResponse:
        """The answer to a question about an uploaded image (VQA or multi-task model)."""
        need("answer")
        q = guards.check_text(question, "question", settings)
        return AnswerResponse(answer=await run("answer", (await image_of(image), q)))

    @v1.post("/explain", response_model=ExplainResponse)
    async def explain(image: ImageFile, question: Annotated[str, Form()]) -> ExplainResponse:
        """The answer and a heat-map of the image regions it came from (Grad-CAM over the image token
        grid; rows x cols in 0..1), for polymodal's classifier-style VQA and multi-task models."""
        if not explainable:
            raise ApiError(400, "unsupported_for_model", f"/v1/explain needs a polymodal VQA or multi-task model, but this server holds a "
                           f"{model_type!r} model; it serves {', '.join('/v1/' + e for e in operations) or 'no model endpoint'}")
        q = guards.check_text(question, "question", settings)
        got = await run("explain", (await image_of(image), q))
        return ExplainResponse(answer=got.answer, heatmap=got.heatmap)

    @v1.post("/classify", response_model=ClassifyResponse)
    async def classify(
        image: OptImageFile = None,
        text: Annotated[str | None, Form(description="The text input of an image+text classifier.")] = None,
        labels: Annotated[list[str] | None, Form(description="Zero-shot labels (dual encoders); repeat the field.")] = None,
    ) -> ClassifyResponse:
        """Zero-shot: an image and ``labels`` with a dual encoder. Otherwise a trained classifier's
        prediction for the image and/or text it reads."""
        if labels:
            need("classify", "zero-shot")
            if image is None:
                raise ApiError(422, "invalid_input", "zero-shot classification needs an image upload")
            labs = guards.check_labels(labels, settings)
            got = await run("zero-shot", (await image_of(image), labs))
        else:
            if _can(model_type, "zero-shot") and not _can(model_type, "classify"):
                raise ApiError(422, "invalid_input", f"a {model_type!r} model classifies zero-shot: give two or more 'labels' fields")
            need("classify")
            if image is None and text is None:
                raise ApiError(422, "invalid_input", "give the inputs the classifier reads: an image upload and/or a text field")
            img = await image_of(image) if image is not None else None
            txt = guards.check_text(text, "text", settings) if text is not None else None
            got = await run("classify", (img, txt))
        return ClassifyResponse(label=got.label, score=got.score, scores=got.scores)

    @v1.post("/match", response_model=MatchResponse)
    async def match(image: ImageFile, text: Annotated[str, Form()]) -> MatchResponse:
        """P(image and text match) from an image-text matching head (BLIP ITM, fusion encoder with itm)."""
        need("match")
        t = guards.check_text(text, "text", settings)
        return MatchResponse(score=await run("match", (await image_of(image), t)))

    @v1.post("/chat", response_model=ChatResponse, responses={200: {"content": {"text/event-stream": {}},
                                                                    "description": "JSON, or with stream=true server-sent events."}})
    async def chat(req: ChatRequest) -> Any:
        """Answer the last user message of a conversation (assistants: runs trained with train.task: mllm).

        A JSON body: ``messages`` (alternating user/assistant, ending with the user), ``images`` (base64 or
        data: URLs, one per ``<image>`` marker, in order), ``max_new_tokens``, ``temperature``, ``top_p``,
        ``seed``, ``stream``. Answers ``{"text": ...}``, or with ``stream: true`` a text/event-stream of
        ``data: {"delta": "..."}`` events and a last ``data: {"done": true, "text": "<the whole answer>"}``.
        The oldest rounds are left out when the conversation does not fit the model's context window.
        """
        if not chatty:
            raise ApiError(400, "unsupported_for_model", "/v1/chat needs an assistant (a multimodal LLM: a run trained with train.task: mllm), "
                           f"but this server holds a {model_type!r} model; it serves {', '.join('/v1/' + e for e in operations) or 'no model endpoint'}")
        prompt = await run_in_threadpool(chat_prompt, req, processors, settings)
        generator = None
        if req.seed is not None:
            import torch

            generator = torch.Generator(device=next(model.parameters()).device).manual_seed(req.seed)
        answer = deltas(executor, lambda stop: stream_reply(model, processors, prompt, req.temperature, req.top_p, generator, stop))
        if req.stream:
            return StreamingResponse(_events(answer), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        async def collect() -> str:
            return "".join([d async for d in answer])

        try:
            text = await asyncio.wait_for(collect(), settings.timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, "timeout", f"chat: no answer within {settings.timeout_s:g} s; the server is busy, or ask for fewer max_new_tokens") from None
        return ChatResponse(text=text, dropped_rounds=prompt.dropped_rounds)

    async def _events(answer: AsyncGenerator[str, None]) -> AsyncIterator[bytes]:
        """SSE: each delta, then the whole text; an error after the stream started becomes an error event."""
        parts: list[str] = []
        try:
            async for delta in answer:
                parts.append(delta)
                yield sse({"delta": delta})
        except Exception as e:  # the status line is sent already: report in the stream
            log.exception("chat stream failed", exc_info=e)
            yield sse(error_body("internal", "the answer failed part-way; see the server's log"))
            return
        finally:  # the client went away (or the answer ended): stop the model between tokens
            await answer.aclose()
        yield sse({"done": True, "text": "".join(parts)})

    @app.get("/", include_in_schema=False, response_class=FileResponse)
    def page() -> FileResponse:
        """The web page (open like /v1/health; its API calls send the key the user types)."""
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(open_routes)
    app.include_router(v1)
    return app
