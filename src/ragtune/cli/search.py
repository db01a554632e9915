"""``ragtune search``: dense, BM25 or hybrid search, with filters, access control and reranking."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from ragtune.cli.common import (
    AsGroupOpt,
    AsJson,
    AsUserOpt,
    CollectionOpt,
    DataDir,
    console,
    engine,
    reader,
    run_command,
)
from ragtune.models import Principal, SearchResult

app = typer.Typer()  # search (top level)


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    collection: CollectionOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="How many hits.")] = 10,
    mode: Annotated[str | None, typer.Option(help="dense | bm25 | hybrid")] = None,
    fusion: Annotated[str | None, typer.Option(help="Hybrid fusion: convex | rrf")] = None,
    filter_: Annotated[
        list[str] | None, typer.Option("--filter", "-f", help="key=v, key=a|b, key>=n, key<date")
    ] = None,
    as_user: AsUserOpt = None,
    as_group: AsGroupOpt = None,
    as_admin: Annotated[bool, typer.Option(
        "--as-admin", help="Read as the local operator, an admin (the default without --as-user/--as-group).")] = False,
    as_json: AsJson = False,
    rerank: Annotated[bool | None, typer.Option(
        "--rerank/--no-rerank", help="Rerank max(top-k, 20) candidates with the configured reranker, or the "
                                     "collection's latest trained one (default: the reranker setting).")] = None,
    rerank_version: Annotated[int | None, typer.Option(help="Version of the collection's trained reranker "
                                                             "(implies --rerank).")] = None,
    data_dir: DataDir = None,
) -> None:
    """Search a collection: dense, BM25 or hybrid, with filters and access control."""
    def body() -> None:
        principal = Principal.system() if as_admin else reader(as_user, as_group)
        reranker: str | bool | None = f"v{rerank_version}" if rerank_version is not None else rerank
        with engine(data_dir) as rt:
            result = rt.search(query, collection=collection, top_k=top_k, mode=mode, filters=filter_ or [],
                               principal=principal, fusion=fusion, reranker=reranker)
        if as_json:
            print(json.dumps(result_json(result), ensure_ascii=False, indent=2))
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

    run_command(body)


def result_json(result: SearchResult) -> dict[str, Any]:
    """The ``--json`` output of a search: every hit with its scores, offsets, text and metadata."""
    return {
        "query": result.query, "mode": result.mode, "trace_id": result.trace_id, "timings_ms": result.timings_ms,
        "hits": [
            {"rank": h.rank, "score": h.score, "scores": h.scores_by_source, "uri": h.uri,
             "document_id": h.document_id, "chunk_id": h.chunk.id, "start": h.chunk.start, "end": h.chunk.end,
             "heading": h.chunk.heading, "text": h.chunk.text, "metadata": h.metadata}
            for h in result.hits
        ],
    }
