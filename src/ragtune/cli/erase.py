"""``ragtune erase``: documents, or a subject's every mention, with every copy of them
(``govern.erasure``); ``--verify N`` checks an earlier erasure again."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ragtune.cli.common import AsJson, CollectionOpt, DataDir, console, engine, run_command


def erase(
    document: Annotated[list[int] | None, typer.Option("--document", help="A document id (repeatable).")] = None,
    uri: Annotated[str | None, typer.Option("--uri", help="Documents whose URI matches: * any characters, "
                                            "? one.")] = None,
    subject: Annotated[str | None, typer.Option("--subject", help="Every document holding this string (an e-mail "
                                                "address, a name), and every trace, feedback and dataset row that "
                                                "does.")] = None,
    collection: CollectionOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be erased; change nothing.")] = False,
    verify: Annotated[int | None, typer.Option("--verify", help="Check erasure N again (with --subject for a "
                                               "subject's).")] = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Erase documents (by id or URI pattern) or a subject, with every copy: chunks, vectors, index
    entries, cached embeddings, traces, feedback and dataset rows quoting them. Models trained on
    them are held or listed for retraining. Exit code 1 when something is left."""
    def body() -> bool:
        with engine(data_dir) as rt:
            if verify is not None:
                report = rt.verify_erasure(verify, subject=subject)
            else:
                report = rt.erase(document_ids=document or (), uri=uri, subject=subject, collection=collection,
                                  dry_run=dry_run)
        if as_json:
            console.print_json(json.dumps(report.to_dict(), default=str))
            return report.clean
        if report.dry_run:
            console.print(f"would erase {len(report.documents)} document(s):", highlight=False)
        elif verify is None:
            console.print(f"[bold]erasure {report.erasure_id}[/]: {len(report.documents)} document(s)",
                          highlight=False)
        for d in report.documents[:50]:
            console.print(f"  {d['id']}  {escape(d['collection'])}  {escape(d['uri'])}", highlight=False)
        if report.counts:
            console.print("removed: " + ", ".join(f"{k} {v}" for k, v in report.counts.items() if v), highlight=False)
        if report.models:
            table = Table("model", "version", "action", "why")
            for m in report.models:
                table.add_row(f"{m['kind']} {escape(m['name'])}", str(m["version"]), m["action"],
                              escape(json.dumps(m["why"])))
            console.print(table)
        if report.dry_run:
            return True
        if report.remaining:
            console.print("[bold red]left[/]: " + ", ".join(f"{k} ({v})" for k, v in report.remaining.items()),
                          highlight=False)
        else:
            console.print("[green]verified[/]: no table holds what was erased", highlight=False)
        if report.retained:
            console.print("kept on purpose (receipts): " + ", ".join(f"{k} ({v})" for k, v in report.retained.items()),
                          highlight=False)
        return report.clean

    if not run_command(body):
        raise typer.Exit(1)
