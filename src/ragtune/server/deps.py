"""What every router needs: the server's state (engine, settings, keys, jobs) and the caller.

``Reader``, ``Ingester`` and ``Admin`` are FastAPI parameter types that authenticate the request,
apply the caller's rate limit and require a scope, in that order.

Authentication is async on purpose: FastAPI runs a sync dependency in its thread pool, so a flood
of bad keys would queue for (and hold) the threads every request needs. Here a key remembered as
verified costs one row read in a thread; a refusal (malformed, lately wrong, out of tokens, no
verification slot free) costs no thread at all; and only a key the server has to check runs a
scrypt, in one of ``server.max_concurrent_verifications`` threads of its own, after spending a
token from the client address's ``server.auth_rate_limit`` bucket. A 429 to a caller without a
valid key is held back (``server.auth_refusal_delay``), so a flood slows itself down.

With auth off (a loopback server by default) no key is needed, and a token that is not a ragtune
key (``sk-anything``: the official OpenAI clients cannot send none) is ignored: the caller is the
local operator, as without one. A ragtune key (``rt_...``) is still checked, so a key keeps its
groups and scopes there too, and a revoked or wrong one is refused rather than quietly turned into
the operator.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

import anyio
from anyio import to_thread
from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from ragtune.engine import Ragtune
from ragtune.errors import AuthenticationError, LimitError, RateLimitError
from ragtune.observe.metrics import Metrics
from ragtune.server.auth import Caller, KeyStore, RateLimiter, is_key_shaped
from ragtune.server.jobs import JobStore, JobWorker
from ragtune.settings import Settings

# Refusals held back at once: each keeps a connection (a file descriptor) open, so well under the
# usual limit of 1,024 open files, leaving room for everyone else.
_MAX_HELD = 256


@dataclass
class ServerState:
    engine: Ragtune
    settings: Settings
    auth_required: bool
    limiter: RateLimiter = field(init=False)
    auth_limiter: RateLimiter = field(init=False)  # per client address, spent before each scrypt
    # Admission to a scrypt, and the threads that run them: two limiters, because a task that holds a
    # token cannot borrow a second one from the same limiter for its thread. The first admits at most
    # N tasks, so the second never makes one wait; it keeps scrypts out of the shared thread pool.
    verifications: anyio.CapacityLimiter = field(init=False)
    verification_threads: anyio.CapacityLimiter = field(init=False)
    _held: int = field(default=0, init=False)  # refusals waiting out server.auth_refusal_delay

    def __post_init__(self) -> None:
        s = self.settings.server
        self.limiter = RateLimiter(s.rate_limit, s.rate_burst)
        self.auth_limiter = RateLimiter(s.auth_rate_limit, s.auth_burst)
        self.verifications = anyio.CapacityLimiter(s.max_concurrent_verifications)
        self.verification_threads = anyio.CapacityLimiter(s.max_concurrent_verifications)

    @cached_property
    def keys(self) -> KeyStore:
        return KeyStore(self.engine.db, cache_seconds=self.settings.server.key_cache_seconds,
                        audit=self.settings.governance.audit)

    @cached_property
    def metrics(self) -> Metrics:
        return Metrics(self.engine.tracing)

    async def hold_refusal(self, began: float) -> None:
        """Answer a 429 to a caller without a valid key no sooner than ``server.auth_refusal_delay``
        after its request began. A client that floods from a fixed set of connections (any script with
        a worker pool) then sends a few requests a second instead of thousands, which the server would
        otherwise have to parse and answer on the same cores as everyone else. The wait holds no thread;
        at most ``_MAX_HELD`` refusals wait at once (each holds a connection), the rest are answered now."""
        delay = self.settings.server.auth_refusal_delay - (time.monotonic() - began)
        if delay <= 0 or self._held >= _MAX_HELD:
            return
        self._held += 1  # only the event loop's thread touches it
        try:
            await anyio.sleep(delay)
        finally:
            self._held -= 1

    async def verify(self, token: str, client: str) -> Caller:
        """Check a key the server has not verified lately: spend the client's auth bucket, then wait
        at most ``server.verification_wait`` for a slot, then run the scrypt in a thread."""
        self.auth_limiter.check(client)
        wait = self.settings.server.verification_wait
        try:
            self.verifications.acquire_nowait()
        except anyio.WouldBlock:
            with anyio.move_on_after(wait) as waited:
                await self.verifications.acquire()
            if waited.cancelled_caught:
                limit = self.settings.server.max_concurrent_verifications
                raise RateLimitError(f"the server is verifying {limit} API keys at once "
                                     f"(server.max_concurrent_verifications); retry in a moment",
                                     retry_after=max(wait, 1.0)) from None
        try:
            key = await to_thread.run_sync(self.keys.verify, token, limiter=self.verification_threads)
        finally:
            self.verifications.release()
        return Caller.from_key(key)

    @cached_property
    def uploads(self) -> Path:
        return Path(self.settings.data_dir).expanduser().resolve() / "uploads"

    @cached_property
    def jobs(self) -> JobStore:
        return JobStore(self.engine.db, self.uploads)

    @cached_property
    def worker(self) -> JobWorker:
        return JobWorker(self.engine, self.jobs)

    def check_top_k(self, top_k: int | None, name: str = "top_k") -> None:
        limit = self.settings.server.max_top_k
        if top_k is not None and not 1 <= top_k <= limit:
            raise LimitError(f"{name} must be between 1 and {limit} (server.max_top_k), got {top_k}",
                             "max_top_k")


async def get_state(request: Request) -> ServerState:  # async: no thread-pool hop for a lookup
    state: ServerState = request.app.state.ragtune
    return state


State = Annotated[ServerState, Depends(get_state)]

_bearer = HTTPBearer(auto_error=False, description="An API key from `ragtune keys create`.")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The same API key, in a header of its own.")


async def get_caller(request: Request, state: State,
                     bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
                     header: Annotated[str | None, Depends(_header)]) -> Caller:
    client = f"client:{request.client.host if request.client else 'unknown'}"
    began = time.monotonic()
    try:
        caller = await _authenticate(request, state, bearer.credentials if bearer is not None else header, client)
    except RateLimitError:
        await state.hold_refusal(began)
        raise
    state.limiter.check(f"key:{caller.key_id}" if caller.key_id else client)
    return caller


async def _authenticate(request: Request, state: ServerState, token: str | None, client: str) -> Caller:
    try:
        if token and not state.auth_required and not is_key_shaped(token):
            return Caller.local()  # auth off: a client's placeholder key, not one of ours
        if token:
            # memory only, on the event loop: raises for a malformed or lately wrong key
            known = state.keys.remembered(token)
            key = await to_thread.run_sync(state.keys.verify_cached, token) if known else None
            # None also when the entry expired since: then the key goes the counted, capped way
            return Caller.from_key(key) if key is not None else await state.verify(token, client)
        if request.headers.get("authorization"):
            raise AuthenticationError("unsupported Authorization header: send 'Authorization: Bearer <API key>'")
        if state.auth_required:
            raise AuthenticationError("an API key is required: send 'Authorization: Bearer <key>' "
                                      "(an administrator makes one with `ragtune keys create`)")
        return Caller.local()
    except AuthenticationError:
        state.limiter.check(client)  # failed attempts spend the client address's bucket: no free guessing
        raise


def _scope(scope: str) -> Any:
    async def require(caller: Annotated[Caller, Depends(get_caller)]) -> Caller:
        return caller.require(scope)

    require.__name__ = f"require_{scope}"
    return Depends(require)


Reader = Annotated[Caller, _scope("read")]
Ingester = Annotated[Caller, _scope("ingest")]
Admin = Annotated[Caller, _scope("admin")]
Observer = Annotated[Caller, _scope("observe")]
Auditor = Annotated[Caller, _scope("audit")]
