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

from psycopg.types.json import Jsonb

from ragtune.models import Principal
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

    def recent(self, limit: int = 20) -> list[dict[str, Any]]:
        with self.db.connection() as conn:
            return list(
                conn.execute(
                    "SELECT id, kind, created_at::text AS created_at, principal, groups, collection, query,"
                    " params, results, timings_ms, error FROM traces ORDER BY id DESC LIMIT %s",
                    (limit,),
                ).fetchall()
            )
