"""``ragtune collections``, ``db`` and ``config``: looking after a project (traces: ``cli/traces.py``)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from ragtune.cli.common import (
    DataDir,
    YesOpt,
    console,
    engine,
    load_settings,
    open_engine,
    run_command,
)

collections_app = typer.Typer()  # collections list|rm
db_app = typer.Typer()  # db status|stop
config_app = typer.Typer()  # config show


@collections_app.command("list")
def collections_list(data_dir: DataDir = None) -> None:
    """List collections with their embedder and size."""
    def body() -> None:
        with engine(data_dir) as rt:
            infos = rt.collections()
        table = Table()
        for col in ("name", "embedder", "dim", "documents", "chunks"):
            table.add_column(col)
        for i in infos:
            table.add_row(i.name, i.embedder, str(i.dimension), str(i.documents), str(i.n_chunks))
        console.print(table)

    run_command(body)


@collections_app.command("rm")
def collections_rm(name: Annotated[str, typer.Argument(help="The collection to delete.")], yes: YesOpt = False,
                   data_dir: DataDir = None) -> None:
    """Delete a collection and everything in it, after asking (unless --yes)."""
    def body() -> None:
        with engine(data_dir) as rt:
            info = rt.collection(name)  # a missing one fails here, before the question
            counted = rt.collections(name=info.name)
            size = f"{counted[0].documents} document(s), {counted[0].n_chunks} chunk(s)" if counted else "empty"
            if not yes:
                typer.confirm(f"Delete collection {info.name!r} ({size})?", abort=True)
            rt.drop_collection(info.name)
        console.print(f"removed collection {info.name!r}: {size}", highlight=False, markup=False)

    run_command(body)


@db_app.command("status")
def db_status(data_dir: DataDir = None) -> None:
    """Show where the database is and whether the embedded server runs."""
    def body() -> None:
        from ragtune.store.server import EmbeddedPostgres

        project = load_settings(data_dir)
        if project.database_url:
            console.print(f"external database: {project.public_dict()['database_url']}")
            with open_engine(project) as rt:
                console.print(f"schema version {rt.db.schema_version()}")
            return
        status = EmbeddedPostgres(project.data_dir).status()
        state = f"running (pid {status.pid})" if status.running else "stopped"
        console.print(f"embedded PostgreSQL in {status.data_dir}: {state}")

    run_command(body)


@db_app.command("stop")
def db_stop(data_dir: DataDir = None) -> None:
    """Stop the embedded PostgreSQL server."""
    def body() -> None:
        from ragtune.store.server import EmbeddedPostgres

        stopped = EmbeddedPostgres(load_settings(data_dir).data_dir).stop()
        console.print("stopped" if stopped else "not running")

    run_command(body)


@config_app.command("show")
def config_show(data_dir: DataDir = None) -> None:
    """Print the effective settings (secrets redacted)."""
    run_command(lambda: print(json.dumps(load_settings(data_dir).public_dict(), indent=2)))

