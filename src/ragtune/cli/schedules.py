"""``ragtune schedules add|list|rm``: scheduled syncs of a folder or a remote source, which the job
worker of ``ragtune serve`` runs (each run is an ingest job, listed by ``GET /ingest-jobs``)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from ragtune.cli.common import AsJson, CollectionOpt, DataDir, console, engine, parse_meta, run_command
from ragtune.cli.documents import AclOpt, ChangeAclOpt, MetaOpt, PublicOpt, _acl_option

app = typer.Typer()  # schedules add|list|rm


@app.command("add")
def schedules_add(
    source: Annotated[str, typer.Argument(metavar="SOURCE", help="A folder, or a remote source: s3://bucket/prefix.")],
    every: Annotated[int, typer.Option("--every", min=1, help="Seconds from the end of one run to the next.")],
    collection: CollectionOpt = None,
    meta: MetaOpt = None,
    acl: AclOpt = None,
    public: PublicOpt = False,
    change_acl: ChangeAclOpt = False,
    data_dir: DataDir = None,
) -> None:
    """Sync SOURCE into a collection every --every seconds while `ragtune serve` runs (first run: at once)."""
    def body() -> None:
        metadata = parse_meta(meta) if meta else None
        groups = _acl_option(acl, public)
        with engine(data_dir) as rt:
            made = rt.add_schedule(source, every_s=every, collection=collection, metadata=metadata, acl=groups,
                                   change_acl=change_acl)
        console.print(f"schedule {made.id}: sync {made.source} into {made.collection!r} every {made.interval_s} s",
                      highlight=False, markup=False, soft_wrap=True)

    run_command(body)


@app.command("list")
def schedules_list(as_json: AsJson = False, data_dir: DataDir = None) -> None:
    """List scheduled syncs with their next and last run."""
    def body() -> None:
        with engine(data_dir) as rt:
            found = rt.schedules()
        if as_json:
            console.print_json(json.dumps([s.public() for s in found]))
            return
        table = Table()
        for col in ("id", "source", "collection", "every (s)", "next run", "last job", "last status"):
            table.add_column(col)
        for s in found:
            table.add_row(str(s.id), s.source, s.collection, str(s.interval_s), s.next_run_at or "running",
                          str(s.last_job_id or ""), s.last_status or "")
        console.print(table)

    run_command(body)


@app.command("rm")
def schedules_rm(schedule_id: Annotated[int, typer.Argument(metavar="ID", help="The schedule to delete.")],
                 data_dir: DataDir = None) -> None:
    """Delete a scheduled sync: no more runs (a run already going finishes)."""
    def body() -> None:
        with engine(data_dir) as rt:
            rt.delete_schedule(schedule_id)
        console.print(f"removed schedule {schedule_id}")

    run_command(body)
