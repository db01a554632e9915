"""Helpers around the one progress protocol (``protocols.Progress`` receives ``models.ProgressEvent``).

- ``emit``: send one event when there is a receiver (``progress`` may be None everywhere).
- ``ProgressCounter``: producers that count in increments (a document written, a batch embedded)
  keep one running count per task here and send absolute events; safe to use from several threads.
- ``JsonLinesWriter`` / ``JsonLinesReader``: events across a process boundary. A worker process
  appends them to a file as JSON lines; the process that started it reads the new complete lines
  and passes them to its own ``progress`` (the LoRA training workers torchrun starts).
- ``Eta`` and ``clock_time``: the time a task has left, from its rate since it started, and how
  it is written; the CLI's bars and its log lines both use them, so they agree.

Concession: a counter sends an event on every change, whatever the rate; receivers that store or
draw (the server's job row, the CLI's bars) throttle themselves.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
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


# -- time left ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Eta:
    """How long one task has left: the units still to do at the average rate this run of the task
    has kept so far.

    Only what this run did counts: a training resumed at step 50 of 100 that has done 10 steps in
    10 s has 40 s left, not 50 s. Once a second step has come, the rate is measured from the end of
    the first, which pays for the warm-up (a model's first pass, torchrun starting, a resumed
    training fast-forwarding its data): 27 s for the first step of a small LoRA training here, 4 s
    for each of the next. An average over the whole run is what a long job wants: Rich's own
    estimate (``Task.speed``) keeps only the samples of the last 30 s and forgets them when the
    total changes, so a task reporting less often than that (an optimiser step of a LoRA training
    on CPU with gradient accumulation, an evaluation pass, a checkpoint) never has an estimate at
    all. The price: a rate that changes for good (a cache that stops hitting) shows in the estimate
    only slowly.

    Frozen: each event makes a new value (``observe``), so a reader on another thread (the bars'
    refresh) always sees one consistent state without a lock. Times are seconds of one monotonic
    clock.
    """

    started: float      # when the task (or its latest restart) first reported
    start_done: int     # its count then: where a resumed task went on from
    updated: float      # when it last reported
    done: int
    total: int | None = None
    reports: int = 0    # the events that moved ``done`` on since the start
    first: tuple[float, int] | None = None  # (time, done) of the first of them: the warm-up's end

    @classmethod
    def begin(cls, done: int, total: int | None, now: float) -> Eta:
        return cls(started=now, start_done=done, updated=now, done=done, total=total)

    def observe(self, done: int, total: int | None, now: float) -> Eta:
        """The estimate after an event. A count that goes back starts the task again (each trial
        of a search trains from step 0); a total that grows does not (ingest learns its totals as
        it reads), since the rate is of the count alone."""
        if done < self.done:
            return Eta.begin(done, total, now)
        if done == self.done:
            return replace(self, updated=now, total=total)
        return replace(self, updated=now, done=done, total=total, reports=self.reports + 1,
                       first=self.first or (now, done))

    @property
    def finished(self) -> bool:
        return self.total is not None and self.done >= self.total

    def _measured(self) -> tuple[float, int, int]:
        """(since when, from which count, in how many events) the rate is measured: from the end of
        the first step once there is a second, else from the start."""
        if self.first is not None and self.reports >= 2:
            return self.first[0], self.first[1], self.reports - 1
        return self.started, self.start_done, self.reports

    @property
    def rate(self) -> float | None:
        """Units per second (see the class); None before the task has done any in measurable time."""
        since, base, _ = self._measured()
        seconds, progressed = self.updated - since, self.done - base
        return progressed / seconds if progressed > 0 and seconds > 0 else None

    def elapsed(self, now: float | None = None) -> float:
        """Seconds since the task (or its restart) began, warm-up included."""
        return (self.updated if now is None else now) - self.started

    def remaining(self, now: float | None = None) -> float | None:
        """Seconds left at ``now`` (default: the latest event), None while unknown (no total, no
        rate yet); 0 once finished.

        Between events the estimate counts down. A task whose next event is overdue is not shown
        at 0 for ever: it reports every ``step`` units on average (1 for a training, a batch for
        an embedder), none came by ``now``, so its rate is at most ``(done + step) / elapsed`` and
        the estimate is never less than the rest at that rate. For a steady task the two agree at
        the moment the next event is due, so the estimate never jumps; for a stalled one it grows."""
        if self.total is None:
            return None
        if self.finished:
            return 0.0
        rate = self.rate
        if rate is None:
            return None
        since, base, events = self._measured()
        left = self.total - self.done
        at = self.updated if now is None else max(now, self.updated)
        countdown = left / rate - (at - self.updated)
        progressed = self.done - base
        step = progressed / events
        overdue = (left - step) * (at - since) / (progressed + step)
        return max(countdown, overdue, 0.0)


def clock_time(seconds: float | None) -> str:
    """``H:MM:SS`` to the nearest second (so 89.9999 s of float arithmetic reads 0:01:30);
    ``-:--:--`` for None, as Rich writes an unknown time."""
    if seconds is None or not math.isfinite(seconds):
        return "-:--:--"
    minutes, secs = divmod(int(max(seconds, 0.0) + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


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
