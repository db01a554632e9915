"""``ragtune ingest``, ``ragtune sync`` and ``ragtune docs list|show|rm``: documents in, listed, out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from ragtune.cli.common import (
    AsGroupOpt,
    AsJson,
    AsUserOpt,
    CollectionOpt,
    DataDir,
    ProgressBars,
    YesOpt,
    console,
    engine,
    parse_groups,
    parse_meta,
    print_report,
    reader,
    run_command,
)

if TYPE_CHECKING:
    from ragtune.engine import Ragtune
    from ragtune.ingest.loaders import LoaderOptions
    from ragtune.models import IngestReport

app = typer.Typer()  # ingest, sync (top level)
docs_app = typer.Typer()  # docs list|show|rm

AclOpt = Annotated[str | None, typer.Option(
    "--acl", help="Comma-separated groups allowed to read. Not given: stored documents keep their ACL and new "
                  "ones take their folder's.")]
PublicOpt = Annotated[bool, typer.Option("--public", help="Readable by everyone (an empty ACL).")]
ChangeAclOpt = Annotated[bool, typer.Option(
    "--change-acl", help="Allow --acl/--public to change the ACL of documents already stored.")]
MetaOpt = Annotated[list[str] | None, typer.Option(
    "--meta", help="key=value metadata (repeatable). Not given: stored documents keep theirs.")]
IncludeOpt = Annotated[list[str] | None, typer.Option("--include", help="Glob of files to take.")]
ExcludeOpt = Annotated[list[str] | None, typer.Option("--exclude", help="Glob of files to skip.")]
TextFieldOpt = Annotated[str, typer.Option(help="JSON/JSONL: field holding the text.")]
MetadataFieldsOpt = Annotated[str | None, typer.Option(help="JSON/JSONL: comma-separated metadata fields.")]
IdFieldOpt = Annotated[str | None, typer.Option(help="JSON/JSONL: field holding a record id.")]
AsFormatOpt = Annotated[str | None, typer.Option(
    "--as", help="Read every file as this format (text, markdown, html, pdf, docx, json, jsonl, gzip) instead of "
                 "choosing by suffix and content.")]
ReportOpt = Annotated[Path | None, typer.Option(
    "--report", help="Also write the report as JSON to this file: the counts and every failure (source, code, "
                     "reason) and warning.")]


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders (recursive).")],
    collection: CollectionOpt = None,
    meta: MetaOpt = None,
    acl: AclOpt = None,
    public: PublicOpt = False,
    change_acl: ChangeAclOpt = False,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    text_field: TextFieldOpt = "text",
    metadata_fields: MetadataFieldsOpt = None,
    id_field: IdFieldOpt = None,
    as_format: AsFormatOpt = None,
    report: ReportOpt = None,
    data_dir: DataDir = None,
) -> None:
    """Ingest files, folders and JSON Lines records into a collection."""
    _ingest_command(paths, collection, meta, _acl_option(acl, public), change_acl, include, exclude, text_field,
                    metadata_fields, id_field, as_format, data_dir, sync=False, report_file=report)


@app.command()
def sync(
    folder: Annotated[str, typer.Argument(
        metavar="SOURCE", help="Folder to mirror, or a remote source: s3://bucket/prefix (the s3 extra; endpoint and "
                               "credentials from AWS_* variables).")],
    collection: CollectionOpt = None,
    meta: MetaOpt = None,
    acl: AclOpt = None,
    public: PublicOpt = False,
    change_acl: ChangeAclOpt = False,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    text_field: TextFieldOpt = "text",
    metadata_fields: MetadataFieldsOpt = None,
    id_field: IdFieldOpt = None,
    as_format: AsFormatOpt = None,
    report: ReportOpt = None,
    watch: Annotated[bool, typer.Option("--watch", help="After the sync, keep following the folder: files written "
                                                         "are ingested, files deleted removed, until Ctrl-C.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Ingest a folder (or an s3:// source) and remove documents whose files are gone. Documents keep
    their ACL and metadata unless you give new ones. A remote source is synced by ETag: unchanged
    objects are not downloaded."""
    if "://" in folder:
        if watch or include or exclude:
            raise typer.BadParameter("--watch, --include and --exclude are for folders; a remote source is synced "
                                     "whole (narrow it with its prefix; on a timer: ragtune schedules add)")
        _ingest_command([], collection, meta, _acl_option(acl, public), change_acl, None, None, text_field,
                        metadata_fields, id_field, as_format, data_dir, sync=True, report_file=report, source=folder)
        return
    if watch:
        _watch_command(Path(folder), collection, meta, _acl_option(acl, public), change_acl, include, exclude,
                       text_field, metadata_fields, id_field, as_format, data_dir)
        return
    _ingest_command([Path(folder)], collection, meta, _acl_option(acl, public), change_acl, include, exclude,
                    text_field, metadata_fields, id_field, as_format, data_dir, sync=True, report_file=report)


