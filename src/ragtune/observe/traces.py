"""Trace rows: every search (and later every answer) records what it did and how long it took.

This is the seam for the observability layer: the data is complete now (query, principal,
parameters, returned chunk ids with each retriever's score, per-stage timings); spans, OTel
export and the viewers come later.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from ragtune.errors import NotFoundError
from ragtune.models import Principal
from ragtune.store.access import principal_groups, readable
from ragtune.store.database import Database


@dataclass
class StageTimer:
    """Collects per-stage wall times in milliseconds."""

    timings_ms: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = perf_counter()
        try:
            yield
        finally:
            self.timings_ms[name] = self.timings_ms.get(name, 0.0) + (perf_counter() - start) * 1000.0


@dataclass(frozen=True)
class TraceRecord:
    kind: str
    principal: Principal
    collection: str | None
    query: str | None
    params: dict[str, Any]
    results: list[dict[str, Any]]
    timings_ms: dict[str, float]
    error: str | None = None


class TraceWriter:
    def __init__(self, db: Database) -> None:
        self.db = db

    def write(self, record: TraceRecord) -> int:
        with self.db.transaction() as conn:
            row = conn.execute(
                "INSERT INTO traces (kind, principal, principal_admin, groups, collection, query, params, results,"
                " timings_ms, error) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (
                    record.kind, record.principal.id, record.principal.admin, sorted(record.principal.groups),
                    record.collection,
                    record.query, Jsonb(record.params), Jsonb(record.results),
                    Jsonb({k: round(v, 3) for k, v in record.timings_ms.items()}), record.error,
                ),
            ).fetchone()
        return int(row["id"]) if row else 0

    # -- reads, for the principal asking ----------------------------------------------------------
    def visible(self, principal: Principal, *, kind: str | None = None, collection: str | None = None,
                limit: int = 20) -> list[dict[str, Any]]:
        """The traces ``principal`` may see (the rule above ``_visible``), newest first."""
        rule, params = _visible(principal)
        with self.db.connection() as conn:
            return list(conn.execute(sql.SQL(
                _COLUMNS + " FROM traces t WHERE {rule} AND (%s::text IS NULL OR t.kind = %s)"
                " AND (%s::text IS NULL OR t.collection = %s) ORDER BY t.id DESC LIMIT %s").format(rule=rule),
                [*params, kind, kind, collection, collection, limit]).fetchall())

    def get(self, trace_id: int, principal: Principal) -> dict[str, Any]:
        """One trace ``principal`` may see; otherwise not found, like a missing one."""
        rule, params = _visible(principal)
        with self.db.connection() as conn:
            row = conn.execute(sql.SQL(_COLUMNS + " FROM traces t WHERE t.id = %s AND {rule}").format(rule=rule),
                               [trace_id, *params]).fetchone()
        if row is None:
            raise NotFoundError(f"no trace {trace_id}")
        return dict(row)



# A trace shows its query, parameters and ranked chunks (an answer's prompt quotes them). Its
# maker and admins see it; anyone else only when its maker was not an admin, had no group they
# lack, and every chunk it shows is one they may read now (a chunk since deleted counts as not).
_COLUMNS = ("SELECT t.id, t.kind, t.created_at::text AS created_at, t.principal, t.groups, t.collection, t.query,"
            " t.params, t.results, t.timings_ms, t.error")


def _visible(principal: Principal) -> tuple[sql.Composable, list[Any]]:
    if principal.admin:
        return sql.SQL("TRUE"), []
    chunk_ok, chunk_params = readable(principal, "c.acl")
    return sql.SQL(
        "(t.principal = %s OR (NOT t.principal_admin AND t.groups <@ %s::text[] AND NOT EXISTS ("
        " SELECT 1 FROM jsonb_array_elements(CASE WHEN jsonb_typeof(t.results) = 'array' THEN t.results ELSE '[]'"
        " END) r LEFT JOIN chunks c ON c.id = CASE WHEN jsonb_typeof(r -> 'chunk_id') = 'number'"
        " THEN (r ->> 'chunk_id')::bigint END WHERE c.id IS NULL OR NOT {chunk_ok})))"
    ).format(chunk_ok=chunk_ok), [principal.id, principal_groups(principal), *chunk_params]
