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

import os
import threading
from collections.abc import Callable, Collection, Mapping
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
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ragtune.errors import RagtuneError
from ragtune.models import Principal
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
    try:
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


class ProgressBars:
    """The CLI's one renderer of progress events (a ``ragtune.protocols.Progress``): one Rich bar per
    task name on stderr, in the order the tasks first report, with n/total, the time elapsed and the
    time left when the event's ``total`` is known, and its ``detail`` after the task's label. A task
    whose ``done`` goes back (each trial of a search trains from step 0) starts its bar again. The
    tasks named in ``lines`` also print each event's ``detail`` as a line above the bars.

    Open it with ``with``. Away from a terminal rich draws nothing while it runs and prints the
    final bars once (unless ``transient``), which is what a log wants: no ``disable`` needed.
    """

    DETAIL_CHARS = 60

    def __init__(self, *, transient: bool = False, lines: Collection[str] = ()) -> None:
        self.bars = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=transient)
        self.lines = frozenset(lines)
        self._tasks: dict[str, TaskID] = {}
        self._done: dict[str, int] = {}
        self._lock = threading.Lock()  # ingest reports from its writer thread too

    def __call__(self, event: ProgressEvent) -> None:
        detail = event.detail if len(event.detail) <= self.DETAIL_CHARS else event.detail[:self.DETAIL_CHARS] + "…"
        label = PROGRESS_LABELS.get(event.task, event.task)
        description = escape(f"{label} ({detail})" if detail else label)
        with self._lock:
            task = self._tasks.get(event.task)
            if task is None:
                self._tasks[event.task] = self.bars.add_task(description, total=event.total, completed=event.done)
            elif event.done < self._done[event.task]:
                self.bars.reset(task, total=event.total, completed=event.done, description=description)
            else:
                self.bars.update(task, total=event.total, completed=event.done, description=description)
            self._done[event.task] = event.done
        if event.task in self.lines and event.detail:
            self.bars.console.print(event.detail, highlight=False, markup=False, soft_wrap=True)

    def __enter__(self) -> ProgressBars:
        self.bars.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.bars.stop()


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
