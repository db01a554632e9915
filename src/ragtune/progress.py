"""Helpers around the one progress protocol (``protocols.Progress`` receives ``models.ProgressEvent``).

- ``emit``: send one event when there is a receiver (``progress`` may be None everywhere).
- ``ProgressCounter``: producers that count in increments (a document written, a batch embedded)
  keep one running count per task here and send absolute events; safe to use from several threads.
- ``JsonLinesWriter`` / ``JsonLinesReader``: events across a process boundary. A worker process
  appends them to a file as JSON lines; the process that started it reads the new complete lines
  and passes them to its own ``progress`` (the LoRA training workers torchrun starts).

Concession: a counter sends an event on every change, whatever the rate; receivers that store or
draw (the server's job row, the CLI's bars) throttle themselves.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragtune.models import ProgressEvent

if TYPE_CHECKING:
    from ragtune.protocols import Progress

log = logging.getLogger(__name__)


def emit(progress: Progress | None, task: str, done: int, total: int | None = None, *, detail: str = "",
         metrics: Mapping[str, float] | None = None) -> None:
    """``progress(ProgressEvent(...))``, or nothing when ``progress`` is None."""
    if progress is not None:
        progress(ProgressEvent(task, done, total, detail, dict(metrics or {})))


class ProgressCounter:
    """Running counts per task, sent as absolute events on every change.

    The count and the event that reports it are made under one lock, so each task's events reach
    ``progress`` in order (``done`` never goes down) even when two threads count the same task."""

    def __init__(self, progress: Progress | None, totals: Mapping[str, int | None] | None = None) -> None:
        self.progress = progress
        self._totals: dict[str, int | None] = dict(totals or {})
        self._done: dict[str, int] = {}
        self._lock = threading.Lock()

    def start(self, task: str, total: int | None = None, *, detail: str = "") -> None:
        """Announce ``task`` (done 0, or what it has counted) with its total, when known."""
        with self._lock:
            self._totals[task] = total
            emit(self.progress, task, self._done.get(task, 0), total, detail=detail)

    def add(self, task: str, n: int = 1, *, detail: str = "", metrics: Mapping[str, float] | None = None) -> None:
        with self._lock:
            done = self._done[task] = self._done.get(task, 0) + n
            emit(self.progress, task, done, self._totals.get(task), detail=detail, metrics=metrics)

    def done(self, task: str) -> int:
        with self._lock:
            return self._done.get(task, 0)


# -- across processes --------------------------------------------------------------------------------
def to_json(event: ProgressEvent) -> str:
    return json.dumps({"task": event.task, "done": event.done, "total": event.total, "detail": event.detail,
                       "metrics": dict(event.metrics)}, ensure_ascii=False)


def from_json(line: str | bytes) -> ProgressEvent:
    """The event ``to_json`` wrote; ``ValueError`` (or ``KeyError``/``TypeError``) for anything else."""
    data: Any = json.loads(line)
    total = data.get("total")
    metrics = {str(k): float(v) for k, v in (data.get("metrics") or {}).items()}
    return ProgressEvent(str(data["task"]), int(data["done"]), None if total is None else int(total),
                         str(data.get("detail", "")), metrics)


class JsonLinesWriter:
    """A ``Progress`` that appends each event to ``path`` as one JSON line (opened per event, so a
    reader never sees a line the writer still buffers)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __call__(self, event: ProgressEvent) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(to_json(event) + "\n")


class JsonLinesReader:
    """Passes the events a ``JsonLinesWriter`` appended to ``path`` since the last ``relay`` on to
    ``progress``; a line not yet complete waits for the next call, a bad line is logged and skipped."""

    def __init__(self, path: str | Path, progress: Progress | None) -> None:
        self.path = Path(path)
        self.progress = progress
        self.offset = 0

    def relay(self) -> int:
        """Pass on the new complete lines; returns how many events were passed on."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return 0
        end = data.rfind(b"\n") + 1
        self.offset += end
        count = 0
        for line in data[:end].splitlines():
            if not line.strip():
                continue
            try:
                event = from_json(line)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("skipped a progress line of %s: %s (%r)", self.path, exc, line[:200])
                continue
            if self.progress is not None:
                self.progress(event)
            count += 1
        return count
