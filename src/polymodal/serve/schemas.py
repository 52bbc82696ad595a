"""Response bodies of the REST API, as pydantic models so the OpenAPI schema documents them.

Requests are multipart forms (images as file uploads, texts and numbers as form fields), declared on
the endpoints themselves in :mod:`polymodal.serve.app`.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = [
    "AnswerResponse", "CaptionResponse", "ClassifyResponse", "EmbedResponse", "ErrorBody", "ErrorResponse",
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
