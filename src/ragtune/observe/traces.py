"""Traces: what each search and answer did, as spans (``observe.tracing``), and who may read them.

A request is one trace: its root span (``search`` or ``ask``) holds the query, the parameters, the
ranked chunks with each retriever's score, the stage timings and, for an answer, the prompt, the
response and the model's lineage; each stage (embed, retrieve and its steps, prompt, generate,
grounding, ...) is a child span with its own timing. ``record`` puts a ``TraceRecord`` on a span;
``TraceReader`` reads traces back as the principal asking may see them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial
from time import perf_counter
from typing import Any

from psycopg import sql

from ragtune.errors import ConfigError, NotFoundError, QueryError
from ragtune.models import Principal
from ragtune.observe.tracing import CONTENT_ATTRIBUTES, FACTS, Step, TracedSpan, Tracing, hex_trace_id, stash
from ragtune.store.access import readable
from ragtune.store.database import Database

# trace list filters on feedback (the feedback table's rows of the trace)
_NEGATIVE = "(f.thumbs = -1 OR f.score < 0.5)"
FEEDBACK_FILTERS = {
    None: "",
    "any": "AND EXISTS (SELECT 1 FROM feedback f WHERE f.trace_id = t.trace_id)",
    "negative": f"AND EXISTS (SELECT 1 FROM feedback f WHERE f.trace_id = t.trace_id AND {_NEGATIVE})",
    "positive": f"AND EXISTS (SELECT 1 FROM feedback f WHERE f.trace_id = t.trace_id AND NOT {_NEGATIVE})",
}

# Parameters of an answer that are texts: kept on the span under their own (content) attributes.
CONTENT_PARAMS = {"prompt": "gen_ai.input.messages", "response": "gen_ai.output.messages",
                  "sentences": "ragtune.sentences"}


@dataclass
class StageTimer:
    """Per-stage wall times in milliseconds, and each stage as a ``Step`` (nested stages record the
    one they ran in): the request's span keeps them and they are exported as its child spans. No
    span is opened here: a step costs two clock reads (``observe.tracing``)."""

    timings_ms: dict[str, float] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    _open: list[int] = field(default_factory=list)

    @contextmanager
    def stage(self, name: str, **attributes: Any) -> Iterator[dict[str, Any]]:
        """Time the block as stage ``name``; yields the step's attributes, to add to (tokens, ...)."""
        step = Step(name, self._open[-1] if self._open else None, time.time_ns(), attributes=dict(attributes))
        self.steps.append(step)
        self._open.append(len(self.steps) - 1)
        start = perf_counter()
        try:
            yield step.attributes
        finally:
            elapsed = perf_counter() - start
            self._open.pop()
            step.end_ns = step.start_ns + int(elapsed * 1e9)
            self.timings_ms[name] = self.timings_ms.get(name, 0.0) + elapsed * 1000.0


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


def record(span: TracedSpan, trace: TraceRecord, *, also_shown: Iterable[int] = (),
           steps: Sequence[Step] = ()) -> str | None:
    """``trace`` on ``span`` (the request's span: a search's or an answer's), with the ``steps`` it
    timed; returns the trace id, None when nothing is traced. ``also_shown``: ids of further chunks
    the trace's spans show (the access rule reads the root's list). Only what a processor reads as
    the span ends is stashed now (its kind and outcome, for metrics); the rest is worked out by the
    exporters, off the request path (``FACTS``). ``trace`` is not to be changed after."""
    if not span.is_recording():
        return None
    trace_id = hex_trace_id(span)
    params = trace.params
    stash(span, {"ragtune.kind": trace.kind, "ragtune.abstained": params.get("abstained"),
                 "ragtune.grounded": params.get("grounded"), "ragtune.steps": steps,
                 FACTS: partial(_facts, trace, tuple(also_shown), trace_id)})
    if trace.error:
        span.fail(trace.error)
    return trace_id


