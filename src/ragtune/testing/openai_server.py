"""A small but real OpenAI-protocol server (FastAPI) around ANY :class:`~ragtune.protocols.Generator`.

Routes: ``GET /v1/models`` and ``POST /v1/chat/completions`` (JSON with ``usage``, or server-sent
events in OpenAI's chunk format: a role-only first chunk, one chunk per content delta, a final chunk
with ``finish_reason``, a usage chunk when ``stream_options.include_usage`` is set, then
``data: [DONE]``). Tokens are streamed as the generator produces them: it runs in a worker thread
that pushes into a queue the response drains; if the client goes away, the next token aborts it.
``GET /ragtune/stats`` counts requests (for tests of retries).

Knobs for testing clients: ``api_key`` enforces ``Authorization: Bearer``; ``fail_first=N`` answers
the first N chat requests with 503 (optionally with ``Retry-After``); ``delay_s`` sleeps before
answering; ``keepalive_s`` sends ``: keep-alive`` comments while waiting for the next token.

Concessions: one choice (``n=1``) only; sampling parameters such as ``temperature`` are accepted and
ignored (the Generator protocol has none); the generator's own ``finish_reason`` is passed through,
so a timeout shows up as ``"timeout"``, which OpenAI itself never sends.

Run it as a process (tests do)::

    python -m ragtune.testing.openai_server --port 0 --generator echo
    listening on http://127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hmac
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ragtune.errors import RagtuneError
from ragtune.models import Completion, Message
from ragtune.protocols import Generator
from ragtune.testing import EchoGenerator

__all__ = ["create_app", "main"]

_ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})


class _ClientGone(Exception):
    """Raised inside ``on_token`` to stop a generation nobody is listening to any more."""


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _error(status: int, message: str, kind: str, code: str | None = None, param: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


def _parse_request(body: Any) -> tuple[str, list[Message], int, bool, bool]:
    if not isinstance(body, dict):
        raise _BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("'model' is required", "model")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise _BadRequest("'messages' must be a non-empty array", "messages")
    messages: list[Message] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or item.get("role") not in _ROLES:
            raise _BadRequest(f"messages[{i}] needs a role among {sorted(_ROLES)}", f"messages[{i}].role")
        content = item.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise _BadRequest(f"messages[{i}].content must be a string or content parts", f"messages[{i}].content")
        messages.append(Message(role=str(item["role"]), content=content))
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = 256
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise _BadRequest(f"max_tokens must be a positive integer, got {max_tokens!r}", "max_tokens")
    if body.get("n", 1) != 1:
        raise _BadRequest("only n=1 is supported", "n")
    stream = bool(body.get("stream", False))
    options = body.get("stream_options") or {}
    include_usage = stream and isinstance(options, dict) and bool(options.get("include_usage"))
    return model, messages, max_tokens, stream, include_usage


def _usage(completion: Completion) -> dict[str, int]:
    return {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens}


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


def create_app(generator: Generator, *, api_key: str | None = None, fail_first: int = 0, delay_s: float = 0.0,
               retry_after: float | None = None, keepalive_s: float | None = None,
               model_name: str | None = None) -> FastAPI:
    """An ASGI app serving ``generator`` under the model id ``model_name`` (default ``generator.name``)."""
    if fail_first < 0 or delay_s < 0 or (keepalive_s is not None and keepalive_s <= 0):
        raise ValueError(f"invalid server options fail_first={fail_first} delay_s={delay_s} keepalive_s={keepalive_s}")
    name = model_name or generator.name
    created = int(time.time())
    stats = {"requests": 0, "chat_requests": 0, "failed_on_purpose": 0}
    app = FastAPI(title="ragtune OpenAI-compatible test server", docs_url=None, redoc_url=None, openapi_url=None)

    def denied(request: Request) -> JSONResponse | None:
        if api_key is None:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode()):
            return None
        return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")

    @app.get("/ragtune/stats")
    async def get_stats() -> dict[str, int]:
        return dict(stats)

    @app.get("/v1/models")
    async def list_models(request: Request) -> Response:
        stats["requests"] += 1
        refused = denied(request)
        if refused is not None:
            return refused
        return JSONResponse({"object": "list", "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "ragtune"}]})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        stats["requests"] += 1
        stats["chat_requests"] += 1
        refused = denied(request)
        if refused is not None:
            return refused
        if stats["failed_on_purpose"] < fail_first:
            stats["failed_on_purpose"] += 1
            headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
            return _error(503, "the server is warming up (fail_first)", "server_error", "unavailable",
                          headers=headers)
        if delay_s:
            await asyncio.sleep(delay_s)
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the request body is not valid JSON", "invalid_request_error")
        try:
            model, messages, max_tokens, stream, include_usage = _parse_request(body)
        except _BadRequest as exc:
            return _error(400, str(exc), "invalid_request_error", param=exc.param)
        if model != name:
            return _error(404, f"The model `{model}` does not exist or you do not have access to it.",
                          "invalid_request_error", "model_not_found", "model")
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if stream:
            events = _stream(generator, messages, max_tokens, name, completion_id, include_usage, keepalive_s)
            return StreamingResponse(events, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            completion = await anyio.to_thread.run_sync(
                functools.partial(generator.generate, messages, max_tokens=max_tokens))
        except RagtuneError as exc:
            return _error(500, f"{type(exc).__name__}: {exc}", "server_error", getattr(exc, "code", None))
        return JSONResponse({
            "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": completion.text},
                         "logprobs": None, "finish_reason": completion.finish_reason}],
            "usage": _usage(completion),
        })

    return app


async def _stream(generator: Generator, messages: list[Message], max_tokens: int, name: str, completion_id: str,
                  include_usage: bool, keepalive_s: float | None) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    gone = threading.Event()

    def emit(kind: str, value: Any) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

    def on_token(piece: str) -> None:
        if gone.is_set():
            raise _ClientGone
        if piece:
            emit("token", piece)

    def work() -> None:
        try:
            completion = generator.generate(messages, max_tokens=max_tokens, on_token=on_token)
        except _ClientGone:
            return
        except Exception as exc:
            if not gone.is_set():
                emit("error", exc)
            return
        if not gone.is_set():
            emit("done", completion)

    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        payload: dict[str, Any] = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                                   "model": name, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                               "finish_reason": finish}]}
        if include_usage:
            payload["usage"] = None
        return _sse(payload)

    threading.Thread(target=work, name="openai-server-generate", daemon=True).start()
    streamed = False
    try:
        yield ": ragtune openai test server\n\n"
        yield chunk({"role": "assistant", "content": ""})
        while True:
            if keepalive_s:
                try:
                    kind, value = await asyncio.wait_for(queue.get(), keepalive_s)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
            else:
                kind, value = await queue.get()
            if kind == "token":
                streamed = True
                yield chunk({"content": value})
            elif kind == "error":
                code = getattr(value, "code", "server_error")
                yield _sse({"error": {"message": f"{type(value).__name__}: {value}", "type": "server_error",
                                      "param": None, "code": code}})
                yield "data: [DONE]\n\n"
                return
            else:
                completion: Completion = value
                if not streamed and completion.text:  # a generator that ignores on_token
                    yield chunk({"content": completion.text})
                yield chunk({}, completion.finish_reason)
                if include_usage:
                    yield _sse({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                                "model": name, "choices": [], "usage": _usage(completion)})
                yield "data: [DONE]\n\n"
                return
    finally:
        gone.set()


# -- command line --------------------------------------------------------------------------------
def _build_generator(args: argparse.Namespace) -> Generator:
    if args.generator == "echo":
        return EchoGenerator(args.model_name or "echo", token_delay_s=args.token_delay, fail_after=args.fail_after)
    from ragtune.generate.local import TransformersGenerator
    from ragtune.settings import Settings

    cache_dir = Path(args.cache_dir) if args.cache_dir else Settings().resolved_cache_dir
    options: dict[str, Any] = {"max_time": args.max_time} if args.max_time else {}
    if args.model_name:
        options["name"] = args.model_name
    local = TransformersGenerator.packaged(cache_dir, **options)
    local.model  # noqa: B018 - load before announcing the port, so the first request is not slow
    local.tokenizer  # noqa: B018
    return local


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ragtune.testing.openai_server",
                                     description="An OpenAI-protocol server around a ragtune generator, for tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--generator", choices=["echo", "smollm2"], default="echo")
    parser.add_argument("--model-name", help="model id to serve (default: the generator's name)")
    parser.add_argument("--api-key", help="require this bearer token")
    parser.add_argument("--api-key-env", help="require the bearer token held in this environment variable")
    parser.add_argument("--fail-first", type=int, default=0, help="answer the first N chat requests with 503")
    parser.add_argument("--retry-after", type=float, help="Retry-After seconds sent with those 503s")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before answering")
    parser.add_argument("--keepalive", type=float, help="send ': keep-alive' comments after this many idle seconds")
    parser.add_argument("--token-delay", type=float, default=0.0, help="echo: seconds per token")
    parser.add_argument("--fail-after", type=int, help="echo: raise after this many tokens")
    parser.add_argument("--cache-dir", help="smollm2: cache folder (default: the ragtune cache)")
    parser.add_argument("--max-time", type=float, help="smollm2: bound one generation in seconds")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    api_key = args.api_key or (os.environ.get(args.api_key_env) if args.api_key_env else None)
    if args.api_key_env and not api_key:
        parser.error(f"the environment variable {args.api_key_env} is not set")

    import uvicorn

    app = create_app(_build_generator(args), api_key=api_key, fail_first=args.fail_first, delay_s=args.delay,
                     retry_after=args.retry_after, keepalive_s=args.keepalive, model_name=args.model_name)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)  # connections queue from now on, before uvicorn's loop accepts them
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level=args.log_level, access_log=False, lifespan="off",
                            timeout_graceful_shutdown=1)
    print(f"listening on http://{args.host}:{port}", flush=True)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


if __name__ == "__main__":
    main()
