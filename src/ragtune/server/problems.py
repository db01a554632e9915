"""Errors as JSON problem responses (RFC 9457), the only place that maps errors to HTTP statuses.

Every error response has the shape ``{"type", "title", "status", "detail", "instance", "code"}``
with the media type ``application/problem+json``; ``code`` is the stable ``RagtuneError.code``
(or one of the few server codes below) that clients branch on. Responses under ``/v1/`` also carry
``error: {message, type, param, code}``, the shape the OpenAI clients read, so one body serves both.
Unexpected exceptions become a 500 ``internal_error`` whose detail says nothing about the internals;
the exception is logged.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from ragtune import errors as e

log = logging.getLogger("ragtune.server")

PROBLEM_JSON = "application/problem+json"
DATABASE_UNAVAILABLE = "the database is not available right now (restarting or busy); retry after the Retry-After delay"

# Most specific class first: the first match wins.
_STATUS: list[tuple[type[e.RagtuneError], int]] = [
    (e.AuthenticationError, 401),
    (e.PermissionDeniedError, 403),
    (e.RateLimitError, 429),
    (e.RequestTooLargeError, 413),
    (e.FileTooLargeError, 413),
    (e.NotFoundError, 404),
    (e.EmbedderMismatchError, 409),
    (e.QueryError, 400),
    (e.ConfigError, 400),
    (e.DatasetValidationError, 422),
    (e.DatasetError, 400),
    (e.IngestError, 422),
    (e.GenerationTimeoutError, 504),
    # The database is our upstream: a statement it stopped for running too long is a gateway
    # timeout (retrying the same query would time out again), not a 503 inviting a retry.
    (e.QueryTimeoutError, 504),
    (e.GenerationError, 502),
    (e.ModelError, 503),
    (e.StoreError, 503),
]

_HTTP_CODES = {400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 406: "not_acceptable", 413: "request_too_large",
               415: "unsupported_media_type", 422: "invalid_request", 429: "rate_limited"}


class Problem(BaseModel):
    """An error response (RFC 9457); ``code`` is stable, extra members depend on the error."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None


# Declared on every route, so the spec describes the errors it really returns.
RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": Problem, "description": "A problem response (application/problem+json)"},
    "5XX": {"model": Problem, "description": "A problem response (application/problem+json)"},
}


def status_for(exc: e.RagtuneError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def problem(status: int, code: str, detail: str, *, instance: str | None = None,
            headers: dict[str, str] | None = None, openai: bool = False, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"urn:ragtune:problem:{code}",
        "title": _title(status),
        "status": status,
        "detail": detail,
        "code": code,
    }
    if instance:
        body["instance"] = instance
    body.update(extra)
    if openai:
        kind = "invalid_request_error" if status < 500 else "server_error"
        if status == 401:
            kind = "authentication_error"
        elif status == 429:
            kind = "rate_limit_error"
        body["error"] = {"message": detail, "type": kind, "param": extra.get("param"), "code": code}
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def problem_payload(exc: BaseException) -> dict[str, Any]:
    """The body of a problem for an error met after a stream started (sent as an SSE event)."""
    if not isinstance(exc, e.RagtuneError):
        log.error("a streamed response failed", exc_info=exc)
    if isinstance(exc, e.DatabaseUnavailableError):
        log.warning("a streamed response failed: %s", exc)
        return {"type": f"urn:ragtune:problem:{exc.code}", "title": _title(503), "status": 503,
                "detail": DATABASE_UNAVAILABLE, "code": exc.code, "retry_after": round(exc.retry_after, 3)}
    if isinstance(exc, e.RagtuneError):
        return {"type": f"urn:ragtune:problem:{exc.code}", "title": _title(status_for(exc)),
                "status": status_for(exc), "detail": str(exc), "code": exc.code}
    return {"type": "urn:ragtune:problem:internal_error", "title": _title(500), "status": 500,
            "detail": "internal error; see the server log", "code": "internal_error"}


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _is_openai(request: Request) -> bool:
    return request.url.path.startswith("/v1/")


def ragtune_error_response(request: Request, exc: e.RagtuneError) -> JSONResponse:
    status = status_for(exc)
    headers: dict[str, str] = {}
    extra: dict[str, Any] = {}
    if isinstance(exc, e.AuthenticationError):
        headers["WWW-Authenticate"] = 'Bearer realm="ragtune"'
    if isinstance(exc, e.RateLimitError | e.DatabaseUnavailableError):
        headers["Retry-After"] = str(max(1, round(exc.retry_after + 0.49)))
        extra["retry_after"] = round(exc.retry_after, 3)
    if isinstance(exc, e.LimitError | e.JobLimitError):
        extra["limit"] = exc.limit
    if isinstance(exc, e.IngestError):
        extra["source"] = exc.source
    if isinstance(exc, e.PolicyError):
        extra["problems"] = exc.problems
    if status >= 500:
        log.warning("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
    detail = str(exc)
    if isinstance(exc, e.DatabaseUnavailableError):
        detail = DATABASE_UNAVAILABLE  # its message names the server's address and folders: logged above
    return problem(status, exc.code, detail, instance=request.url.path, headers=headers or None,
                   openai=_is_openai(request), **extra)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into a problem response."""

    @app.exception_handler(e.RagtuneError)
    async def _ragtune(request: Request, exc: e.RagtuneError) -> JSONResponse:
        return ragtune_error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [{"loc": [str(p) for p in err.get("loc", ())], "message": err.get("msg", "")}
                    for err in exc.errors()]
        first = problems[0] if problems else {"loc": [], "message": "invalid request"}
        where = ".".join(first["loc"][1:] if len(first["loc"]) > 1 else first["loc"])
        detail = f"{where}: {first['message']}" if where else str(first["message"])
        param = where or None
        return problem(422, "invalid_request", detail, instance=request.url.path, openai=_is_openai(request),
                       errors=problems, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else _title(exc.status_code)
        return problem(exc.status_code, code, detail, instance=request.url.path,
                       headers=dict(exc.headers) if exc.headers else None, openai=_is_openai(request))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s: unexpected error", request.method, request.url.path)
        return problem(500, "internal_error", "internal error; see the server log", instance=request.url.path,
                       openai=_is_openai(request))
