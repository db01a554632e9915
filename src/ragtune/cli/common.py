"""What every ``ragtune`` command shares, defined once: the consoles, settings and engine, the error
boundary, the common options, the one renderer of progress events, the ingest report and the
pieces of metric tables (``num``, ``confusion_tables``).

Every command module imports this one; nothing but the entry point imports ``cli/main.py``, which
only assembles the command tree, so the package has no import cycle.

``ragtune --help`` imports every command module, so at module level they import only typer, rich,
this module, each other and the base modules (``errors``, ``settings``, ``models``). The engine and
the layers under it (store, ingest, retrieve, generate, evaluate, finetune, server) pull in numpy,
psycopg, torch or FastAPI and are imported inside the command that uses them: that, and nothing
else, is what a function-local import in ``cli/`` is for.

``load_settings`` and ``run_command`` are not called ``settings`` and ``run``: command bodies keep
their settings in a local ``settings``, and ``tune eval`` and ``models track|register`` take an
argument ``run`` (its name is the ``RUN`` shown in their help).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from ragtune.errors import ConfigError, RagtuneError
from ragtune.models import Principal
from ragtune.progress import Eta, clock_time
from ragtune.settings import Settings

if TYPE_CHECKING:
    from ragtune.engine import Ragtune
    from ragtune.models import IngestReport, ProgressEvent

T = TypeVar("T")

console = Console()
err_console = Console(stderr=True)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Project data folder (default ./.ragtune).")]
CollectionOpt = Annotated[str | None, typer.Option("--collection", "-c", help="Collection name.")]
AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
AsUserOpt = Annotated[str | None, typer.Option(
    "--as-user", help="Read as this user (with --as-group: its groups); default: the local operator, an "
                      "admin, who reads everything.")]
AsGroupOpt = Annotated[list[str] | None, typer.Option(
    "--as-group", help="Read as a member of these groups (comma-separated or repeated).")]


def load_settings(data_dir: Path | None = None, **overrides: Any) -> Settings:
    """The project's settings (``ragtune.toml``, ``RAGTUNE_*``), with the command's options on top."""
    return Settings.load(data_dir=data_dir, **overrides)


def engine(data_dir: Path | None = None, **overrides: Any) -> Ragtune:
    """The engine for the project; open it with ``with`` so its database pool is closed."""
    return open_engine(load_settings(data_dir, **overrides))


def open_engine(project: Settings) -> Ragtune:
    """The engine for settings a command already holds (``serve`` reads them before it opens one)."""
    from ragtune.engine import Ragtune

    return Ragtune(project, on_database_wait=database_notice)


def database_notice(reason: str) -> None:
    """One line while the embedded PostgreSQL makes us wait (after a crash it replays its log first)."""
    what = "recover (crash recovery)" if reason == "crash recovery" else "start"
    err_console.print(f"waiting for PostgreSQL to {what}…", highlight=False, soft_wrap=True)


def run_command(fn: Callable[[], T]) -> T:
    """Run a command body, turning ragtune errors into a message and exit code 2 (Ctrl-C: 130).

    Any other exception is a bug or an unforeseen failure (a database error, a full disk): it too is
    one line, with exit code 1, unless ``RAGTUNE_DEBUG`` is set, which lets the traceback through.
    Typer's own exits, aborts and usage errors pass unchanged: they are already messages.
    """
    from ragtune.store.audit import local_origin, origin

    try:
        with origin(local_origin("cli")):  # the audit log's "from where" of what the command does
            return fn()
    except RagtuneError as exc:
        # one line, whatever the terminal's width; the message's own brackets are not markup
        err_console.print(f"[bold red]error[/]: {escape(str(exc))}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort, typer.TyperException):
        raise
    except Exception as exc:
        if os.environ.get("RAGTUNE_DEBUG"):
            raise
        first_line = (str(exc).strip().splitlines() or [""])[0]
        err_console.print(f"[bold red]error[/]: unexpected {type(exc).__name__}: {escape(first_line)} "
                          "(set RAGTUNE_DEBUG=1 for the traceback)", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def reader(as_user: str | None, as_group: list[str] | None) -> Principal:
    """Who a command reads as: the local operator (the system principal, an admin), as in the
    Python API and ragtune serve with auth off, unless a user or groups are given, then that user
    with those groups only."""
    if as_user is None and not as_group:
        return Principal.system()
    groups = frozenset(g for item in as_group or [] for g in parse_groups(item))
    return Principal(id=as_user or "cli", groups=groups)


def parse_groups(value: str | None) -> list[str]:
    """``"hr, staff,"`` -> ``["hr", "staff"]``: a comma-separated option, blanks dropped."""
    return [g.strip() for g in (value or "").split(",") if g.strip()]


def parse_meta(items: list[str] | None) -> dict[str, Any]:
    """``--meta key=value`` items as metadata, values typed as filters type them (``2024`` is a number)."""
    from ragtune.retrieve.filters import json_value, parse_scalar

    meta: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise typer.BadParameter(f"--meta expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        meta[key.strip()] = json_value(parse_scalar(value.strip()))
    return meta


# what a bar calls a task (``ProgressEvent.task``) when its name alone would say too little
PROGRESS_LABELS = {"chunks": "chunks written", "embedded": "chunks embedded", "mining": "questions mined",
                   "questions": "questions written", "rows": "rows written", "training": "training steps"}

# Away from a terminal: the seconds between two log lines of one task. Ten seconds keeps a CI log or
# a nohup.out readable (a line per step for a training whose steps take longer, a few hundred lines
# an hour per task for a fast one); 0 prints every event. Not a setting of ragtune.toml: it changes
# what is printed, never what is computed, like RAGTUNE_DEBUG.
PROGRESS_INTERVAL_VARIABLE = "RAGTUNE_PROGRESS_INTERVAL"
PROGRESS_INTERVAL = 10.0


def progress_interval(value: float | str | None = None) -> float:
    """``value`` (default: ``RAGTUNE_PROGRESS_INTERVAL``, else 10) as seconds, 0 or more."""
    where = "interval"
    if value is None:
        value = os.environ.get(PROGRESS_INTERVAL_VARIABLE, "").strip() or PROGRESS_INTERVAL
        where = PROGRESS_INTERVAL_VARIABLE
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ConfigError(f"invalid {where}={value!r}: expected the seconds between two progress lines of a task, "
                          "0 or more (0: a line per event)")
    return seconds


class EtaColumn(ProgressColumn):
    """A bar's time left, from its task's ``Eta`` (``ragtune.progress``): the log lines use the same,
    and Rich's ``TimeRemainingColumn`` has no estimate for a task reporting less often than every
    15-30 s (see ``Eta``)."""

    def __init__(self, eta_of: Callable[[TaskID], Eta | None], clock: Callable[[], float]) -> None:
        super().__init__()
        self.eta_of = eta_of
        self.clock = clock

    def render(self, task: Task) -> Text:
        eta = self.eta_of(task.id)
        if task.total is None or eta is None:
            return Text("", style="progress.remaining")
        return Text(clock_time(eta.remaining(self.clock())), style="progress.remaining")


@dataclass
class _TaskLog:
    """What the log lines of one task (one run of it: a restart begins a new one) remember."""

    printed_at: float                    # the clock time of its latest line
    printed: ProgressEvent               # the event of its latest line
    total: int | None                    # the latest total
    grew: bool = False                   # its total changed: done reaching it is no end (ingest)
    pending: tuple[ProgressEvent, Eta] | None = None  # the latest event not printed, with its estimate


class ProgressBars:
    """The CLI's one renderer of progress events (a ``ragtune.protocols.Progress``), on stderr.

    On a terminal: one Rich bar per task name, in the order the tasks first report, with n/total,
    the time elapsed and the time left when the event's ``total`` is known, and its ``detail``
    after the task's label. A task whose ``done`` goes back (each trial of a search trains from
    step 0) starts its bar again. The tasks named in ``lines`` also print each event's ``detail``
    as a line above the bars.

    Away from a terminal (a pipe, a file, CI; whenever Rich would not draw live), plain log lines
    instead, since a bar drawn once at the end tells a log nothing while the job runs::

        2026-12-06 08:40:12 training steps: 10/100 (10%), elapsed 0:00:10, eta 0:01:30 | loss 0.4123, 512 tok/s

    A task prints its first event, then at most a line every ``interval`` seconds (default
    ``RAGTUNE_PROGRESS_INTERVAL``, else 10), so a task reporting less often than that prints every
    event; an event reaching a total that never changed (the end of a training) prints at once,
    and the latest event not printed yet prints when the task starts again or the bars close, so
    the last state of every task is in the log (stamped with the time its event came, so it may
    follow a line of another task stamped later). The tasks in ``lines`` print every event. The
    detail follows ``|``, or the metrics as ``name=value`` when there is no detail. ``transient``
    only concerns the bars.

    Both the bars and the lines estimate the time left with ``ragtune.progress.Eta``: the average
    rate of this run of the task, from the end of its first step (the warm-up), not counting where
    a resumed task started from. ``clock`` (monotonic seconds) and ``console`` are for tests;
    ``log_lines`` forces either form.

    Open it with ``with``.
    """

    DETAIL_CHARS = 60

    def __init__(self, *, transient: bool = False, lines: Collection[str] = (), interval: float | None = None,
                 console: Console | None = None, clock: Callable[[], float] = time.monotonic,
                 log_lines: bool | None = None) -> None:
        self.console = err_console if console is None else console
        self.clock = clock
        self.interval = progress_interval(interval)
        # what Rich itself asks before it draws live: anything else (pipe, file, dumb terminal) gets lines
        self.log_lines = not self.console.is_interactive if log_lines is None else log_lines
        self.bars = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), EtaColumn(self._eta_of_bar, clock), console=self.console,
                             transient=transient, get_time=clock)
        self.lines = frozenset(lines)
        self._tasks: dict[str, TaskID] = {}
        self._names: dict[TaskID, str] = {}
        self._etas: dict[str, Eta] = {}  # replaced whole on each event: the bars' refresh thread reads it
        self._logs: dict[str, _TaskLog] = {}
        # the clock is monotonic; a line's time stamp is the wall clock it stands for
        self._wall_offset = time.time() - clock()
        self._lock = threading.Lock()  # ingest reports from its writer thread too

    def __call__(self, event: ProgressEvent) -> None:
        with self._lock:
            now = self.clock()
            before = self._etas.get(event.task)
            restarted = before is not None and event.done < before.done
            eta = Eta.begin(event.done, event.total, now) if before is None else before.observe(
                event.done, event.total, now)
            self._etas[event.task] = eta
            if self.log_lines:
                self._log(event, eta, now, restarted)
            else:
                self._draw(event, restarted)
        if not self.log_lines and event.task in self.lines and event.detail:
            self.bars.console.print(event.detail, highlight=False, markup=False, soft_wrap=True)

    def _draw(self, event: ProgressEvent, restarted: bool) -> None:
        detail = event.detail if len(event.detail) <= self.DETAIL_CHARS else event.detail[:self.DETAIL_CHARS] + "…"
        label = PROGRESS_LABELS.get(event.task, event.task)
        description = escape(f"{label} ({detail})" if detail else label)
        task = self._tasks.get(event.task)
        if task is None:
            task = self._tasks[event.task] = self.bars.add_task(description, total=event.total, completed=event.done)
            self._names[task] = event.task
        elif restarted:
            self.bars.reset(task, total=event.total, completed=event.done, description=description)
        else:
            self.bars.update(task, total=event.total, completed=event.done, description=description)

    def _eta_of_bar(self, task: TaskID) -> Eta | None:
        name = self._names.get(task)
        return None if name is None else self._etas.get(name)

    def _log(self, event: ProgressEvent, eta: Eta, now: float, restarted: bool) -> None:
        state = self._logs.get(event.task)
        if state is None or restarted:
            if state is not None:
                self._flush(state)
            self._print(event, eta, now)
            self._logs[event.task] = _TaskLog(printed_at=now, printed=event, total=event.total)
            return
        if event.total != state.total:
            state.grew = state.grew or state.total is not None
            state.total = event.total
        if event == state.printed:  # a repeat (``done`` is absolute, repeats are allowed): no news
            state.pending = None
            return
        if (event.task in self.lines or (eta.finished and not state.grew)
                or now - state.printed_at >= self.interval):
            self._print(event, eta, now)
            state.printed_at, state.printed, state.pending = now, event, None
        else:
            state.pending = (event, eta)

    def _flush(self, state: _TaskLog) -> None:
        if state.pending is not None:
            event, eta = state.pending
            self._print(event, eta, eta.updated)
            state.printed_at, state.printed, state.pending = eta.updated, event, None

    def _print(self, event: ProgressEvent, eta: Eta, at: float) -> None:
        stamp = datetime.fromtimestamp(self._wall_offset + at).strftime("%Y-%m-%d %H:%M:%S")
        self.console.print(f"{stamp} {progress_line(event, eta)}", markup=False, highlight=False,
                           soft_wrap=True)

    def __enter__(self) -> ProgressBars:
        if not self.log_lines:
            self.bars.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.log_lines:
            with self._lock:  # the last state of every task, even of one that failed half-way
                for state in self._logs.values():
                    self._flush(state)
        else:
            self.bars.stop()


def progress_line(event: ProgressEvent, eta: Eta) -> str:
    """One event as a log line without its time stamp: ``label: done/total (pct%), elapsed H:MM:SS,
    eta H:MM:SS | detail``; no percent or eta without a total (or with a total of 0, which a stream
    announces before it has counted anything), the metrics when there is no detail."""
    label = PROGRESS_LABELS.get(event.task, event.task)
    count = str(event.done) if event.total is None else f"{event.done}/{event.total}"
    if event.total:
        count += f" ({100 * event.done // event.total}%)"
    parts = [f"{label}: {count}", f"elapsed {clock_time(eta.elapsed())}"]
    if event.total:
        parts.append(f"eta {clock_time(eta.remaining())}")
    news = event.detail or " ".join(f"{name}={value:g}" for name, value in event.metrics.items())
    return ", ".join(parts) + (f" | {news}" if news else "")


def print_report(report: IngestReport, verb: str = "ingested") -> None:
    """An ingest or sync report: one table whose counts add up to its total (every document or
    record counted once), then the failures and the warnings on stderr, grouped by kind (the
    error's code, the warning's origin) with a count and the first few sources of each, so 100
    broken files read as a handful of lines. ``--report FILE`` has every one of them."""
    files = f"{report.files} file(s), " if report.files else ""
    table = Table(title=f"{verb}: {files}{report.total} document(s) in {report.seconds:.1f}s")
    columns = ("added", "updated", "unchanged", "removed", "failed", "total", "chunks", "embedded")
    for col in columns:
        table.add_column(col, justify="right")
    table.add_row(*(str(v) for v in (report.added, report.updated, report.unchanged, report.removed,
                                       len(report.failed), report.total, report.chunks, report.embedded)))
    console.print(table)
    if report.acl_changed:
        console.print(f"ACL changed on {report.acl_changed} stored document(s), as asked (--change-acl)")
    if report.linked:
        console.print(f"{report.linked} near-duplicate(s) of documents already indexed stored linked to them, "
                      "not indexed twice ([ingest] near_duplicates)")
    _print_groups("failed", [(f.error, f.source, f.reason) for f in report.failed])
    _print_groups("warning", [(w.origin, w.source, w.message) for w in report.warnings])


REPORT_EXAMPLES = 3  # sources shown per group of failures or warnings; --report FILE lists all


def _print_groups(label: str, items: list[tuple[str, str, str]]) -> None:
    """``items`` (kind, source, message) on stderr: a line per kind with its count, then its first
    sources with their messages. Messages quote ACLs like [hr]: never markup."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for kind, source, message in items:
        groups.setdefault(kind, []).append((source, message))
    for kind, members in sorted(groups.items(), key=lambda group: -len(group[1])):
        err_console.print(f"[red]{label}[/] {escape(kind)}: {len(members)}", highlight=False, soft_wrap=True)
        for source, message in members[:REPORT_EXAMPLES]:
            err_console.print(f"  {escape(source)}: {escape(message)}", highlight=False, soft_wrap=True)
        if len(members) > REPORT_EXAMPLES:
            err_console.print(f"  … and {len(members) - REPORT_EXAMPLES} more", highlight=False, soft_wrap=True)


def num(value: float | None) -> str:
    """A metric in a table: four decimals, ``-`` when there is none."""
    return "-" if value is None else f"{value:.4f}"


def confusion_tables(confusion: Mapping[str, Mapping[str, Mapping[str, int]]], title: str) -> list[Table]:
    """One table per field of ``field -> reference label -> predicted label -> count``: a column for
    every label either side uses (so a class never predicted shows as a column of dots), the right
    answers in green."""
    tables = []
    for name, rows in confusion.items():
        labels = sorted(set(rows) | {p for counts in rows.values() for p in counts})
        table = Table(title=f"{escape(title)}: {escape(name)}")
        table.add_column("reference \\ predicted")
        for label in labels:
            table.add_column(escape(label), justify="right")
        table.add_column("right", justify="right")
        for gold, counts in rows.items():
            cells = [(f"[green]{counts[p]}[/]" if p == gold else str(counts[p])) if p in counts else "."
                     for p in labels]
            table.add_row(escape(gold), *cells, f"{counts.get(gold, 0)}/{sum(counts.values())}")
        tables.append(table)
    return tables
