"""Every failure becomes ``{"error": {"code": ..., "message": ...}}`` with a 4xx status, never a bare 500.

Why: clients (and the web page) handle one error shape; a traceback is never sent. Bad input is caught
before the model by :mod:`polymodal.serve.guards`; what slips past (a ``DataError`` from decoding, a
``WrongModelType``) is mapped here. A genuine bug still answers 500, with a generic message.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from polymodal.errors import DataError, PolymodalError
from polymodal.index.errors import SearchIndexError
from polymodal.predict import WrongModelType

__all__ = ["ApiError", "error_body", "install_error_handlers"]

log = logging.getLogger("polymodal.serve")

_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 409: "conflict",
          413: "too_large", 415: "unsupported_media_type", 422: "invalid_input", 504: "timeout"}


class ApiError(Exception):
    """An error with its HTTP status and a stable machine-readable code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def _json(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":  # its loc is the character offset, which alone reads as a field name
            at = err.get("loc", ("body", "?"))[-1]
            why = (err.get("ctx") or {}).get("error", "")
            parts.append(f"the request body is not valid JSON (at character {at}{': ' + why if why else ''})")
            continue
        where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path", "header"))
        parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request is invalid"


def _mapped(status: int, code: str) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handler(_: Request, exc: Exception) -> JSONResponse:
        return _json(status, code, str(exc))

    return handler


def install_error_handlers(app: FastAPI) -> None:
    """Map polymodal's and FastAPI's exceptions to JSON 4xx answers."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return _json(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _json(422, "invalid_input", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _json(exc.status_code, _CODES.get(exc.status_code, "error"), str(exc.detail))

    # polymodal's own errors are about the request; the most specific class wins (Starlette looks up the MRO)
    for cls, status, code in (
        (WrongModelType, 400, "unsupported_for_model"),
        (DataError, 422, "invalid_input"),
        (SearchIndexError, 422, "invalid_input"),
        (PolymodalError, 400, "bad_request"),
    ):
        app.add_exception_handler(cls, _mapped(status, code))

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> JSONResponse:  # a bug, not bad input: log it, say little
        log.exception("unhandled error while serving a request", exc_info=exc)
        return _json(500, "internal", "the server failed on this request; see its log")
