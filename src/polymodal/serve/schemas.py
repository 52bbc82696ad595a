"""Response bodies of the REST API, as pydantic models so the OpenAPI schema documents them.

Requests are multipart forms (images as file uploads, texts and numbers as form fields), declared on
the endpoints themselves in :mod:`polymodal.serve.app`; the one exception is ``/v1/chat``, whose
conversation is a JSON body (:class:`ChatRequest`, images as base64 strings), as chat clients send it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AnswerResponse", "CaptionResponse", "ChatMessage", "ChatRequest", "ChatResponse", "ClassifyResponse", "EmbedResponse", "ErrorBody", "ErrorResponse",
    "HealthResponse", "MatchResponse", "ModelInfo", "ModelsResponse", "SearchHitOut", "SearchResponse",
]


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. invalid_input, too_large, unsupported_for_model.")
    message: str = Field(description="One sentence for a person: what was wrong and what is expected.")


class ErrorResponse(BaseModel):
    error: ErrorBody


class HealthResponse(BaseModel):
    status: str = "ok"
    model_type: str
    index: bool = Field(description="Whether /v1/search is available (the server was started with --index).")


class ModelInfo(BaseModel):
    name: str = Field(description="The model's source as given to the server (a run folder or zoo name).")
    model_type: str
    operations: list[str] = Field(description="The /v1 endpoints this model can serve.")


class IndexInfo(BaseModel):
    images: int
    texts: int
    embed_dim: int


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
    index: IndexInfo | None = None
    batching: dict[str, dict[str, int]] = Field(description="Per operation: requests, forward passes, largest batch.")


class EmbedResponse(BaseModel):
    kind: str = Field(description="'image' or 'text'.")
    dim: int
    embeddings: list[list[float]] = Field(description="One L2-normalised vector per input, in input order.")


class SearchHitOut(BaseModel):
    rank: int
    id: int
    kind: str
    score: float = Field(description="Cosine similarity to the query.")
    path: str | None = Field(None, description="Image entries: the path relative to the collection root.")
    text: str | None = None
    caption: str | None = None


class SearchResponse(BaseModel):
    results: list[SearchHitOut]


class CaptionResponse(BaseModel):
    caption: str


class AnswerResponse(BaseModel):
    answer: str


class ExplainResponse(BaseModel):
    answer: str
    heatmap: list[list[float]]  # rows x cols over the image, 0..1: how much each region drove the answer


class ClassifyResponse(BaseModel):
    label: str
    score: float
    scores: dict[str, float] = Field(description="Every class's probability, best first.")


class MatchResponse(BaseModel):
    score: float = Field(description="P(the image and the text match), from an image-text matching head.")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    content: str = Field(description="The text; each '<image>' marker in a user message takes the next image of 'images'.")


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt option is an error, not silently ignored

    messages: list[ChatMessage] = Field(description="The conversation so far, alternating user/assistant, ending with the user.")
    images: list[str] = Field(default_factory=list, description="Base64 images or data: URLs (PNG, JPEG, WebP, GIF, BMP), one per <image> marker, in order.")
    max_new_tokens: int | None = Field(None, ge=1, description="Most tokens in the answer: at most the server's limit; default 64 (or the limit, if lower).")
    temperature: float = Field(0.0, ge=0.0, le=10.0, allow_inf_nan=False, description="0: greedy; higher: more varied.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False, description="Nucleus sampling mass (with temperature > 0).")
    seed: int | None = Field(None, ge=0, lt=2**63, description="Seed for sampling, for repeatable answers (0 to 2**63 - 1).")
    stream: bool = Field(False, description='true: a text/event-stream of `data: {"delta": ...}` events, then `data: {"done": true, "text": ...}`.')


class ChatResponse(BaseModel):
    text: str
    dropped_rounds: int = Field(0, description="Earlier rounds left out so the conversation fits the context window.")
