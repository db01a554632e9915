"""``ragtune audit verify|list|export``: the hash-chained audit log (``govern.audit``).

``verify`` recomputes the chain and names the first broken link; it prints the head as
``SEQ:HASH``, which, written down somewhere else, is an anchor a later ``verify --anchor`` checks
(rows cut from the end of the chain are caught only that way).
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from ragtune.cli.common import AsJson, DataDir, console, engine, run_command
from ragtune.errors import QueryError
from ragtune.govern.audit import ACTIONS, parse_anchor

app = typer.Typer()

Since = Annotated[str | None, typer.Option(help="From this time on (ISO 8601: 2026-12-01 or 2026-12-01T09:00).")]
Until = Annotated[str | None, typer.Option(help="Before this time (ISO 8601).")]


def _when(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise QueryError(f"--{name} {value!r}: not an ISO 8601 time (2026-12-01 or 2026-12-01T09:00)") from None
    return moment if moment.tzinfo else moment.astimezone()  # a bare time is this machine's local time


@app.command("verify")
def audit_verify(
    anchor: Annotated[str | None, typer.Option(
        help="SEQ:HASH of a row seen earlier (a head this command printed): also checks that the chain still "
             "holds that row unchanged, which catches rows cut from its end.")] = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Recompute the audit log's hash chain; exit code 1 and the first broken link if it is broken."""
    def body() -> bool:
        anchored = parse_anchor(anchor) if anchor else None
        with engine(data_dir) as rt, Progress(TextColumn("checking the audit log"), BarColumn(), MofNCompleteColumn(),
                                              console=console, transient=True, disable=as_json) as bar:
            task = bar.add_task("rows", total=None)
            found = rt.audit.verify(anchor=anchored, progress=lambda n: bar.update(task, completed=n))
        if as_json:
            console.print_json(json.dumps(found.to_dict()))
        elif found.ok:
            head = f"{found.head_seq}:{found.head_hash}" if found.head_hash else "none (the log is empty)"
            console.print(f"[green]ok[/]: {found.checked} events, the chain unbroken; head {head}", highlight=False)
        else:
            console.print(f"[bold red]broken[/] at row {found.broken_at}: {found.problem} "
                          f"({found.checked} rows before it are intact)", highlight=False)
        return found.ok

    if not run_command(body):
        raise typer.Exit(1)


@app.command("list")
def audit_list(
    since: Since = None,
    until: Until = None,
    principal: Annotated[str | None, typer.Option(help="Only this principal's events (key:<id> for an API key).")]
    = None,
    action: Annotated[str | None, typer.Option(help=f"Only this action: {ACTIONS}.")] = None,
    collection: Annotated[str | None, typer.Option("--collection", "-c", help="Only this collection's events.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="How many, oldest first.")] = 50,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Audit events in order: when, who, from where, what, and the documents involved."""
    def body() -> None:
        with engine(data_dir) as rt:
            events = rt.audit.events(since=_when(since, "since"), until=_when(until, "until"), principal=principal,
                                     action=action, collection=collection, limit=limit)
        if as_json:
            console.print_json(json.dumps(events, default=str))
            return
        table = Table("seq", "at", "principal", "origin", "action", "collection", "documents")
        for e in events:
            table.add_row(str(e["seq"]), e["at"][:19], e["principal"], e["origin"] or "", e["action"],
                          e["collection"] or "", _documents(e["documents"]))
        console.print(table)

    run_command(body)


def _documents(documents: list[dict[str, Any]]) -> str:
    shown = ", ".join(Path(str(d.get("uri", d.get("id")))).name for d in documents[:3])
    return shown + (f" +{len(documents) - 3}" if len(documents) > 3 else "")


@app.command("export")
def audit_export(
    since: Since = None,
    until: Until = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file (default: stdout).")]
    = None,
    data_dir: DataDir = None,
) -> None:
    """Audit events as JSON Lines, oldest first, hashes included (a copy can be checked on its own)."""
    def body() -> None:
        with engine(data_dir) as rt:
            if output is None:
                rt.audit.export(sys.stdout, since=_when(since, "since"), until=_when(until, "until"))
                return
            partial = output.with_name(output.name + ".partial")  # never a half-written file under the name
            with partial.open("w", encoding="utf-8") as out:
                n = rt.audit.export(out, since=_when(since, "since"), until=_when(until, "until"))
            partial.replace(output)
        console.print(f"wrote {n} events to {output}", highlight=False)

    run_command(body)