def _facts(trace: TraceRecord, also_shown: Iterable[int], trace_id: str | None) -> dict[str, Any]:
    """The attributes of a recorded request's span (``record``)."""
    params = {k: v for k, v in trace.params.items() if k not in CONTENT_PARAMS}
    chunk_ids = sorted({r["chunk_id"] for r in trace.results if isinstance(r.get("chunk_id"), int)}
                       | {int(i) for i in also_shown})
    facts = {
        # an answer's response id, which feedback is keyed by (``POST /feedback``), is its trace's id
        "gen_ai.response.id": trace_id if trace.kind == "ask" else None,
        "ragtune.kind": trace.kind, "ragtune.principal": trace.principal.id,
        "ragtune.principal_admin": trace.principal.admin, "ragtune.groups": sorted(trace.principal.groups),
        "ragtune.collection": trace.collection, "ragtune.query": trace.query, "ragtune.params": params,
        "ragtune.results": trace.results, "ragtune.chunk_ids": chunk_ids,
        "ragtune.timings_ms": {k: round(v, 3) for k, v in trace.timings_ms.items()},
        "ragtune.model": params.get("model"), "ragtune.abstained": params.get("abstained"),
        "ragtune.grounded": params.get("grounded"),
        **{CONTENT_PARAMS[k]: v for k, v in trace.params.items() if k in CONTENT_PARAMS and v is not None},
    }
    if trace.kind == "search":  # the GenAI conventions' list of what a retrieval returned
        facts["gen_ai.retrieval.documents"] = [{"id": str(r["chunk_id"]), "score": r["score"]}
                                               for r in trace.results]
    return {k: v for k, v in facts.items() if v is not None}


