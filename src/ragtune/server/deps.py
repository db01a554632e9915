"""What every router needs: the server's state (engine, settings, keys, jobs) and the caller.

``Reader``, ``Ingester`` and ``Admin`` are FastAPI parameter types that authenticate the request,
apply the caller's rate limit and require a scope, in that order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from ragtune.errors import AuthenticationError, LimitError
from ragtune.server.auth import Caller, KeyStore, RateLimiter
from ragtune.server.jobs import JobStore, JobWorker
from ragtune.settings import Settings


@dataclass
class ServerState:
    engine: Any  # ragtune.engine.Ragtune
    settings: Settings
    auth_required: bool
    limiter: RateLimiter = field(init=False)

    def __post_init__(self) -> None:
        self.limiter = RateLimiter(self.settings.server_rate_limit, self.settings.server_rate_burst)

    @cached_property
    def keys(self) -> KeyStore:
        return KeyStore(self.engine.db)

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
        limit = self.settings.server_max_top_k
        if top_k is not None and not 1 <= top_k <= limit:
            raise LimitError(f"{name} must be between 1 and {limit} (server_max_top_k), got {top_k}",
                             "server_max_top_k")


def get_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.ragtune
    return state


State = Annotated[ServerState, Depends(get_state)]

_bearer = HTTPBearer(auto_error=False, description="An API key from `ragtune keys create`.")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The same API key, in a header of its own.")


def get_caller(request: Request, state: State,
               bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
               header: Annotated[str | None, Depends(_header)]) -> Caller:
    client = f"client:{request.client.host if request.client else 'unknown'}"
    token = bearer.credentials if bearer is not None else header
    try:
        if token:
            caller = Caller.from_key(state.keys.verify(token))
        elif request.headers.get("authorization"):
            raise AuthenticationError("unsupported Authorization header: send 'Authorization: Bearer <API key>'")
        elif state.auth_required:
            raise AuthenticationError("an API key is required: send 'Authorization: Bearer <key>' "
                                      "(an administrator makes one with `ragtune keys create`)")
        else:
            caller = Caller.local()
    except AuthenticationError:
        state.limiter.check(client)  # failed attempts spend the client address's bucket: no free guessing
        raise
    state.limiter.check(f"key:{caller.key_id}" if caller.key_id else client)
    return caller


def _scope(scope: str) -> Any:
    def require(caller: Annotated[Caller, Depends(get_caller)]) -> Caller:
        return caller.require(scope)

    require.__name__ = f"require_{scope}"
    return Depends(require)


Reader = Annotated[Caller, _scope("read")]
Ingester = Annotated[Caller, _scope("ingest")]
Admin = Annotated[Caller, _scope("admin")]
