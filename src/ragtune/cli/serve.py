"""``ragtune serve`` (the HTTP API) and ``ragtune keys create|list|revoke`` (its API keys)."""

from __future__ import annotations

import json
import signal
from typing import Annotated, Any

import typer
from rich.table import Table

from ragtune.cli.common import AsJson, DataDir, console, engine, err_console, load_settings, open_engine, run_command
from ragtune.errors import ConfigError
from ragtune.extras import needs

app = typer.Typer()  # serve (top level)
keys_app = typer.Typer()  # keys create|list|revoke


@app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (default: server.host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: server.port, 8000; 0 picks a free one).")] = None,
    auth: Annotated[bool | None, typer.Option(
        "--auth/--no-auth", help="Require API keys (default: on unless listening on a loopback address).")] = None,
    insecure_public: Annotated[bool, typer.Option(
        "--insecure-public", help="Allow --no-auth on an address other than loopback: anyone who can reach it "
                                  "reads and changes everything.")] = False,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    data_dir: DataDir = None,
) -> None:
    """Serve the REST and OpenAI-compatible API (FastAPI + uvicorn)."""
    def body() -> None:
        with needs("server", "ragtune serve", error=ConfigError):  # FastAPI and uvicorn are an optional extra
            from ragtune.server.app import bind, create_app, make_server
        from ragtune.server.auth import KeyStore, auth_required, is_loopback

        project = load_settings(data_dir, server={"host": host, "port": port})
        listen = project.server.host
        required = auth_required(project, listen, auth)
        if not required and not is_loopback(listen) and not insecure_public:
            raise ConfigError(f"refusing to serve {listen} without API keys: anyone who can reach it would read and "
                              "change everything. Create keys (`ragtune keys create`) and drop --no-auth / "
                              "server.auth=off, or pass --insecure-public if that is really what you want")
        with open_engine(project) as rt:
            # Connect, migrate and load the embedder before listening: the first request is not slow.
            rt.warm_up()
            active = KeyStore(rt.db, audit=rt.settings.governance.audit).active_count()
            if required and active == 0:
                err_console.print("[yellow]warning[/]: auth is on and there are no API keys; every request will be "
                                  "refused until you run `ragtune keys create --name NAME --scopes read`")
            if not required and not is_loopback(listen):
                err_console.print(f"[bold red]warning[/]: auth is off on {listen}: anyone who can reach it reads "
                                  "and changes everything")
            api = create_app(rt, project, auth=required)
            sock = bind(listen, project.server.port)
            shown = f"[{listen}]" if ":" in listen else listen
            docs = "/docs" if project.server.api_docs else "/openapi.json"
            err_console.print(f"ragtune serving on http://{shown}:{sock.getsockname()[1]} "
                              f"(auth {'on' if required else 'off'}; OpenAPI at {docs})", highlight=False)
            # uvicorn shuts down gracefully on SIGTERM, then restores the handler it found and raises
            # the signal again: with the default one the process would end there, before the engine
            # closes (its queued spans written, its database pool closed). This one ends it through
            # the engine's close.
            previous = signal.signal(signal.SIGTERM, _stopped)
            try:
                make_server(api, project, log_level=log_level).run(sockets=[sock])
            finally:
                signal.signal(signal.SIGTERM, previous)
                sock.close()

    run_command(body)


def _stopped(signum: int, frame: Any) -> None:
    raise SystemExit(0)  # a stop asked for (kill, docker stop, systemd) is a clean exit


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="Who or what the key is for.")],
    groups: Annotated[str, typer.Option(help="Comma-separated groups: the documents' ACLs it may read.")] = "",
    scopes: Annotated[str, typer.Option(
        help="Comma-separated: read, ingest, observe (/metrics), audit (the audit log), admin.")] = "read",
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Make an API key. It is printed once: only a salted hash is kept."""
    from ragtune.server.auth import KeyStore, parse_list

    def body() -> None:
        with engine(data_dir) as rt:
            keys = KeyStore(rt.db, audit=rt.settings.governance.audit)
            made = keys.create(name, groups=parse_list(groups), scopes=parse_list(scopes))
        if as_json:
            print(json.dumps({"key": made.key, **made.info.public()}))
            return
        print(made.key)
        err_console.print(f"key {made.info.key_id} '{made.info.name}': groups {list(made.info.groups) or 'none'}, "
                          f"scopes {list(made.info.scopes)}. It is shown only this once.", highlight=False)

    run_command(body)


@keys_app.command("list")
def keys_list(as_json: AsJson = False, data_dir: DataDir = None) -> None:
    """List API keys (ids, names, groups, scopes; never the secrets)."""
    from ragtune.server.auth import KeyStore

    def body() -> None:
        with engine(data_dir) as rt:
            keys = KeyStore(rt.db, audit=rt.settings.governance.audit).list()
        if as_json:
            print(json.dumps([k.public() for k in keys], indent=2))
            return
        table = Table(title=f"{len(keys)} API key(s)")
        for col in ("id", "name", "groups", "scopes", "created", "last used", "status"):
            table.add_column(col, overflow="fold")
        for k in keys:
            table.add_row(k.key_id, k.name, ",".join(k.groups), ",".join(k.scopes), k.created_at[:19],
                          (k.last_used_at or "")[:19], "active" if k.active else f"revoked {k.revoked_at[:19]}"
                          if k.revoked_at else "")
        console.print(table)

    run_command(body)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (from `keys list`).")],
                data_dir: DataDir = None) -> None:
    """Revoke an API key: every server refuses it from the next request on."""
    from ragtune.server.auth import KeyStore

    def body() -> None:
        with engine(data_dir) as rt:
            changed = KeyStore(rt.db, audit=rt.settings.governance.audit).revoke(key_id)
        console.print(f"revoked {key_id}" if changed else f"{key_id} was already revoked")

    run_command(body)
