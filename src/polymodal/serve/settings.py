"""What an operator can tune about the server; one frozen dataclass so the CLI and tests share it."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ServeSettings"]

# Formats PIL decodes reliably and safely; TIFF and the exotic plugins are left out on purpose.
IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF", "BMP")


@dataclass(frozen=True)
class ServeSettings:
    """Limits and knobs of one server.

    ``api_key``: when set, every ``/v1`` route but ``/v1/health`` needs it in the ``X-API-Key`` header.
    ``max_upload_bytes`` bounds a whole request body (413 past it); ``max_pixels`` refuses images whose
    header declares more pixels before a byte of them is decoded; ``max_k`` bounds search results
    (a larger ``k`` is a 422, so one request cannot ask for the whole index's metadata at once);
    ``batch_ms`` / ``max_batch`` set how long and how many requests the micro-batcher gathers;
    ``timeout_s`` bounds one request's wait for its result (504 past it); ``max_new_tokens`` and
    ``max_chat_images`` bound one ``/v1/chat`` answer's length and the images its conversation holds.
    """

    api_key: str | None = None
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    image_formats: tuple[str, ...] = IMAGE_FORMATS
    max_text_chars: int = 2000
    max_texts: int = 64
    max_k: int = 1000
    batch_ms: float = 5.0
    max_batch: int = 32
    timeout_s: float = 30.0
    max_new_tokens: int = 512
    max_chat_images: int = 8

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_text_chars", "max_texts", "max_k", "max_batch", "max_new_tokens", "max_chat_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServeSettings.{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_ms < 0 or self.timeout_s <= 0:
            raise ValueError("ServeSettings: batch_ms must be >= 0 and timeout_s > 0")
        if self.api_key is not None and not self.api_key:
            raise ValueError("ServeSettings.api_key is empty; give a key or None to serve without one")
