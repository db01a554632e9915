"""Checks every request passes before any route runs (ASGI middleware, no FastAPI).

- **Framing.** A request with both ``Content-Length`` and ``Transfer-Encoding`` is refused (400,
  and the connection closed): h11 accepts it and uses the chunked framing, but a proxy in front may
  use the other, which is how requests are smuggled past it.
- **Host.** A server bound to a loopback address answers only requests whose ``Host`` names a
  loopback address (or a name in ``server.allowed_hosts``). A web page cannot then reach it by
  pointing its own domain at 127.0.0.1 (DNS rebinding), which would make its scripts same-origin.
  Bound elsewhere, ``server.allowed_hosts`` lists the names to accept ("*": any, the default there,
  where API keys are required).
- **Origin.** A browser request that changes state (anything but GET, HEAD and OPTIONS) from another
  origin is refused (403) unless CORS allows that origin (``server.cors_origins``). Browsers send
  ``Origin`` with every cross-origin POST, including the form posts and multipart uploads that need
  no CORS preflight, so without this check any page could act as the local admin of a server
  running without keys.
- **Text.** PostgreSQL cannot store NUL characters and UTF-8 has no lone surrogates; a path,
  query string or JSON body holding either, or a JSON number outside what a 64-bit integer or a
  float can hold, is refused (400, naming where) before any route sees it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

from ragtune.retrieve.filters import bad_text, bad_value
from ragtune.server import problems
from ragtune.server.auth import is_loopback

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_LONG_NUMBER = re.compile(rb"\d{19}|[eE][+-]?\d{3}")  # beyond int64, or an exponent that may overflow a float


def allowed_hosts(bound_host: str, configured: Iterable[str]) -> frozenset[str] | None:
    """The ``Host`` names a server bound to ``bound_host`` accepts; None: any."""
    names = {h.strip().lower().strip("[]") for h in configured if h.strip()}
    if "*" in names:
        return None
    if is_loopback(bound_host):
        return frozenset(LOOPBACK_NAMES | names | {bound_host.lower().strip("[]")})
    if not names:
        return None
    return frozenset(names | {bound_host.lower().strip("[]")})


def host_name(value: str) -> str:
    """``Host`` header -> name: ``[::1]:8000`` -> ``::1``, ``Example.org:80`` -> ``example.org``."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def json_problem(value: Any, where: str = "body") -> str | None:
    """The first place in a parsed JSON value that no part of ragtune can store or compute with."""
    stack: list[tuple[str, Any]] = [(where, value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                problem = bad_text(key)
                if problem:
                    return f"a key in {path} holds {problem}"
                stack.append((f"{path}.{key}", child))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", child) for i, child in enumerate(item))
        else:
            problem = bad_value(item)
            if problem:
                return f"{path}: {problem}"
    return None


def _needs_parse(body: bytes) -> bool:
    """Whether a JSON body can hold what ``json_problem`` looks for: escapes, long numbers, NaN."""
    return b"\\u" in body or b"NaN" in body or b"Infinity" in body or _LONG_NUMBER.search(body) is not None


class RequestGuard:
    """The checks in the module docstring, in that order."""

    def __init__(self, app: App, *, hosts: frozenset[str] | None, cors_origins: Iterable[str]) -> None:
        self.app = app
        self.hosts = hosts
        origins = {o.rstrip("/") for o in cors_origins}
        self.any_origin = "*" in origins
        self.origins = frozenset(origins - {"*"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            status, code, detail, close = refusal
            response = problems.problem(status, code, detail, instance=_printable(scope.get("path", "")),
                                        openai=str(scope.get("path", "")).startswith("/v1/"),
                                        headers={"Connection": "close"} if close else None)
            await response(scope, receive, send)
            return
        if scope["method"] in SAFE_METHODS or b"json" not in headers.get(b"content-type", b""):
            await self.app(scope, receive, send)
            return
        await self._checked_json(scope, receive, send)

    def _refusal(self, scope: Scope, headers: dict[bytes, bytes]) -> tuple[int, str, str, bool] | None:
        if b"transfer-encoding" in headers and b"content-length" in headers:
            return (400, "ambiguous_framing", "a request may not have both Content-Length and Transfer-Encoding",
                    True)
        host = headers.get(b"host", b"").decode("latin-1")
        if self.hosts is not None and host_name(host) not in self.hosts:
            return (400, "host_not_allowed", f"this server does not answer for the host {host!r}; add it to "
                    "server.allowed_hosts if it is yours", True)
        origin = headers.get(b"origin")
        if origin is not None and scope["method"] not in SAFE_METHODS and not self._same_or_allowed(
                origin.decode("latin-1"), host, scope):
            return (403, "cross_origin_refused", f"a request from the origin {origin.decode('latin-1')!r} may not "
                    "change anything here; allow the origin in server.cors_origins if it is yours", False)
        problem = bad_text(str(scope.get("path", "")))
        if problem is None:
            query = unquote_to_bytes(scope.get("query_string", b"").replace(b"+", b" "))
            problem = ("a NUL character" if b"\x00" in query else None)
            where = "the query string"
        else:
            where = "the path"
        if problem is not None:
            return 400, "invalid_text", f"{where} holds {problem}", False
        return None

    def _same_or_allowed(self, origin: str, host: str, scope: Scope) -> bool:
        origin = origin.strip().rstrip("/")
        if self.any_origin or origin in self.origins:
            return True
        if origin == "null":  # sandboxed frames and file:// pages
            return False
        parts = urlsplit(origin)
        scheme = scope.get("scheme", "http")
        return parts.scheme == scheme and parts.netloc.lower() == host.strip().lower()

    async def _checked_json(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Read the body (the body limit has already capped it), check it, then replay it."""
        messages: list[Message] = []
        body = bytearray()
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        problem = None
        if _needs_parse(bytes(body)):
            try:
                value = json.loads(body)
            except (ValueError, RecursionError):
                value = None  # not JSON: the route answers that with its own 422
            problem = json_problem(value) if value is not None else None
        if problem is not None:
            response = problems.problem(400, "invalid_text", f"the request {problem}",
                                        instance=_printable(scope.get("path", "")),
                                        openai=str(scope.get("path", "")).startswith("/v1/"))
            await response(scope, receive, send)
            return
        replay: Iterator[Message] = iter(messages)

        async def replayed() -> Message:
            for message in replay:
                return message
            return await receive()

        await self.app(scope, replayed, send)


def _headers(scope: Scope) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for name, value in scope.get("headers") or []:
        out.setdefault(name.lower(), value)
    return out


def _printable(path: str) -> str:
    return path.replace("\x00", "\\x00")