class TraceReader:
    """Traces read back as the principal asking may see them (the rule above ``visible_rule``)."""

    def __init__(self, db: Database, tracing: Tracing | None = None) -> None:
        self.db = db
        self.tracing = tracing

    def _flushed(self) -> None:
        # spans are written in batches: a reader sees what was ended before it asked
        if self.tracing is not None:
            self.tracing.flush()

    def visible(self, principal: Principal, *, kind: str | None = None, collection: str | None = None,
                feedback: str | None = None, since: datetime | None = None, user: str | None = None,
                model: str | None = None, slower_than_ms: float | None = None, abstained: bool | None = None,
                grounded: bool | None = None, observer: bool = False, limit: int = 20) -> list[dict[str, Any]]:
        """The traces ``principal`` may see, newest first, filtered: by kind, collection, the user who
        asked, the model that answered, ``slower_than_ms``, an answer that abstained or not, was
        grounded or not, ``feedback`` (``any``, ``negative``: thumbs down or a score under 0.5, or
        ``positive``) and ``since`` (started then or later). An ``observer`` (the observe scope)
        sees every trace, redacted to what it may read (``redact``)."""
        where, values = _filters(kind=kind, collection=collection, feedback=feedback, since=since, user=user,
                                 model=model, slower_than_ms=slower_than_ms, abstained=abstained, grounded=grounded)
        self._flushed()
        rule, params = visible_rule(principal, observer=observer)
        with self.db.connection() as conn:
            rows = conn.execute(sql.SQL(
                _COLUMNS + " FROM spans t WHERE t.parent_id IS NULL AND {rule} {where}"
                " ORDER BY t.start_time DESC LIMIT %s").format(rule=rule, where=where),
                [*params, *values, limit]).fetchall()
            traces = [_trace(r) for r in rows]
            return self._as_seen(conn, traces, principal)

    @staticmethod
    def _as_seen(conn: Any, traces: list[dict[str, Any]], principal: Principal) -> list[dict[str, Any]]:
        """Traces as ``principal`` sees them: whole for an admin; for anyone else, the text of every
        chunk it may not read now redacted — in another's trace, and in its own made when it could
        (a key or user that has since left a group does not keep that group's text in its traces)."""
        others = [] if principal.admin else traces
        if others:
            ids = sorted({int(i) for t in others for i in t.get("chunk_ids") or []})
            rule, params = readable(principal, "c.acl")
            readable_ids = {r["id"] for r in conn.execute(sql.SQL(
                "SELECT c.id FROM chunks c WHERE c.id = ANY(%s) AND {rule}").format(rule=rule),
                [ids, *params]).fetchall()} if ids else set()
            for t in others:
                redact(t, readable_ids)
        return traces

    def _roots(self, principal: Principal, *, since: datetime, collection: str | None,
               observer: bool) -> tuple[sql.Composable, list[Any], list[Any]]:
        """The root spans ``principal`` may see since ``since`` as a subquery (stats and series
        aggregate over it), with the rule's and the filters' parameters."""
        where, values = _filters(since=since, collection=collection)
        self._flushed()
        rule, params = visible_rule(principal, observer=observer)
        roots = sql.SQL("SELECT t.trace_id, t.kind, t.start_time, t.duration_ms, t.abstained, t.grounded FROM spans t"
                        " WHERE t.parent_id IS NULL AND {rule} {where}").format(rule=rule, where=where)
        return roots, params, values

    def series(self, principal: Principal, *, since: datetime, bucket_minutes: int = 60,
               collection: str | None = None, observer: bool = False) -> dict[str, Any]:
        """The dashboard's data: per time bucket (``bucket_minutes``, from ``since``), requests by
        kind with p50/p95, the abstention and groundedness of answers, p50 per stage, tokens, and
        feedback given, over the traces ``principal`` may see."""
        if not 1 <= bucket_minutes <= 7 * 24 * 60:
            raise QueryError(f"bucket_minutes={bucket_minutes}: from 1 to {7 * 24 * 60}")
        roots, params, values = self._roots(principal, since=since, collection=collection, observer=observer)
        width = f"{bucket_minutes} minutes"
        with self.db.connection() as conn:
            requests = conn.execute(sql.SQL(
                "SELECT date_bin(%s::interval, r.start_time, %s::timestamptz) AS bucket, r.kind, count(*) AS requests,"
                " percentile_cont(0.5) WITHIN GROUP (ORDER BY r.duration_ms) AS p50_ms,"
                " percentile_cont(0.95) WITHIN GROUP (ORDER BY r.duration_ms) AS p95_ms,"
                " count(*) FILTER (WHERE r.abstained) AS abstained, count(*) FILTER (WHERE r.grounded) AS grounded"
                " FROM ({roots}) r GROUP BY 1, 2 ORDER BY 1, 2").format(roots=roots),
                [width, since, *params, *values]).fetchall()
            stages = conn.execute(sql.SQL(
                "SELECT date_bin(%s::interval, r.start_time, %s::timestamptz) AS bucket, s.name AS stage,"
                " percentile_cont(0.5) WITHIN GROUP (ORDER BY s.duration_ms) AS p50_ms,"
                " sum((s.attributes ->> 'gen_ai.usage.input_tokens')::bigint) AS input_tokens,"
                " sum((s.attributes ->> 'gen_ai.usage.output_tokens')::bigint) AS output_tokens"
                " FROM spans s JOIN ({roots}) r ON r.trace_id = s.trace_id"
                " WHERE s.parent_id IS NOT NULL AND s.start_time >= %s"
                " GROUP BY 1, 2 ORDER BY 1, 2").format(roots=roots),
                [width, since, *params, *values, since]).fetchall()
            votes = conn.execute(sql.SQL(
                "SELECT date_bin(%s::interval, f.created_at, %s::timestamptz) AS bucket,"
                " count(*) FILTER (WHERE f.thumbs = -1 OR f.score < 0.5) AS negative,"
                " count(*) FILTER (WHERE NOT (f.thumbs = -1 OR f.score < 0.5)) AS positive"
                " FROM feedback f JOIN ({roots}) r ON r.trace_id = f.trace_id"
                " GROUP BY 1 ORDER BY 1").format(roots=roots),
                [width, since, *params, *values]).fetchall()

        def when(row: Any) -> str:
            return str(row["bucket"].isoformat())

        return {"since": since.isoformat(), "bucket_minutes": bucket_minutes,
                "requests": [{**dict(r), "bucket": when(r)} for r in requests],
                "stages": [{**dict(r), "bucket": when(r)} for r in stages],
                "feedback": [{**dict(r), "bucket": when(r)} for r in votes]}

    def stats(self, principal: Principal, *, since: datetime, collection: str | None = None,
              observer: bool = False) -> dict[str, Any]:
        """Over the traces ``principal`` may see since ``since``: requests by kind, p50/p95 per stage
        (every span's name), tokens, the abstention and groundedness rates of answers, feedback."""
        roots, params, values = self._roots(principal, since=since, collection=collection, observer=observer)
        with self.db.connection() as conn:
            kinds = conn.execute(sql.SQL(
                "SELECT kind, count(*) AS requests, count(*) FILTER (WHERE abstained) AS abstained,"
                " count(*) FILTER (WHERE grounded) AS grounded,"
                " percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50_ms,"
                " percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_ms"
                " FROM ({roots}) r GROUP BY kind ORDER BY kind").format(roots=roots), [*params, *values]).fetchall()
            stages = conn.execute(sql.SQL(
                "SELECT s.name AS stage, count(*) AS spans,"
                " percentile_cont(0.5) WITHIN GROUP (ORDER BY s.duration_ms) AS p50_ms,"
                " percentile_cont(0.95) WITHIN GROUP (ORDER BY s.duration_ms) AS p95_ms,"
                " sum((s.attributes ->> 'gen_ai.usage.input_tokens')::bigint) AS input_tokens,"
                " sum((s.attributes ->> 'gen_ai.usage.output_tokens')::bigint) AS output_tokens"
                " FROM spans s JOIN ({roots}) r ON r.trace_id = s.trace_id"
                " WHERE s.parent_id IS NOT NULL AND s.start_time >= %s"
                " GROUP BY s.name ORDER BY p50_ms DESC").format(roots=roots), [*params, *values, since]).fetchall()
            votes = conn.execute(sql.SQL(
                "SELECT count(*) FILTER (WHERE f.thumbs = -1 OR f.score < 0.5) AS negative,"
                " count(*) FILTER (WHERE NOT (f.thumbs = -1 OR f.score < 0.5)) AS positive, count(*) AS total"
                " FROM feedback f JOIN ({roots}) r ON r.trace_id = f.trace_id").format(roots=roots),
                [*params, *values]).fetchone()
        by_kind = {r["kind"]: dict(r) for r in kinds}
        asks = by_kind.get("ask", {})
        answered = (asks.get("requests") or 0) - (asks.get("abstained") or 0)
        return {
            "since": since.isoformat(), "collection": collection, "requests": by_kind,
            "stages": [dict(r) for r in stages],
            "abstention_rate": asks["abstained"] / asks["requests"] if asks.get("requests") else None,
            "groundedness_rate": asks["grounded"] / answered if answered > 0 else None,
            "tokens": {"input": sum(int(r["input_tokens"] or 0) for r in stages),
                       "output": sum(int(r["output_tokens"] or 0) for r in stages)},
            "feedback": dict(votes) if votes else {"negative": 0, "positive": 0, "total": 0},
        }

    def get(self, trace_id: str, principal: Principal, *, observer: bool = False) -> dict[str, Any]:
        """One trace ``principal`` may see, by its id or a prefix of at least 8 hex digits (as
        ``traces list`` shows it), with its spans in start order; otherwise not found, like a
        missing one."""
        self._flushed()
        wanted = trace_id.strip().lower()
        if not 8 <= len(wanted) <= 32 or any(c not in "0123456789abcdef" for c in wanted):
            raise NotFoundError(f"no trace {trace_id}")
        rule, params = visible_rule(principal, observer=observer)
        with self.db.connection() as conn:
            # a prefix is a range of the trace id index: [prefix, prefix + "g")
            rows = conn.execute(sql.SQL(_COLUMNS + " FROM spans t WHERE t.trace_id >= %s AND t.trace_id < %s"
                                        " AND t.parent_id IS NULL AND {rule} LIMIT 2").format(rule=rule),
                                [wanted, wanted + "g", *params]).fetchall()
            if len(rows) != 1:
                raise NotFoundError(f"no trace {trace_id}" if not rows else
                                    f"several traces start with {trace_id}: give more of the id")
            row = rows[0]
            trace_id = row["id"]
            spans = conn.execute(
                "SELECT span_id, parent_id, name, kind, start_time::text AS start_time,"
                " extract(epoch FROM start_time)::float8 * 1000 AS start_ms, duration_ms, status, error,"
                " attributes, events FROM spans WHERE trace_id = %s"
                " AND start_time >= %s::timestamptz - interval '1 day'"  # prunes older days' partitions
                " ORDER BY start_time, span_id", [trace_id, row["created_at"]]).fetchall()
            given = conn.execute(
                "SELECT id, principal, created_at::text AS created_at, thumbs, score, label, comment, correction"
                " FROM feedback WHERE trace_id = %s ORDER BY id", [trace_id]).fetchall()
        spans = [dict(s) for s in spans]
        # an answer's search is its child span: its query (a conversation's, say), parameters and hits
        search = next((s for s in spans if s["parent_id"] is not None and s["kind"] == "search"), None)
        found = None if search is None else {
            k: v for k, v in _trace({"attributes": search["attributes"]}).items() if k != "attributes"}
        whole = {**_trace(row), "search": found, "spans": spans, "feedback": [dict(f) for f in given]}
        with self.db.connection() as conn:
            return self._as_seen(conn, [whole], principal)[0]


