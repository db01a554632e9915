"""What the packed posting blocks cost writers, on the full HotpotQA corpus.

BM25 reads postings packed into blocks of 4,096 chunk ids per term (migration 005). A writer
appends new chunks' postings to their blocks, which on a large collection are already full-size
(up to 48 KB rewritten per append), and re-packs the blocks of removed chunks from `postings`.
This measures that on the real 66,635-paragraph collection: N paragraphs ingested as new documents
(their embeddings come from the store's cache, so the time is storing, not embedding), the two
block statements of those writes timed alone (rolled back), then the documents deleted; the
whole add and delete are the baseline in the same run. The corpus collection is left as it was.
Also: migration 005 itself, packing every posting of the benchmark database (in a transaction
rolled back here).

    python benchmarks/posting_blocks.py --n 512 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from common import bench_engine, write_result
from rich.console import Console
from rich.table import Table

from ragtune.evaluate.datasets import load_dataset
from ragtune.evaluate.retrieval import dataset_documents
from ragtune.models import LoadedDocument
from ragtune.store.database import load_migrations
from ragtune.store.repository import BLOCK_BITS, append_posting_blocks, rebuild_posting_blocks

console = Console()


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rt = bench_engine("minilm-int8")
    corpus = f"eval-hotpotqa-{rt.embedder.name}"
    ds = load_dataset("hotpotqa", rt.settings.resolved_cache_dir / "packages")
    source = dataset_documents(ds)
    rt.ingest_documents(source, collection=corpus, whole_documents=True)  # present and unchanged
    step = len(source) // args.n
    picked = [LoadedDocument(uri=f"posting-blocks-bench/{d.uri}", text=d.text, title=d.title, metadata=d.metadata)
              for d in source[::step][: args.n]]
    uris = [d.uri for d in picked]
    info = rt.repo.collection(corpus)
    times: dict[str, list[float]] = {}
    embedded = 0
    for _ in range(args.repeats):
        report, seconds = timed(rt.ingest_documents, picked, collection=corpus, whole_documents=True)
        embedded += report.embedded
        assert report.added == len(picked), report
        times.setdefault(f"add {len(picked)} documents", []).append(seconds)
        with rt.db.connection() as conn:
            chunks = [r["id"] for r in conn.execute(
                "SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id"
                " WHERE d.collection_id = %s AND d.uri = ANY(%s)", (info.id, uris)).fetchall()]
            keys = [(r["term_id"], r["block"]) for r in conn.execute(
                "SELECT DISTINCT term_id, (chunk_id >> %s)::int AS block FROM postings WHERE chunk_id = ANY(%s)",
                (BLOCK_BITS, chunks)).fetchall()]
            # the writer's two block statements again, timed alone and rolled back
            with conn.transaction(force_rollback=True):
                _, seconds = timed(append_posting_blocks, conn, chunks)
            times.setdefault("  of which: append their postings to blocks", []).append(seconds)
            with conn.transaction(force_rollback=True):
                _, seconds = timed(rebuild_posting_blocks, conn, keys)
            times.setdefault("  re-pack the blocks they touch (what a delete adds)", []).append(seconds)
        _, seconds = timed(rt.delete, uris, collection=corpus)
        times.setdefault(f"delete the {len(picked)} documents", []).append(seconds)
    (migration,) = [m for m in load_migrations() if m.version == 5]
    with rt.db.connection() as conn:
        started = time.perf_counter()
        with conn.transaction(force_rollback=True):  # migration 005 as it ran, on every collection
            conn.execute("DROP TABLE posting_blocks")
            conn.execute(migration.sql)
        repack = time.perf_counter() - started
        sizes = conn.execute(
            "SELECT count(*) AS blocks, sum(length(b.postings)) AS bytes, max(length(b.postings)) AS largest"
            " FROM posting_blocks b JOIN terms t ON t.id = b.term_id WHERE t.collection_id = %s", (info.id,)
        ).fetchone()
        postings = conn.execute(
            "SELECT count(*) AS n FROM postings p JOIN terms t ON t.id = p.term_id WHERE t.collection_id = %s",
            (info.id,)).fetchone()["n"]
        all_postings = conn.execute("SELECT count(*) AS n FROM postings").fetchone()["n"]
    rt.close()
    rows = {name: {"median_s": statistics.median(v), "runs_s": v} for name, v in times.items()}
    table = Table(title=f"posting blocks: write cost, {len(picked)} HotpotQA paragraphs (stored embeddings), "
                        f"median of {args.repeats}")
    table.add_column("operation")
    table.add_column("seconds", justify="right")
    for name, row in rows.items():
        table.add_row(name, f"{row['median_s']:.3f}")
    table.add_row(f"migration 005: pack all {all_postings:,} postings of the database", f"{repack:.2f}")
    console.print(table)
    console.print(f"corpus: {postings:,} postings in {sizes['blocks']:,} blocks, {sizes['bytes'] / 2**20:.1f} MiB, "
                  f"largest block {sizes['largest']:,} bytes; documents embedded during the run: {embedded}")
    path = write_result("posting_blocks", {
        "documents": len(picked), "repeats": args.repeats, "rows": rows, "migration_005_s": repack,
        "database_postings": all_postings,
        "corpus_postings": postings, "corpus_blocks": sizes["blocks"], "corpus_block_bytes": sizes["bytes"],
        "largest_block_bytes": sizes["largest"], "embedded_during_run": embedded})
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