def _loader_options(rt: Ragtune, text_field: str, metadata_fields: str | None, id_field: str | None,
                    as_format: str | None) -> LoaderOptions:
    """The loader options of ``ingest`` and ``sync``: the project's limits and the record fields asked for."""
    from ragtune.ingest.loaders import LoaderOptions

    return LoaderOptions.from_settings(
        rt.settings, text_field=text_field,
        metadata_fields=tuple(parse_groups(metadata_fields)) if metadata_fields else None, id_field=id_field,
        as_format=as_format)


def _watch_command(folder: Path, collection: str | None, meta: list[str] | None, acl: list[str] | None,
                   change_acl: bool, include: list[str] | None, exclude: list[str] | None, text_field: str,
                   metadata_fields: str | None, id_field: str | None, as_format: str | None,
                   data_dir: Path | None) -> None:
    def body() -> None:
        import signal
        import threading

        metadata = parse_meta(meta) if meta else None
        stop = threading.Event()
        # SIGTERM (`kill`, `docker stop`, systemd) stops the watch as Ctrl-C does: the current sync
        # finishes, nothing is left half-written. (A job started in the background of a script's
        # shell ignores SIGINT, and so does every process it starts: SIGTERM is how such a watch stops.)
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
        with engine(data_dir) as rt:
            options = _loader_options(rt, text_field, metadata_fields, id_field, as_format)

            def on_sync(report: IngestReport) -> None:
                print_report(report, "synced")
                console.print(f"[dim]watching {folder} (Ctrl-C stops)[/]")

            try:
                rt.watch(folder, stop=stop, collection=collection, metadata=metadata, acl=acl, change_acl=change_acl,
                         include=include or (), exclude=exclude or (), loader_options=options, on_sync=on_sync)
            except KeyboardInterrupt:
                stop.set()
            finally:
                signal.signal(signal.SIGTERM, previous)
            console.print(f"stopped watching {folder}")

    run_command(body)


def _acl_option(acl: str | None, public: bool) -> list[str] | None:
    if public and acl is not None:
        raise typer.BadParameter("give either --acl or --public")
    if public:
        return []
    if acl is not None and not parse_groups(acl):
        raise typer.BadParameter("--acl needs at least one group; use --public for a public document")
    return parse_groups(acl) if acl is not None else None


def _ingest_command(paths: list[Path], collection: str | None, meta: list[str] | None, acl: list[str] | None,
                    change_acl: bool, include: list[str] | None, exclude: list[str] | None, text_field: str,
                    metadata_fields: str | None, id_field: str | None, as_format: str | None, data_dir: Path | None,
                    *, sync: bool, report_file: Path | None = None, source: str | None = None) -> None:
    def body() -> None:
        from ragtune.ingest.loaders.registry import format_key

        metadata = parse_meta(meta) if meta else None  # a bad --meta is refused before the database starts
        if as_format is not None:
            format_key(as_format)  # so is an unknown --as
        if report_file is not None and not report_file.expanduser().resolve().parent.is_dir():
            raise typer.BadParameter(f"--report: no folder {str(report_file.parent)!r} to write {report_file.name} in")
        with engine(data_dir) as rt:
            options = _loader_options(rt, text_field, metadata_fields, id_field, as_format)
            with ProgressBars() as bars:
                kwargs: dict[str, Any] = dict(collection=collection, metadata=metadata, acl=acl,
                                              change_acl=change_acl, include=include or (), exclude=exclude or (),
                                              loader_options=options, progress=bars)
                if source is not None:  # a remote source: no files to pick among
                    del kwargs["include"], kwargs["exclude"]
                    report = rt.sync_source(source, **kwargs)
                else:
                    report = rt.sync(paths[0], **kwargs) if sync else rt.ingest(paths, **kwargs)
        print_report(report, "synced" if sync else "ingested")
        if report_file is not None:
            report_file.write_text(json.dumps(report.to_dict(), ensure_ascii=False, indent=2) + "\n",
                                   encoding="utf-8")
        if report.failed and report.added + report.updated + report.unchanged == 0:
            raise typer.Exit(1)

    run_command(body)


