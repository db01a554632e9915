"""The HTTP server: ``create_app(engine, settings)`` builds the FastAPI app around one engine.

Routers (one per area, in ``routes/``): collections, documents (upload, list, show, delete),
ingest jobs, scheduled syncs (admin), search, ask (JSON or Server-Sent Events), traces, datasets (read only) and the
OpenAI-compatible ``/v1``. The OpenAPI spec is at ``/openapi.json`` (browsable at ``/docs``);
``/health`` answers without a key and serves no data, and neither do the web console's static
files at ``/console/`` (``/`` redirects there; see ``console``). Everything else needs an API key
whenever auth is on (see ``auth``). Errors are problem responses (``problems``).

Limits: a JSON body over ``server.max_request_bytes`` is refused with 413 before it is parsed
(a body without Content-Length is read up to the limit, never further); uploads are streamed with
their own limits (``uploads``). ``top_k`` over ``server.max_top_k`` is a 400 naming the limit.
Shutdown: uvicorn stops accepting, lets in-flight requests (streams included) finish for up to
``server.shutdown_timeout`` seconds, then the lifespan stops the ingest worker, which puts a job
it had to cut short back in the queue.

Losing the database: ``/health`` checks it (a fresh connection, bounded to a few seconds) and
answers 503 ``{"status": "unavailable", "code": "database_unavailable", ...}`` with ``Retry-After``
while it is down; that check, like any request that finds the database gone, starts the embedded
server's restart in the background (``Database``), and the engine's reads wait for it and run once
more. A request that cannot be served in ``database_wait`` seconds is a 503 problem with
``Retry-After``; a statement over ``statement_timeout`` is a 504 ``query_timeout``.
"""

from __future__ import annotations

import math
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio import to_thread
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from ragtune.engine import Ragtune
from ragtune.errors import ConfigError, DatabaseUnavailableError, StoreError
from ragtune.extras import require
from ragtune.observe.metrics import Metrics
from ragtune.server import problems
from ragtune.server.auth import auth_required, parse_list
from ragtune.server.cancel import CancelOnDisconnect
from ragtune.server.deps import Observer, ServerState
from ragtune.server.guards import RequestGuard, allowed_hosts
from ragtune.settings import Settings
from ragtune.store.audit import origin

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_UPLOAD_PATH = re.compile(r"^/collections/[^/]+/documents/?$")
_HEALTH_TIMEOUT_S = 3.0  # a health check answers within this even when the database hangs


def create_app(engine: Ragtune, settings: Settings | None = None, *, auth: bool | None = None,
               start_worker: bool = True) -> FastAPI:
    """The app serving ``engine`` (a :class:`ragtune.engine.Ragtune`). ``auth`` None decides from
    the settings (``server.auth``, and whether ``server.host`` is a loopback address)."""
    from ragtune import __version__
    from ragtune.server import console
    from ragtune.server.routes import (
        ask,
        audit,
        collections,
        datasets,
        documents,
        erasures,
        feedback,
        ingest,
        models,
        openai,
        policies,
        schedules,
        search,
        traces,
    )

    settings = settings or engine.settings
    state = ServerState(engine, settings, auth_required(settings, flag=auth))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if start_worker:
            await to_thread.run_sync(state.worker.start)
        try:
            yield
        finally:
            if start_worker:
                await to_thread.run_sync(state.worker.stop, max(settings.server.shutdown_timeout, 1.0))

    app = FastAPI(title="ragtune", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="RAG and fine-tuning on PostgreSQL: REST and OpenAI-compatible API. "
                              "Send an API key as 'Authorization: Bearer <key>'.")
    app.state.ragtune = state
    problems.install(app)
    for module in (collections, documents, ingest, schedules, search, ask, traces, feedback, datasets, models,
                   audit, policies, erasures, openai):
        app.include_router(module.router, responses=problems.RESPONSES)

    @app.get("/health", tags=["meta"], summary="Liveness and the database; needs no key and serves no data",
             response_model=None, responses={503: {"description": "The database is down or restarting; "
                                                                   "Retry-After says when to ask again"}})
    async def health() -> dict[str, Any] | JSONResponse:
        body: dict[str, Any] = {"status": "ok", "version": __version__, "auth": state.auth_required}
        problem: StoreError | None = DatabaseUnavailableError(f"no answer within {_HEALTH_TIMEOUT_S:g} s")
        with anyio.move_on_after(_HEALTH_TIMEOUT_S):
            problem = await to_thread.run_sync(_database_problem, state.engine, abandon_on_cancel=True)
        if problem is None:
            return body  # unchanged since before the database was checked: clients compare it
        retry = max(1, round(getattr(problem, "retry_after", 2.0) + 0.49))
        return JSONResponse({**body, "status": "unavailable", "database": "unavailable", "code": problem.code,
                             "detail": problems.DATABASE_UNAVAILABLE, "retry_after": retry},
                            status_code=503, headers={"Retry-After": str(retry)})

    @app.get("/metrics", tags=["meta"], summary="Prometheus metrics: requests, stages, tokens, answers, span "
             "export (needs the observe scope)", response_class=PlainTextResponse)
    def metrics(caller: Observer) -> Response:
        body, content_type = state.metrics.exposition()
        return Response(body, media_type=content_type)

    console.install(app)
    if settings.server.api_docs:
        install_api_docs(app)

    app.add_middleware(BodyLimit, max_bytes=settings.server.max_request_bytes)
    origins = parse_list(settings.server.cors_origins)
    # added last, so it runs first: nothing reaches a route (or CORS) before the guard's checks
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins,
                           allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type", "X-API-Key", "Accept"],
                           expose_headers=["Location", "Retry-After"])
    app.add_middleware(CancelOnDisconnect)
    app.add_middleware(RequestMetrics, metrics=state.metrics)
    app.add_middleware(RequestGuard, cors_origins=origins,
                       hosts=allowed_hosts(settings.server.host, parse_list(settings.server.allowed_hosts)))
    return app


