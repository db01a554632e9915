"""Traces of searches and answers, filtered by who asks (``observe.traces``): a caller sees its own
traces; a key with the ``observe`` scope sees every trace, the text of chunks outside its groups
redacted (ids and scores stay); an admin sees all.
With ``chunks=true`` a trace also carries the text of the chunks it ranked that the caller may
still read (the web console shows them beside their scores). An answer's lineage is shown without
the adapter's folder on the server (as every view leaves server folders out); the CLI shows it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query

from ragtune.observe.traces import shown_chunk_ids
from ragtune.server.deps import Reader, State

router = APIRouter(prefix="/traces", tags=["traces"])


@router.get("", summary="Recent traces the caller may see, newest first")
def list_traces(state: State, caller: Reader,
                kind: Annotated[Literal["search", "ask", "ingest", "job", "train", "evaluation", "tune-search"] | None,
                               Query()] = None,
                collection: Annotated[str | None, Query(max_length=200)] = None,
                feedback: Annotated[Literal["any", "negative", "positive"] | None, Query(
                    description="Only answers with such feedback")] = None,
                since_hours: Annotated[float | None, Query(ge=0, le=24 * 3650, description="Only the last hours")]
                = None,
                user: Annotated[str | None, Query(max_length=200)] = None,
                model: Annotated[str | None, Query(max_length=500)] = None,
                slower_than_ms: Annotated[float | None, Query(ge=0, le=1e9)] = None,
                abstained: bool | None = None, grounded: bool | None = None,
                limit: Annotated[int, Query(ge=1, le=200)] = 20) -> list[dict[str, Any]]:
    since = None if since_hours is None else datetime.now(UTC) - timedelta(hours=since_hours)
    return [_without_paths(t) for t in state.engine.traces.visible(
        caller.principal, kind=kind, collection=collection, feedback=feedback, since=since, user=user, model=model,
        slower_than_ms=slower_than_ms, abstained=abstained, grounded=grounded, observer=caller.allows("observe"),
        limit=limit)]


@router.get("/series", summary="The dashboard's data: per time bucket, requests, latency, stages, tokens, "
            "abstention, groundedness, feedback")
def trace_series(state: State, caller: Reader,
                 since_hours: Annotated[float, Query(ge=0, le=24 * 3650)] = 24,
                 bucket_minutes: Annotated[int, Query(ge=1, le=7 * 24 * 60)] = 60,
                 collection: Annotated[str | None, Query(max_length=200)] = None) -> dict[str, Any]:
    return dict(state.engine.traces.series(
        caller.principal, since=datetime.now(UTC) - timedelta(hours=since_hours), bucket_minutes=bucket_minutes,
        collection=collection, observer=caller.allows("observe")))


@router.get("/stats", summary="Requests, p50/p95 per stage, tokens, abstention and groundedness rates, feedback")
def trace_stats(state: State, caller: Reader,
                since_hours: Annotated[float, Query(ge=0, le=24 * 3650)] = 24,
                collection: Annotated[str | None, Query(max_length=200)] = None) -> dict[str, Any]:
    return dict(state.engine.traces.stats(caller.principal, since=datetime.now(UTC) - timedelta(hours=since_hours),
                                          collection=collection, observer=caller.allows("observe")))


@router.get("/{trace_id}", summary="One trace: parameters, prompt, results with scores, timings")
def get_trace(trace_id: Annotated[str, Path(pattern="^[0-9a-f]{8,32}$", description="The trace id, or a prefix of "
                                             "8 or more hex digits")], state: State, caller: Reader,
              chunks: Annotated[bool, Query(description="Add the text of the ranked chunks")] = False
              ) -> dict[str, Any]:
    out = _without_paths(state.engine.trace(trace_id, principal=caller.principal, observer=caller.allows("observe")))
    if chunks:  # the answer's and its search's ranked chunks
        out["chunks"] = state.engine.repo.readable_chunks(shown_chunk_ids(out), caller.principal)
    return out


def _without_paths(trace: dict[str, Any]) -> dict[str, Any]:
    """The trace without the adapter folder its lineage names, in its parameters and its spans'."""
    spans = trace.get("spans") or []
    every = [trace.get("params"), *((s.get("attributes") or {}).get("ragtune.params") for s in spans)]
    for params in every:
        lineage = params.get("lineage") if isinstance(params, dict) else None
        adapter = lineage.get("adapter") if isinstance(lineage, dict) else None
        if isinstance(adapter, dict):
            adapter.pop("path", None)
    return trace
