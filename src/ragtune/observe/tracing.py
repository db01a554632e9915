"""Spans of every step, in OpenTelemetry's model: written to our PostgreSQL and, when configured,
sent over OTLP/HTTP to any collector (the SDK's exporter), both in batches off the request path.

Each engine owns one ``Tracing`` with one of the SDK's ``BatchSpanProcessor`` per destination. A
span is a ``TracedSpan``, recorded here rather than by the SDK's tracer: after a search has run,
the SDK's start and end of a span took 52 us of CPU and this class 15 us, and an answer opens two
(benchmarks/tracing_cost.py has the whole budget); the exporters turn them into the SDK's spans
for OTLP. A request's spans are ended into bounded queues and written by background threads;
a full queue drops the span and counts it, a failing destination (database down, collector
unreachable, a bad endpoint) fails the batch, logs once until it works again and counts it. No
request ever waits for a span to be written or fails because one was not.

Names follow the OpenTelemetry GenAI semantic conventions where they exist
(``gen_ai.operation.name``, ``gen_ai.request.model``, ``gen_ai.usage.*``, ``gen_ai.data_source.id``,
``gen_ai.retrieval.*``, ...); our own facts are ``ragtune.*``. Attribute values are OpenTelemetry's
primitives, so structured ones (``JSON_ATTRIBUTES``) travel as JSON text and are stored as JSON.

What a request does on its own path is as little as a trace needs (measured:
benchmarks/tracing_overhead.py): a request opens one span (a search's ``retrieval``; an answer's
``ask``, with its search's below), and its stages and steps are timed, not opened as spans: the
timer's ``Step`` records (name, parent step, start, end, attributes) and the request's structured
facts (parameters, ranked chunks, prompt, lineage) are kept as Python values on the span
(``stash``), or as a function that works them out (``FACTS``: ``observe.traces.record``). The
export threads turn them into attributes and the steps into child spans (``expand``), off the
request path, for both destinations alike.

Texts (questions, prompts, answers: ``CONTENT_ATTRIBUTES``) are kept in our spans table, behind
the traces' access rule (``observe.traces``); they leave over OTLP only with
``[observability] export_content``. Under a collection's PII policy both destinations store or send
them screened (``ContentScreen``, applied by the export threads: no cost on the request path).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import orjson

from ragtune.settings import ObservabilitySettings
from ragtune.store.database import Database

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import SpanContext

log = logging.getLogger("ragtune.observe")

# Attributes whose value is structured (JSON text on the span, JSON in the spans table).
JSON_ATTRIBUTES = frozenset({
    "ragtune.params", "ragtune.results", "ragtune.timings_ms", "ragtune.sentences", "ragtune.lineage",
    "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.retrieval.documents", "ragtune.policy",
})
# Attributes that hold text from documents or users: stored, exported only with export_content.
CONTENT_ATTRIBUTES = frozenset({
    "ragtune.query", "ragtune.sentences", "gen_ai.input.messages", "gen_ai.output.messages",
    "gen_ai.retrieval.query.text", "ragtune.feedback.comment", "ragtune.feedback.correction",
})
# Attributes the spans table keeps as columns (the list's filters and the access rule read them).
COLUMN_ATTRIBUTES = {
    "ragtune.kind": "kind", "ragtune.principal": "principal", "ragtune.principal_admin": "principal_admin",
    "ragtune.groups": "groups", "ragtune.collection": "collection", "ragtune.model": "model",
    "ragtune.abstained": "abstained", "ragtune.grounded": "grounded", "ragtune.chunk_ids": "chunk_ids",
}
SPAN_COLUMNS = ("trace_id", "span_id", "parent_id", "name", "kind", "start_time", "duration_ms", "status", "error",
                "principal", "principal_admin", "groups", "collection", "model", "abstained", "grounded",
                "chunk_ids", "attributes", "events")


# A collection's name (None: the span names none) -> what its span texts pass through before they
# are stored or exported (its PII policy: govern.pii), or None when they are kept as they are.
ContentScreen = Callable[[str | None], Callable[[str], str] | None]
FACTS = "ragtune.facts"  # stashed: a function giving attributes, called by the exporters (traces.record)


class TracedSpan:
    """One span: its ids (ints, as OpenTelemetry's), times in ns since the epoch, OpenTelemetry
    ``attributes``, values ``kept`` as they are (``stash``), status, events. ``end()`` hands it to
    the processors (``on_end``). It reads as the SDK's ``ReadableSpan`` where a batch processor
    does (``context``); ``NOT_RECORDING`` stands for no span (tracing off)."""

    __slots__ = (
        "_ended",
        "attributes",
        "end_time",
        "error",
        "events",
        "kept",
        "name",
        "parent_id",
        "span_id",
        "start_time",
        "status_ok",
        "trace_id",
    )

    def __init__(self, ended: Callable[[TracedSpan], None], name: str, trace_id: int, span_id: int,
                 parent_id: int | None) -> None:
        self._ended = ended
        self.name = name
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.start_time = time.time_ns()
        self.end_time: int | None = None
        self.attributes: dict[str, Any] = {}
        self.kept: dict[str, Any] = {}
        self.status_ok = True
        self.error: str | None = None
        self.events: list[tuple[str, int, dict[str, Any]]] = []

    def is_recording(self) -> bool:
        return self.end_time is None

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        if self.end_time is None:
            self.attributes.update(attributes)

    def fail(self, reason: str) -> None:
        """Status error, for ``reason``."""
        if self.end_time is None:
            self.status_ok, self.error = False, reason

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        if self.end_time is None:
            self.events.append((name, time.time_ns(), dict(attributes or {})))

    def record_exception(self, exc: BaseException) -> None:
        """The exception as OpenTelemetry's ``exception`` event."""
        self.add_event("exception", {"exception.type": type(exc).__qualname__, "exception.message": str(exc),
                                     "exception.stacktrace": "".join(traceback.format_exception(exc))})

    def end(self) -> None:
        if self.end_time is None:
            self.end_time = time.time_ns()
            self._ended(self)

    @property
    def context(self) -> SpanContext:
        from opentelemetry.trace import SpanContext, TraceFlags

        return SpanContext(self.trace_id, self.span_id, False, TraceFlags(TraceFlags.SAMPLED))


NOT_RECORDING = TracedSpan(lambda span: None, "", 0, 0, None)
NOT_RECORDING.end_time = NOT_RECORDING.start_time
_CURRENT: ContextVar[TracedSpan | None] = ContextVar("ragtune_span", default=None)


@dataclass
class Step:
    """One timed stage or step of a request, a child span once exported (``expand``): ``parent`` is
    the index of the step it ran in (None: directly under the request's span); times in ns since
    the epoch, as span times are."""

    name: str
    parent: int | None
    start_ns: int
    end_ns: int = 0
    attributes: dict[str, Any] = field(default_factory=dict)


def stash(span: TracedSpan, values: Mapping[str, Any]) -> None:
    """Attribute values kept as they are (dicts, lists) on a recording span; exporters turn them
    into attributes off the request path. None values are left out; ``ragtune.steps`` extends."""
    if span.end_time is not None:
        return
    kept = span.kept
    for key, value in values.items():
        if value is None:
            continue
        if key == "ragtune.steps":
            kept.setdefault(key, []).extend(value)
        else:
            kept[key] = value


def merged_attributes(span: TracedSpan, screen: ContentScreen | None = None) -> dict[str, Any]:
    """A span's attributes with its stashed values (the steps left out) and the facts it was given
    to work out (``FACTS``); with ``screen``, the texts (``CONTENT_ATTRIBUTES``) pass through what
    it gives for the span's collection (its PII policy)."""
    out = dict(span.attributes)
    out.update({k: v for k, v in span.kept.items() if k != "ragtune.steps" and k != FACTS})
    facts = span.kept.get(FACTS)
    if facts is not None:
        out.update(facts())
    text_screen = screen(out.get("ragtune.collection")) if screen is not None else None
    if text_screen is not None:
        for key in CONTENT_ATTRIBUTES & out.keys():
            out[key] = _screened(out[key], text_screen)
    return out


def _screened(value: Any, screen: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return screen(value)
    if isinstance(value, dict):
        return {k: _screened(v, screen) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_screened(v, screen) for v in value]
    return value


@dataclass
class Expanded:
    """A span as exported: its ids, times and merged attributes; steps become such spans too."""

    trace_id: int
    span_id: int
    parent_id: int | None
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status_ok: bool = True
    error: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    source: Any = None  # the span it is (None for a step)


def expand(span: TracedSpan, screen: ContentScreen | None = None) -> list[Expanded]:
    """The span with its stashed values, then one span per recorded step, children of the span
    (or of the step they ran in)."""
    own = _own(span, screen)
    out = [own]
    for step, step_id, parent in _steps(span, own.span_id):
        out.append(Expanded(own.trace_id, step_id, parent, step.name, step.start_ns, step.end_ns or step.start_ns,
                            {"ragtune.kind": step.name, **step.attributes}))
    return out


def _own(span: TracedSpan, screen: ContentScreen | None = None) -> Expanded:
    return Expanded(span.trace_id, span.span_id, span.parent_id, span.name, span.start_time,
                    span.end_time or span.start_time, merged_attributes(span, screen), span.status_ok, span.error,
                    [{"name": name, "time": _time(at).isoformat(),
                      "attributes": {k: (list(v) if isinstance(v, tuple) else v) for k, v in attributes.items()}}
                     for name, at, attributes in span.events], span)


def _steps(span: TracedSpan, span_id: int) -> list[tuple[Step, int, int]]:
    """The span's recorded steps, each with its span id and its parent's."""
    steps: list[Step] = span.kept.get("ragtune.steps") or []
    if not steps:
        return []
    ids = [_step_id(span_id, i) for i in range(len(steps))]
    return [(step, ids[i], span_id if step.parent is None else ids[step.parent]) for i, step in enumerate(steps)]


# Ids from the operating system's randomness, not Python's ``random`` (the SDK's default), which any
# code may seed: a training run's ``random.seed(0)`` (or a test framework's) then makes every
# process draw the same ids, and traces collide in the table.
def _span_id() -> int:
    return secrets.randbits(64) or 1


def _trace_id() -> int:
    return secrets.randbits(128) or 1


def _step_id(span_id: int, index: int) -> int:
    """The span id of a span's ``index``th step: worked out, not drawn, so both destinations give
    a step the same id without keeping one (distinct per step, as the XOR is one-to-one)."""
    return (span_id ^ ((index + 1) * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF)) or 1


def hex_trace_id(span: TracedSpan) -> str | None:
    """The span's trace id as collectors show it (32 hex digits), or None for no span."""
    return format(span.trace_id, "032x") if span.trace_id else None


def attribute(value: Any) -> Any:
    """``value`` as an OpenTelemetry attribute value: primitives and lists of them as they are,
    anything else as JSON text."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, bool, int, float)) for v in value) \
            and len({type(v) for v in value}) <= 1:
        return list(value)
    return json.dumps(value, default=str, separators=(",", ":"))


@dataclass
class DestinationStats:
    """What one destination did with the spans given to it since the engine opened."""

    exported: int = 0
    failed: int = 0  # in batches the destination refused or could not be reached for
    dropped: int = 0  # the queue was full


class _Counting:
    """A ``SpanExporter`` around another that counts what it exported and what failed, and logs a
    failure once until the destination works again (an unreachable collector must not flood the
    log with one warning per batch)."""

    def __init__(self, inner: Any, name: str, stats: DestinationStats) -> None:  # exports TracedSpans
        self.inner = inner
        self.name = name
        self.stats = stats
        self._failing = False
        self.closing = False  # set when the engine closes: a failing destination is not retried then
        self.settled: Callable[[int], None] = lambda n: None  # told how many spans left the queue

    def export(self, spans: Sequence[TracedSpan]) -> Any:
        try:
            return self._export(spans)
        finally:
            self.settled(len(spans))

    def _export(self, spans: Sequence[TracedSpan]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        if self.closing and self._failing:  # draining the queue into a dead collector would hold the exit
            self.stats.failed += len(spans)
            return SpanExportResult.FAILURE
        try:
            result = self.inner.export(spans)
        except Exception as exc:  # a destination's bug must not kill the export thread
            result = SpanExportResult.FAILURE
            reason = f"{type(exc).__name__}: {exc}"
        else:
            reason = "the destination refused the batch or could not be reached"
        if result == SpanExportResult.SUCCESS:
            self.stats.exported += len(spans)
            if self._failing:
                log.warning("spans: %s works again", self.name)
                self._failing = False
        else:
            self.stats.failed += len(spans)
            if not self._failing:
                log.warning("spans: %s failed (%s); its spans are dropped and counted until it works again",
                            self.name, reason)
                self._failing = True
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return bool(self.inner.force_flush(timeout_millis))


class _Bounded:
    """A ``SpanProcessor`` in front of a ``BatchSpanProcessor`` that keeps its queue from filling:
    a span that would not fit is dropped here, counted, and the overload logged once until the
    queue drains. (The SDK's own full queue drops the oldest span with a warning per span, and
    counts only when an environment variable turns its internal metrics on.)"""

    def __init__(self, inner: Any, exporter: _Counting, capacity: int) -> None:
        self.inner = inner
        self.exporter = exporter
        self.capacity = capacity
        self.pending = 0  # spans given to the batch processor and not yet through the exporter
        self._lock = threading.Lock()
        self._overloaded = False
        exporter.settled = self._settled

    def _settled(self, count: int) -> None:
        with self._lock:
            self.pending = max(0, self.pending - count)

    def on_end(self, span: TracedSpan) -> None:
        with self._lock:
            full = self.pending >= self.capacity
            warn = full and not self._overloaded
            if full:
                self._overloaded = True
                self.exporter.stats.dropped += 1  # under the lock: the server's request threads drop at once
            else:
                self.pending += 1
                if self._overloaded and self.pending <= self.capacity // 2:
                    self._overloaded = False  # drained: the next overload is logged again
        if full:
            if warn:
                log.warning("spans: the %s queue is full (%d spans); new spans are dropped and counted until it "
                            "drains", self.exporter.name, self.capacity)
            return
        self.inner.on_end(span)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return bool(self.inner.force_flush(timeout_millis))


class _Silenced(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


_SILENCED = _Silenced()


class PostgresSpanExporter:
    """Writes a batch of spans into the spans table with one COPY, creating the day's partition
    when it is the first span of that day. ``database`` may be a function that opens it: then it is
    opened by the first batch (a training run, which needs no database otherwise, starts the
    embedded server only when its span is written).

    The rows are written as COPY's text format, formatted here (``span_line``): this work runs in
    the request's process and holds its interpreter lock, so it is kept small (measured: psycopg's
    per-value adaptation took 18 us a row, 130 us a search's seven; the standard library's JSON
    encoder twice orjson's time; the README's observability section has what remains)."""

    def __init__(self, database: Database | Callable[[], Database], screen: ContentScreen | None = None) -> None:
        self._database = database
        self._days: set[date] = set()
        self.screen = screen

    @property
    def db(self) -> Database:
        self._database = _opened(self._database)
        return self._database

    def export(self, spans: Sequence[TracedSpan]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        lines, days = span_rows(spans, self.screen)
        with self.db.transaction() as conn:
            for day in sorted(days - self._days):
                conn.execute("SELECT ragtune_span_partition(%s)", (day,))
            with conn.cursor().copy(f"COPY spans ({', '.join(SPAN_COLUMNS)}) FROM STDIN") as copy:
                copy.write("".join(lines).encode())
        self._days |= days
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class _ForCollector:
    """A ``SpanExporter`` around an OTLP one: each span expanded (stashed values as attributes, steps
    as child spans), structured values as JSON text, texts (``CONTENT_ATTRIBUTES``) left out unless
    ``content``."""

    def __init__(self, inner: SpanExporter, content: bool, service: str = "ragtune",
                 screen: ContentScreen | None = None) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self.inner = inner
        self.content = content
        self.screen = screen
        self.resource = Resource.create({"service.name": service})
        self.scope = InstrumentationScope("ragtune")

    def export(self, spans: Sequence[TracedSpan]) -> Any:
        from opentelemetry.sdk.trace import Event, ReadableSpan
        from opentelemetry.trace import SpanContext, Status, StatusCode, TraceFlags

        flags = TraceFlags(TraceFlags.SAMPLED)
        out = []
        for s in spans:
            for e in expand(s, self.screen):
                attributes = {k: attribute(v) for k, v in e.attributes.items()
                              if v is not None and (self.content or k not in CONTENT_ATTRIBUTES)}
                events = [Event(name, {k: attribute(v) for k, v in given.items() if v is not None}, at)
                          for name, at, given in (s.events if e.source is not None else ())]
                out.append(ReadableSpan(
                    name=e.name, context=SpanContext(e.trace_id, e.span_id, False, flags),
                    parent=SpanContext(e.trace_id, e.parent_id, False, flags) if e.parent_id else None,
                    resource=self.resource, attributes=attributes, events=events,
                    status=Status(StatusCode.UNSET) if e.status_ok else Status(StatusCode.ERROR, e.error),
                    start_time=e.start_ns, end_time=e.end_ns, instrumentation_scope=self.scope))
        return self.inner.export(out)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return bool(self.inner.force_flush(timeout_millis))


def span_rows(spans: Sequence[TracedSpan], screen: ContentScreen | None = None) -> tuple[list[str], set[date]]:
    """The spans table's rows for ``spans`` (each span, then its steps) as COPY text lines, and the
    UTC days they start on (their partitions)."""
    lines: list[str] = []
    days: set[date] = set()
    for s in spans:
        own = _own(s, screen)
        day, line = span_line(own)
        days.add(day)
        lines.append(line)
        trace = format(own.trace_id, "032x")
        for step, step_id, parent in _steps(s, own.span_id):
            day, line = _step_line(trace, step, step_id, parent)
            days.add(day)
            lines.append(line)
    return lines, days


def span_line(span: Expanded) -> tuple[date, str]:
    """One span as a line of COPY's text format in ``SPAN_COLUMNS`` order, with the UTC day it
    starts on (its partition); structured values are stored as JSON."""
    attributes = dict(span.attributes)
    columns: dict[str, Any] = {column: attributes.pop(key, None) for key, column in COLUMN_ATTRIBUTES.items()}
    stored = {k: (_json(v) if k in JSON_ATTRIBUTES else v) for k, v in attributes.items() if v is not None}
    start = _time(span.start_ns)
    groups = columns["groups"] or ()
    fields = (
        format(span.trace_id, "032x"), format(span.span_id, "016x"),
        format(span.parent_id, "016x") if span.parent_id is not None else _NULL,
        _text(span.name), _text(columns["kind"] or span.name), start.isoformat(),
        repr((span.end_ns - span.start_ns) / 1e6), "ok" if span.status_ok else "error", _text(span.error),
        _text(columns["principal"]), "t" if columns["principal_admin"] else "f",
        _text("{" + ",".join('"' + str(g).replace("\\", "\\\\").replace('"', '\\"') + '"' for g in groups) + "}"),
        _text(columns["collection"]), _text(columns["model"]), _bool(columns["abstained"]),
        _bool(columns["grounded"]), "{" + ",".join(str(int(i)) for i in columns["chunk_ids"] or ()) + "}",
        _json_text(stored), _json_text(span.events) if span.events else "[]",
    )
    return start.date(), "\t".join(fields) + "\n"


def _step_line(trace: str, step: Step, step_id: int, parent: int) -> tuple[date, str]:
    """``span_line`` of a step (a child span with no column attributes), formatted directly: a
    search records six, and this runs in the request's process."""
    if not _COLUMN_KEYS.isdisjoint(step.attributes):
        own = Expanded(int(trace, 16), step_id, parent, step.name, step.start_ns, step.end_ns or step.start_ns,
                       {"ragtune.kind": step.name, **step.attributes})
        return span_line(own)
    start = _time(step.start_ns)
    name = _text(step.name)
    stored = {k: (_json(v) if k in JSON_ATTRIBUTES else v) for k, v in step.attributes.items() if v is not None}
    return start.date(), (f"{trace}\t{step_id:016x}\t{parent:016x}\t{name}\t{name}\t{start.isoformat()}\t"
                          f"{((step.end_ns or step.start_ns) - step.start_ns) / 1e6!r}\tok\t\\N\t\\N\tf\t{{}}\t"
                          f"\\N\t\\N\t\\N\t\\N\t{{}}\t{_json_text(stored)}\t[]\n")


_COLUMN_KEYS = frozenset(COLUMN_ATTRIBUTES)
_NULL = "\\N"


def _text(value: Any) -> str:
    """A value as a COPY text field: backslashes and line and field separators escaped; NUL, which
    PostgreSQL's text cannot hold, left out."""
    if value is None:
        return _NULL
    text = str(value)
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if "\n" in text or "\r" in text or "\t" in text or "\x00" in text:
        text = text.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t").replace("\x00", "")
    return text


def _bool(value: Any) -> str:
    return _NULL if value is None else ("t" if value else "f")


def _json_text(value: Any) -> str:
    """JSON as a COPY text field. The encoder escapes every control character, so only its
    backslashes need escaping for COPY; the NUL escape is dropped (jsonb refuses it), and so are
    NaN and infinities (encoded as null)."""
    try:
        text = orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:  # an integer past 64 bits, say: the standard library takes any
        text = json.dumps(value, default=str, separators=(",", ":"))
    if "\\" in text:
        if "\\u0000" in text:  # an escaped NUL, not an escaped backslash followed by "u0000"
            text = _JSON_NUL.sub(r"\1", text)
        text = text.replace("\\", "\\\\")
    return text


_JSON_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _time(nanoseconds: int) -> datetime:
    return datetime.fromtimestamp(nanoseconds / 1e9, tz=UTC)


class Tracing:
    """One engine's spans (see the module docstring). ``span()`` opens a span as a child of the
    current one (or a new trace's root); with ``[observability] tracing = false`` it opens none
    and every trace id is None. ``database`` is the spans table's (or a function opening it when the
    first spans are written, ``PostgresSpanExporter``)."""

    def __init__(self, database: Database | Callable[[], Database], settings: ObservabilitySettings, *,
                 service: str = "ragtune", screen: ContentScreen | None = None) -> None:
        """``screen``: the PII screen of a collection's span texts (``ContentScreen``), applied by
        both destinations before a span is stored or sent."""
        self.settings = settings
        self.destinations: dict[str, DestinationStats] = {}
        self._processors: dict[str, _Bounded] = {}
        self._exporters: dict[str, _Counting] = {}
        self._ending: tuple[Any, ...] = ()  # every processor an ended span is handed to
        self._on = settings.tracing
        self._lock = threading.Lock()
        if not self._on:
            return
        self._add("postgresql", PostgresSpanExporter(database, screen))
        if settings.otlp_endpoint:
            # A search's span leaves as 7 (its steps expanded): 64 of them make ~450 OTLP spans a request,
            # which a collector that stores them (MLflow) takes within the 5 s timeout; 512 (3,500 spans)
            # timed out against MLflow and were counted failed though stored (benchmarks/otlp_export.py).
            self._add("otlp", self._otlp_exporter(settings, service, screen), batch=64)

    @staticmethod
    def _otlp_exporter(settings: ObservabilitySettings, service: str, screen: ContentScreen | None) -> Any:
        from ragtune.extras import needs

        with needs("observe", "OTLP export"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        # The SDK's exporter logs every failed batch and retry; ours logs an outage once (_Counting).
        for name in ("opentelemetry.exporter.otlp.proto.http.trace_exporter",
                     "opentelemetry.exporter.otlp.common.http"):
            logging.getLogger(name).addFilter(_SILENCED)
        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint, timeout=5,
                                    headers={str(k): str(v) for k, v in settings.otlp_headers.items()})
        return _ForCollector(exporter, settings.export_content, service, screen)

    def _add(self, name: str, exporter: Any, *, batch: int = 512) -> None:
        """A bounded batching processor for one destination (``_Bounded``, ``_Counting``), sending
        at most ``batch`` spans (before their steps are expanded) at a time."""
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        stats = self.destinations[name] = DestinationStats()
        s = self.settings
        counting = self._exporters[name] = _Counting(exporter, name, stats)
        batches = BatchSpanProcessor(
            counting,  # type: ignore[arg-type]  # the SpanExporter protocol, not its class
            max_queue_size=s.span_queue_size,
            schedule_delay_millis=s.span_batch_delay_ms, max_export_batch_size=min(batch, s.span_queue_size))
        processor = self._processors[name] = _Bounded(batches, counting, s.span_queue_size)
        self._ending = (*self._ending, processor)

    @property
    def enabled(self) -> bool:
        return self._on

    def add_processor(self, processor: Any) -> None:
        """One more processor every span is handed to as it ends: its ``on_end(span)`` gets the
        ``TracedSpan`` itself, on the thread that ended it (metrics, a test's)."""
        if self._on:
            with self._lock:
                self._ending = (*self._ending, processor)

    def _ended(self, span: TracedSpan) -> None:
        for processor in self._ending:
            processor.on_end(span)

    @contextmanager
    def span(self, name: str, attributes: Mapping[str, Any] | None = None, *,
             current: bool = True) -> Iterator[TracedSpan]:
        """A span named ``name`` around the block, a child of the current one; current inside the
        block unless ``current`` is false (a span nothing inside will be the parent of). ``attributes``
        are stashed (``stash``). An exception escaping the block is recorded on it (status error)
        and raised on."""
        if not self._on:
            yield NOT_RECORDING
            return
        parent = _CURRENT.get()
        span = (TracedSpan(self._ended, name, parent.trace_id, _span_id(), parent.span_id) if parent is not None
                else TracedSpan(self._ended, name, _trace_id(), _span_id(), None))
        if attributes:
            stash(span, attributes)
        token = _CURRENT.set(span) if current else None
        try:
            yield span
        except BaseException as exc:
            span.record_exception(exc)
            span.fail(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if token is not None:
                _CURRENT.reset(token)
            span.end()

    def evaluation(self, trace_id: str, parent_span_id: str, event: Mapping[str, Any],
                   attributes: Mapping[str, Any]) -> None:
        """A ``feedback`` span in the trace ``trace_id`` under its span ``parent_span_id`` (which ended
        long ago), carrying the GenAI conventions' ``gen_ai.evaluation.result`` event."""
        if not self._on:
            return
        span = TracedSpan(self._ended, "feedback", int(trace_id, 16), _span_id(), int(parent_span_id, 16))
        span.set_attributes({k: attribute(v) for k, v in attributes.items() if v is not None})
        span.add_event("gen_ai.evaluation.result", {k: attribute(v) for k, v in event.items()})
        span.end()

    def flush(self, timeout_ms: int = 10_000) -> bool:
        """Write every span ended so far into our spans table (a reader of traces calls this first,
        so it sees its own). Only ours: flushing runs the export in the caller's thread, and a
        request must never wait on a collector."""
        processor = self._processors.get("postgresql")
        return bool(processor.force_flush(timeout_ms)) if processor is not None and self._on else True

    def stats(self) -> dict[str, dict[str, int]]:
        """Per destination: spans exported, failed, dropped for a full queue, and queued now."""
        return {name: {"exported": stats.exported, "failed": stats.failed, "dropped": stats.dropped,
                       "queued": self._processors[name].pending}
                for name, stats in self.destinations.items()}

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued, for at most ``timeout_s``: a command or server that exits must
        not wait on a slow destination (the SDK's own shutdown waits up to 30 s per destination).
        What is still queued then is dropped, with a warning."""
        with self._lock:
            was_on, self._on = self._on, False
            self._ending = ()
        for exporter in self._exporters.values():
            exporter.closing = True
        if not was_on:
            return

        def shut() -> None:  # each destination's queue written, in turn
            for processor in self._processors.values():
                processor.shutdown()

        closing = threading.Thread(target=shut, name="ragtune-spans-close", daemon=True)
        closing.start()
        closing.join(timeout_s)
        if closing.is_alive():
            queued = sum(p.pending for p in self._processors.values())
            log.warning("spans: %d not written within %.0f s of closing; they are dropped", queued, timeout_s)


def _opened(database: Database | Callable[[], Database]) -> Database:
    return database if isinstance(database, Database) else database()


def current_span() -> TracedSpan:
    """The span the code runs in (``NOT_RECORDING`` outside any)."""
    return _CURRENT.get() or NOT_RECORDING


def set_attributes(span: TracedSpan | None, attributes: Mapping[str, Any]) -> None:
    """``attributes`` on ``span`` (if any), each as ``attribute`` converts it; None values are left out."""
    if span is not None and span.is_recording():
        span.set_attributes({k: attribute(v) for k, v in attributes.items() if v is not None})


def numbers(prefix: str, values: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of ``values`` as attributes ``prefix + key`` (an evaluation's metrics)."""
    return {prefix + str(k): float(v) for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and v == v and abs(v) != float("inf")}


@contextmanager
def run_span(tracing: Tracing | None, name: str, attributes: Mapping[str, Any],
             title: str | None = None) -> Iterator[TracedSpan | None]:
    """A span for a long run of work the local operator started (a training, an evaluation), its
    maker the operator: ``None`` without ``tracing`` or with tracing off. ``title`` is what the
    trace list shows for it where a request shows its question (``ragtune.title``)."""
    if tracing is None or not tracing.enabled:
        yield None
        return
    with tracing.span(name, {"ragtune.kind": name, "ragtune.principal": "system", "ragtune.principal_admin": True,
                             "ragtune.title": title, **attributes}) as span:
        yield span
