"""HNSW recall against exact search, and its latency, for several ef_search values.

    python benchmarks/hnsw_recall.py [--embedder minilm] [--queries 300] [--ef 40 100 200 400]

Measures the index itself, independent of relevance judgments: for HotpotQA questions, the share
of the exact top-10 (a sequential scan over the same stored vectors, in the same snapshot) that
the HNSW search returns. Works on a partly populated collection too (its size is reported).
Writes benchmarks/results/hnsw_recall.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import bench_engine, write_result
from rich.console import Console
from rich.table import Table

from ragtune.evaluate.datasets import load_dataset
from ragtune.models import Principal
from ragtune.retrieve import postgres as pg
from ragtune.retrieve.filters import compile_conditions

console = Console()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--embedder", default="minilm")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--ef", type=int, nargs="+", default=[40, 100, 200, 400])
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    with bench_engine(args.embedder) as rt:
        collection = f"eval-hotpotqa-{rt.embedder.name}"
        ds = load_dataset("hotpotqa", rt.settings.resolved_cache_dir / "packages", limit_queries=args.queries)
        vectors = rt.embedder.embed_batch(list(ds.queries.values()))
        info = rt.repo.collection(collection)
        cond = compile_conditions([], Principal.system())
        rows = []
        with rt.db.snapshot() as conn:
            chunks = conn.execute("SELECT count(*) AS n FROM chunks WHERE collection_id = %s", (info.id,)).fetchone()
            exact_lat, exact = [], []
            for v in vectors:
                t = time.perf_counter()
                exact.append({i for i, _ in pg.dense_search(conn, info, v, args.k, cond, ef_search=100, exact=True)})
                exact_lat.append(time.perf_counter() - t)
            for ef in args.ef:
                recall, lat = [], []
                for v, truth in zip(vectors, exact, strict=True):
                    t = time.perf_counter()
                    got = {i for i, _ in pg.dense_search(conn, info, v, args.k, cond, ef_search=ef, exact=False)}
                    lat.append(time.perf_counter() - t)
                    recall.append(len(got & truth) / max(len(truth), 1))
                rows.append({"ef_search": ef, f"recall@{args.k}": statistics.mean(recall),
                             "p50_ms": statistics.median(lat) * 1000})
    table = Table(title=f"HNSW vs exact, {collection}: {chunks['n'] if chunks else 0} chunks, "
                        f"{len(vectors)} queries (exact scan p50 {statistics.median(exact_lat) * 1000:.1f} ms)")
    for col in ("ef_search", f"recall@{args.k}", "p50 ms"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["ef_search"]), f"{r[f'recall@{args.k}']:.4f}", f"{r['p50_ms']:.2f}")
    console.print(table)
    path = write_result("hnsw_recall", {"collection": collection, "chunks": chunks["n"] if chunks else 0,
                                        "queries": len(vectors), "k": args.k,
                                        "exact_p50_ms": statistics.median(exact_lat) * 1000, "rows": rows})
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