def _filters(*, kind: str | None = None, collection: str | None = None, feedback: str | None = None,
             since: datetime | None = None, user: str | None = None, model: str | None = None,
             slower_than_ms: float | None = None, abstained: bool | None = None,
             grounded: bool | None = None) -> tuple[sql.Composable, list[Any]]:
    """The trace list's conditions on root spans (``t``), each only when given."""
    if feedback not in FEEDBACK_FILTERS:
        raise QueryError(f"feedback={feedback!r}: one of {', '.join(f for f in FEEDBACK_FILTERS if f)}")
    if slower_than_ms is not None and not slower_than_ms >= 0:
        raise QueryError(f"slower_than_ms={slower_than_ms!r}: give milliseconds, 0 or more")
    parts: list[sql.Composable] = []
    values: list[Any] = []
    for column, value in (("kind", kind), ("collection", collection), ("principal", user), ("model", model)):
        if value is not None:
            parts.append(sql.SQL("AND t.{} = %s").format(sql.Identifier(column)))
            values.append(value)
    # outcomes as literals, not parameters: the rare ones have partial indexes (migration 014),
    # which only a condition the planner can see matches
    for column, outcome in (("abstained", abstained), ("grounded", grounded)):
        if outcome is not None:
            shape = "AND t.{}" if outcome else "AND t.{} IS FALSE"  # as the indexes' predicates say it
            parts.append(sql.SQL(shape).format(sql.Identifier(column)))
    if since is not None:
        parts.append(sql.SQL("AND t.start_time >= %s"))
        values.append(since)
    if slower_than_ms is not None:
        parts.append(sql.SQL("AND t.duration_ms > %s"))
        values.append(slower_than_ms)
    parts.append(sql.SQL(FEEDBACK_FILTERS[feedback]))  # constants of this module
    return sql.SQL(" ").join(parts), values