@docs_app.command("list")
def docs_list(
    collection: CollectionOpt = None,
    prefix: Annotated[str | None, typer.Option(
        help="Only URIs starting with this: an absolute path, a URL, or a path relative to the working folder.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Documents per page.")] = 100,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many documents first (the next page).")] = 0,
    as_json: AsJson = False,
    as_user: AsUserOpt = None,
    as_group: AsGroupOpt = None,
    data_dir: DataDir = None,
) -> None:
    """List documents of a collection (those the principal may read), a page at a time."""
    def body() -> None:
        principal = reader(as_user, as_group)
        with engine(data_dir) as rt:
            docs = rt.documents(collection=collection, prefix=prefix, limit=limit, offset=offset, principal=principal)
            # a short first page is everything: count only when there may be more
            total = (len(docs) if offset == 0 and len(docs) < limit
                     else rt.count_documents(collection=collection, prefix=prefix, principal=principal))
        if as_json:
            print(json.dumps([d.__dict__ for d in docs], default=str, indent=2))
            return
        table = Table(title=f"{total} document(s)")
        for col in ("uri", "version", "chunks", "acl", "updated"):
            table.add_column(col, overflow="fold")
        for d in docs:
            table.add_row(d.uri, str(d.version), str(d.chunk_count), ",".join(d.acl) or "public", d.updated_at or "")
        console.print(table)
        if len(docs) < total:
            shown = f"{offset + 1}-{offset + len(docs)}" if docs else "none"
            more = f"; next page: --offset {offset + len(docs)}" if offset + len(docs) < total else ""
            console.print(f"showing {shown} of {total} (--limit/--offset to page){more}", highlight=False)

    run_command(body)


@docs_app.command("show")
def docs_show(uri: Annotated[str, typer.Argument(help="The document's URI, or a relative file path.")],
              collection: CollectionOpt = None, as_json: AsJson = False, as_user: AsUserOpt = None,
              as_group: AsGroupOpt = None, data_dir: DataDir = None) -> None:
    """Show one document: metadata, ACL and its chunks."""
    def body() -> None:
        with engine(data_dir) as rt:
            doc, _text, chunks = rt.document(uri, collection=collection, principal=reader(as_user, as_group))
        if as_json:
            print(json.dumps({**doc.__dict__, "chunks": [c.__dict__ for c in chunks]}, default=str, indent=2))
            return
        console.print(f"[bold]{doc.uri}[/] v{doc.version} hash {doc.content_hash[:12]} acl {list(doc.acl) or 'public'}")
        console.print(doc.metadata)
        for c in chunks:
            console.print(f"[dim]#{c.ordinal} {c.start}-{c.end} {c.tokens} tok {c.heading}[/]\n{c.text[:300]}")

    run_command(body)


@docs_app.command("rm")
def docs_rm(uris: Annotated[list[str], typer.Argument(help="URIs as docs list shows them, or relative file paths.")],
            collection: CollectionOpt = None, yes: YesOpt = False, as_user: AsUserOpt = None,
            as_group: AsGroupOpt = None, data_dir: DataDir = None) -> None:
    """Remove documents by URI, after asking (unless --yes); only those the principal may read."""
    def body() -> None:
        if not yes:
            where = f"collection {collection!r}" if collection else "the default collection"
            typer.confirm(f"Remove {len(uris)} document(s) from {where}?", abort=True)
        with engine(data_dir) as rt:
            n = rt.delete(uris, collection=collection, principal=reader(as_user, as_group))
        console.print(f"removed {n} document(s)")
        if n == 0:
            raise typer.Exit(1)

    run_command(body)
