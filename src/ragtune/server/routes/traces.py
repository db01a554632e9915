"""Traces of searches and answers, filtered by who asks.

A caller sees a trace if it is an admin, if it made the trace (same key), or if the trace's
principal was not an admin, had no group the caller lacks, *and* every chunk the trace shows (its
results, and so the sources in an answer's prompt) is still readable by the caller. A chunk since
deleted counts as unreadable. So a trace never shows another group's content, and an admin's trace
(which may show anything, and whose query alone may be about anything, even with no hits) is seen
by admins and its own key only.
With ``chunks=true`` a trace also carries the text of the chunks it ranked that the caller may
still read (the web console shows them beside their scores).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query

from ragtune.errors import NotFoundError
from ragtune.models import Principal
from ragtune.server.deps import Reader, State

router = APIRouter(prefix="/traces", tags=["traces"])

_VISIBLE = """(%(admin)s OR t.principal = %(pid)s OR (NOT t.principal_admin AND t.groups <@ %(groups)s::text[]
    AND NOT EXISTS (
    SELECT 1 FROM jsonb_array_elements(CASE WHEN jsonb_typeof(t.results) = 'array' THEN t.results ELSE '[]' END) r
    LEFT JOIN chunks c ON c.id = CASE WHEN jsonb_typeof(r -> 'chunk_id') = 'number'
                                      THEN (r ->> 'chunk_id')::bigint END
    WHERE c.id IS NULL OR NOT (c.acl = '{}' OR c.acl && %(groups)s::text[]))))"""
_CHUNKS = """SELECT k.id AS chunk_id, k.document_id, d.uri, k.start_char AS start, k.end_char AS "end", k.heading,
    k.body AS text FROM chunks k JOIN documents d ON d.id = k.document_id
    WHERE k.id = ANY(%(ids)s) AND (%(admin)s OR k.acl = '{}' OR k.acl && %(groups)s::text[]) ORDER BY k.id"""
_COLUMNS = ("t.id, t.kind, t.created_at::text AS created_at, t.principal, t.groups, t.collection, t.query, t.params,"
            " t.results, t.timings_ms, t.error")


def _params(principal: Principal, **extra: Any) -> dict[str, Any]:
    return {"admin": principal.admin, "pid": principal.id, "groups": sorted(principal.groups), **extra}


@router.get("", summary="Recent traces the caller may see, newest first")
def list_traces(state: State, caller: Reader,
                kind: Annotated[Literal["search", "ask"] | None, Query()] = None,
                collection: Annotated[str | None, Query(max_length=200)] = None,
                limit: Annotated[int, Query(ge=1, le=200)] = 20) -> list[dict[str, Any]]:
    with state.engine.db.connection() as conn:
        return list(conn.execute(
            f"SELECT {_COLUMNS} FROM traces t WHERE {_VISIBLE}"
            " AND (%(kind)s::text IS NULL OR t.kind = %(kind)s)"
            " AND (%(collection)s::text IS NULL OR t.collection = %(collection)s)"
            " ORDER BY t.id DESC LIMIT %(limit)s",
            _params(caller.principal, kind=kind, collection=collection, limit=limit),
        ).fetchall())


@router.get("/{trace_id}", summary="One trace: parameters, prompt, results with scores, timings")
def get_trace(trace_id: Annotated[int, Path(ge=1, le=2**63 - 1)], state: State, caller: Reader,
              chunks: Annotated[bool, Query(description="Add the text of the ranked chunks")] = False
              ) -> dict[str, Any]:
    with state.engine.db.connection() as conn:
        row = conn.execute(f"SELECT {_COLUMNS} FROM traces t WHERE t.id = %(id)s AND {_VISIBLE}",
                           _params(caller.principal, id=trace_id)).fetchone()
        if row is None:
            raise NotFoundError(f"no trace {trace_id}")
        out = dict(row)
        if chunks:
            results = out["results"] if isinstance(out["results"], list) else []
            ids = sorted({r["chunk_id"] for r in results
                          if isinstance(r, dict) and isinstance(r.get("chunk_id"), int)
                          and 1 <= r["chunk_id"] < 2**63})
            out["chunks"] = [dict(c) for c in conn.execute(_CHUNKS, _params(caller.principal, ids=ids)).fetchall()]
    return out