def prune(db: Database, retention_days: int, *, today: date | None = None) -> list[str]:
    """Drop the spans partitions of days older than ``retention_days`` (whole tables: no row-by-row
    delete, no vacuum debt); returns their names, oldest first. Today's partition is never dropped."""
    if retention_days < 1:
        raise ConfigError(f"retention_days={retention_days}: keep at least 1 day of spans")
    first_kept = (today or datetime.now(UTC).date()) - timedelta(days=retention_days - 1)
    dropped = []
    with db.transaction() as conn:
        names = [r["name"] for r in conn.execute(
            "SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'spans'::regclass ORDER BY 1").fetchall()]
        for name in names:
            day = _partition_day(name)
            if day is not None and day < first_kept:
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
                dropped.append(name)
    return dropped


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _partition_day(name: str) -> date | None:
    try:
        return datetime.strptime(name.removeprefix("spans_"), "%Y%m%d").date()
    except ValueError:  # not one of ours
        return None


def shown_chunk_ids(trace: dict[str, Any]) -> list[int]:
    """The ids of the chunks a trace row (``TraceReader.get``) ranked: its own results and its
    search's, for an answer."""
    search = trace.get("search") or {}
    return sorted({r["chunk_id"] for results in (trace.get("results"), search.get("results"))
                   if isinstance(results, list) for r in results
                   if isinstance(r, dict) and isinstance(r.get("chunk_id"), int) and 1 <= r["chunk_id"] < 2**63})


