"""The audit log's rows (migration 015): appending an event, in the transaction of the action it
records, and reading the chain back to check it.

An event says who (the principal, and the API key it came with), from where (``origin``: set per
request by the server, per command by the CLI), what (an action name, the collection, the
documents read or changed with their content hashes, details) and when. ``append`` is called
last in the action's transaction: the chain's lock is held from there to the commit.
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from psycopg.types.json import Jsonb

from ragtune.models import Principal
from ragtune.store.database import Conn

GENESIS = bytes(32)  # what the first row's prev_hash is

_origin: ContextVar[str | None] = ContextVar("ragtune_audit_origin", default=None)
_local: list[str] = []


def local_origin(kind: str = "python") -> str:
    """``kind user@host`` of this process, the origin of what it does outside a request."""
    if not _local:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no user name in a bare container
            user = "?"
        _local.append(f"{user}@{socket.gethostname()}")
    return f"{kind} {_local[0]}"


@contextmanager
def origin(value: str) -> Iterator[None]:
    """Events appended inside the block come from ``value`` (the server: ``http <client address>``)."""
    token = _origin.set(value)
    try:
        yield
    finally:
        _origin.reset(token)


def current_origin() -> str:
    return _origin.get() or local_origin()


@dataclass(frozen=True)
class AuditEvent:
    """One action to record. ``documents``: ``{"id", "uri", "hash"}`` of each document it read or
    changed (the hash is the stored content's, so it names the version)."""

    action: str
    principal: Principal
    collection: str | None = None
    documents: Sequence[Mapping[str, Any]] = ()
    details: Mapping[str, Any] = field(default_factory=dict)


def key_id(principal: Principal) -> str | None:
    """The API key a principal came with (the server names key callers ``key:<key id>``)."""
    return principal.id[4:] if principal.id.startswith("key:") else None


_APPEND = "ragtune_audit_append(%s, %s, %s, %s, %s, %s, %s) AS seq"


def append(conn: Conn, event: AuditEvent, *, wait: bool = True) -> int:
    """``event`` as the chain's next row, in ``conn``'s transaction (READ COMMITTED, the default);
    returns its sequence number. Call it last before the commit. ``wait`` false: the commit does
    not wait for the disk (``synchronous_commit`` off for this transaction)."""
    row = conn.execute(
        "SELECT " + ("" if wait else "set_config('synchronous_commit', 'off', true), ") + _APPEND,
        (event.principal.id, key_id(event.principal), current_origin(), event.action, event.collection,
         Jsonb(list(event.documents)), Jsonb(dict(event.details)))).fetchone()
    assert row is not None
    return int(row["seq"])


# Each row with the hash its content gives (the same function the append used).
CHECKED = ("SELECT seq, prev_hash, hash, sha256(prev_hash || ragtune_audit_text(seq, at, principal, key_id, origin,"
           " action, collection, documents, details)) AS computed FROM audit_events")