def install_api_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from the swagger-ui-bundle package's files: nothing from another host."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles

    swagger_ui_bundle = require("swagger_ui_bundle", "server", "server.api_docs", error=ConfigError)
    app.mount("/docs-static", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="ragtune API",
                                   swagger_js_url="/docs-static/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-static/swagger-ui.css",
                                   swagger_favicon_url="/docs-static/favicon-32x32.png")


def _database_problem(engine: Ragtune) -> StoreError | None:
    """None when the database answers; opening it (first use) or a failed ping starts the embedded
    server (again)."""
    try:
        engine.db.ping()
    except StoreError as exc:
        return exc
    return None


class RequestMetrics:
    """Counts every HTTP request and its seconds by route template (``/collections/{collection}/ask``, not
    each collection's path: bounded labels), method and status. Inside the guard, so a request the
    guard refuses (wrong host, flood) is not a route's; an unknown path is counted as ``unmatched``.
    It also sets the audit log's origin of the request: its client's address (``store.audit.origin``)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before it answers

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        client = scope.get("client")
        try:
            # the audit log's "from where" of whatever the request reads or writes
            with origin(f"http {client[0] if client else '?'}"):
                await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            self.metrics.observe_request(getattr(route, "path", "unmatched"), scope["method"], status,
                                         time.perf_counter() - started)


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` (uploads excepted: they stream with their own limits)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS") or (
                scope["method"] == "POST" and _UPLOAD_PATH.match(scope["path"])):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.max_bytes:
                await self._refuse(scope, receive, send, declared.decode("latin-1"))
                return
            await self.app(scope, receive, send)
            return
        body = bytearray()  # chunked: read up to the limit, then replay
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._refuse(scope, receive, send, f"more than {self.max_bytes}")
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, size: str) -> None:
        response = problems.problem(
            413, "request_too_large",
            f"request body of {size} bytes is over server.max_request_bytes={self.max_bytes}",
            instance=scope["path"], openai=scope["path"].startswith("/v1/"), limit="max_request_bytes")
        await response(scope, receive, send)


def make_server(app: FastAPI, settings: Settings, *, log_level: str = "info", access_log: bool = False) -> Any:
    """A uvicorn server for ``app`` with graceful shutdown; run it with ``.run(sockets=[bind(...)])``."""
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, access_log=access_log, lifespan="on", server_header=False,
                            timeout_graceful_shutdown=math.ceil(settings.server.shutdown_timeout))
    return uvicorn.Server(config)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one), bound before uvicorn starts so connections queue."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this: without it a response written in two segments waits for
    # the client's delayed ACK (Nagle), measured as +40 ms on every request over loopback.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
