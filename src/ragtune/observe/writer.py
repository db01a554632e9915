"""The spans' writer process (``[observability] span_writer = "process"``): the PostgreSQL
destination's rows are formatted and copied by a child process instead of an export thread of the
request's process.

Why: the export thread shares the request's interpreter lock, and what it does there (formatting a
search's seven rows as COPY text, 59 us; the COPY, another 30) is time a request waits for the lock
(measured: benchmarks/tracing_overhead.py). With the writer process, the request's process only
turns a batch's spans into plain tuples and pickles them (about 30 us a search) and writes them to a
pipe; the child (``python -m ragtune.observe.writer``) formats and copies them on the other core.

The child is started by the first batch and reads the database URL as its first line (not in its
arguments, which ``ps`` shows), then frames: 8 bytes of length and a pickled batch; it answers one
byte per batch, ``1`` written or ``0`` not. A child that died or does not answer fails its batch
(counted by ``tracing._Counting``) and is started again by the next batch. Closing ends its input;
it finishes the batch it holds and exits.
"""

from __future__ import annotations

import logging
import pickle
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("ragtune.observe")

_LENGTH = struct.Struct("<Q")


def portable(span: Any) -> tuple[Any, ...]:
    """A finished span as plain values (``tracing._own`` and ``tracing._steps`` as tuples): what the
    child needs to write its rows, cheap to pickle."""
    from ragtune.observe.tracing import _own, _steps

    own = _own(span)
    return ((own.trace_id, own.span_id, own.parent_id, own.name, own.start_ns, own.end_ns, own.attributes,
             own.status_ok, own.error, own.events),
            [(step.name, step.start_ns, step.end_ns, step.attributes, step_id, parent)
             for step, step_id, parent in _steps(span, own.span_id)])


def lines(batch: Sequence[tuple[Any, ...]]) -> tuple[set[Any], list[str]]:
    """The COPY lines of a batch of ``portable`` spans, with the days they fall on."""
    from ragtune.observe.tracing import Expanded, Step, _step_line, span_line

    days: set[Any] = set()
    out: list[str] = []
    for own, steps in batch:
        day, line = span_line(Expanded(*own))
        days.add(day)
        out.append(line)
        trace = format(own[0], "032x")
        for name, start, end, attributes, step_id, parent in steps:
            day, line = _step_line(trace, Step(name, None, start, end, attributes), step_id, parent)
            days.add(day)
            out.append(line)
    return days, out


class ProcessSpanExporter:
    """A ``SpanExporter`` whose batches the writer process writes (see the module)."""

    def __init__(self, database_url: Callable[[], str]) -> None:
        self._database_url = database_url
        self._child: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        data = pickle.dumps([portable(s) for s in spans], protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            try:
                child = self._child if self._child is not None and self._child.poll() is None else self._start()
                assert child.stdin is not None and child.stdout is not None
                child.stdin.write(_LENGTH.pack(len(data)) + data)
                child.stdin.flush()
                answer = child.stdout.read(1)
            except (OSError, ValueError):
                answer = b""
            if not answer:  # it died (or could not start): the next batch starts another
                self._stop(timeout=0)
        return SpanExportResult.SUCCESS if answer == b"1" else SpanExportResult.FAILURE

    def _start(self) -> subprocess.Popen[bytes]:
        self._stop(timeout=0)
        url = self._database_url()
        child = subprocess.Popen([sys.executable, "-m", "ragtune.observe.writer"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, close_fds=True)
        assert child.stdin is not None
        child.stdin.write(url.encode() + b"\n")
        child.stdin.flush()
        self._child = child
        return child

    def _stop(self, timeout: float) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        try:
            if child.stdin is not None:
                child.stdin.close()
            child.wait(timeout)
        except (OSError, subprocess.TimeoutExpired):
            child.kill()
            child.wait()
        finally:
            if child.stdout is not None:
                child.stdout.close()

    def shutdown(self) -> None:
        with self._lock:
            self._stop(timeout=5)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def main() -> int:
    """The child: batches from stdin into the spans table, one answer byte each on stdout."""
    import signal

    import psycopg

    from ragtune.observe.tracing import SPAN_COLUMNS

    # Ctrl-C in a server's terminal and a stop of its process group reach this child too: it stops
    # when its parent closes its input instead, after the batches the parent flushed while closing.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    url = source.readline().decode().strip()
    conn: psycopg.Connection[Any] | None = None
    known: set[Any] = set()
    failing = False
    while True:
        head = source.read(_LENGTH.size)
        if len(head) < _LENGTH.size:
            break  # the parent closed: done
        batch = pickle.loads(source.read(_LENGTH.unpack(head)[0]))
        try:
            days, rows = lines(batch)
            if conn is None or conn.closed or conn.broken:
                conn = psycopg.connect(url, application_name="ragtune-span-writer", autocommit=True)
                conn.execute("SET statement_timeout = '30s'")  # a stuck write fails its batch, not the writer
            with conn.transaction():
                for day in sorted(days - known):
                    conn.execute("SELECT ragtune_span_partition(%s)", (day,))
                with conn.cursor().copy(f"COPY spans ({', '.join(SPAN_COLUMNS)}) FROM STDIN") as copy:
                    copy.write("".join(rows).encode())
            known |= days
            answer, failing = b"1", False
        except Exception as exc:  # the parent counts it; the child goes on with the next batch
            if not failing:
                print(f"ragtune span writer: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            answer, failing = b"0", True
        sink.write(answer)
        sink.flush()
    if conn is not None:
        conn.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