def _trace(row: Any) -> dict[str, Any]:
    """A root span as the trace row the CLI, the server and the console show."""
    row = dict(row)
    attributes = row.pop("attributes") or {}
    params = attributes.get("ragtune.params")
    params = dict(params) if isinstance(params, dict) else {}
    for key, name in CONTENT_PARAMS.items():
        if name in attributes:
            params[key] = attributes[name]
    # a run (training, evaluation, job) has no question: its title stands in the list
    return {**dict(row), "query": attributes.get("ragtune.query") or attributes.get("ragtune.title"), "params": params,
            "results": attributes.get("ragtune.results") or [],
            "timings_ms": attributes.get("ragtune.timings_ms") or {}}


# Who reads a trace: its maker, an admin, and an observer (a key with the observe scope) — an
# observer sees every trace, with the text of chunks it may not read redacted (``redact``).
_COLUMNS = ("SELECT t.trace_id AS id, t.kind, t.start_time::text AS created_at, t.principal, t.groups, t.collection,"
            " t.model, t.duration_ms, t.error, t.chunk_ids, t.attributes")


def visible_rule(principal: Principal, *, observer: bool = False) -> tuple[sql.Composable, list[Any]]:
    """The traces ``principal`` may read: its own, or all for an admin or an ``observer``."""
    if principal.admin or observer:
        return sql.SQL("TRUE"), []
    return sql.SQL("t.principal = %s"), [principal.id]


REDACTED = "[redacted: a document outside your groups]"
_SOURCE_BLOCK = re.compile(r'<source id="(\d+)"[^>]*>.*?</source>', re.S)


def redact(trace: dict[str, Any], readable: set[int]) -> dict[str, Any]:
    """``trace`` as an observer who reads only the chunks ``readable`` sees it: the ranked chunks'
    ids and scores stay; the prompt's source blocks of other chunks, their URIs, an answer or reader
    span that cites them, and the spans' texts are redacted. ``redacted`` lists the chunk ids."""
    shown = [int(i) for i in trace.get("chunk_ids") or []]
    hidden = sorted(i for i in shown if i not in readable)
    trace["redacted"] = hidden
    if not hidden:
        return trace
    hidden_set = set(hidden)
    results: list[Any] = _list(trace.get("results"))
    numbers = {r.get("number") for r in results if isinstance(r, dict) and r.get("chunk_id") in hidden_set}
    for r in results:
        if isinstance(r, dict) and r.get("chunk_id") in hidden_set and "uri" in r:
            r["uri"] = REDACTED
    params: dict[str, Any] = trace["params"] if isinstance(trace.get("params"), dict) else {}
    prompt = params.get("prompt")
    if isinstance(prompt, list):
        def block(match: re.Match[str]) -> str:
            number = int(match.group(1))
            return f'<source id="{number}">{REDACTED}</source>' if number in numbers else match.group(0)

        params["prompt"] = [{**m, "content": _SOURCE_BLOCK.sub(block, str(m.get("content", "")))}
                            if isinstance(m, dict) else m for m in prompt]
    sentences: list[Any] = _list(params.get("sentences"))
    cites_hidden = any(numbers & set(s.get("citations") or []) for s in sentences if isinstance(s, dict))
    raw_span: Any = params.get("span")
    span: dict[str, Any] | None = raw_span if isinstance(raw_span, dict) else None
    if cites_hidden or (span is not None and span.get("source") in numbers):
        params["response"] = REDACTED
        params["sentences"] = [{**s, "text": REDACTED} for s in sentences if isinstance(s, dict)]
        if span is not None:
            params["span"] = {k: v for k, v in span.items() if k not in ("text", "sentence", "uri")}
    for s in trace.get("spans") or []:
        attributes = s.get("attributes") or {}
        for key in CONTENT_ATTRIBUTES:
            attributes.pop(key, None)
        for r in attributes.get("ragtune.results") or []:
            if isinstance(r, dict) and r.get("chunk_id") in hidden_set and "uri" in r:
                r["uri"] = REDACTED
    return trace
