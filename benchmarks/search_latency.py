"""Search latency on the full HotpotQA corpus (66,635 paragraphs) against bm25s + numpy in the
same run, without needing an hour of embedding: the corpus is indexed with *random* unit vectors
(the lexical index, the BM25 work and the HNSW graph size are real; HNSW over random vectors is
a harder, slower case than over real embeddings, so dense and hybrid times are pessimistic).

    python benchmarks/search_latency.py [--queries 1000] [--data-dir DIR]
    python benchmarks/search_latency.py --vectors minilm-int8   # real embeddings (populate.py first)

Query vectors are random too and passed in, so no time goes to embedding, for any system.
With ``--vectors minilm-int8`` the benchmark project's HotpotQA collection embedded by the int8
MiniLM backend is searched instead, with that model's query vectors (again passed in): the
realistic case for HNSW, whose graph search over random vectors visits far more nodes.
The target (issue #2): hybrid p50 within 3x of (bm25s p50 + numpy exact p50).
Writes benchmarks/results/search_latency.json. Quality numbers live in retrieval_quality.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
from baselines import Bm25sBaseline, Latency, NumpyDenseBaseline
from common import bench_engine, write_result
from retrieval_quality import corpus_vectors
from rich.console import Console
from rich.table import Table

from ragtune.engine import Ragtune
from ragtune.evaluate.datasets import load_dataset
from ragtune.evaluate.retrieval import dataset_documents
from ragtune.models import Principal
from ragtune.settings import Settings

console = Console()
COLLECTION = "hotpotqa-random-vectors"


class RandomEmbedder:
    """Unit vectors from a seeded generator; the tokenizer of the real model sizes the chunks."""

    name = "random-unit-384"
    dimension = 384

    def __init__(self, tokenizer: Any, seed: int = 0) -> None:
        self.tokenizer = tokenizer
        self.max_seq_length = 256
        self.rng = np.random.default_rng(seed)

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        v = self.rng.standard_normal((len(texts), self.dimension)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".cache" / "ragtune" / "latency-data")
    parser.add_argument("--vectors", choices=["random", "minilm-int8"], default="random")
    args = parser.parse_args()
    from ragtune.ingest.embedders import make_embedder

    if args.vectors == "random":
        settings = Settings(data_dir=args.data_dir)
        embedder: Any = RandomEmbedder(make_embedder("minilm", cache_dir=settings.resolved_cache_dir).tokenizer)
        rt = Ragtune(settings, embedder=embedder)
        collection = COLLECTION
    else:
        rt = bench_engine(args.vectors)
        embedder, settings = rt.embedder, rt.settings
        collection = f"eval-hotpotqa-{embedder.name}"
    ds = load_dataset("hotpotqa", settings.resolved_cache_dir / "packages", limit_queries=args.queries)
    started = time.perf_counter()
    report = rt.ingest_documents(dataset_documents(ds), collection=collection, whole_documents=True)
    console.print(f"indexed: {report} ({time.perf_counter() - started:.0f}s)")
    import psycopg

    with psycopg.connect(rt.db.url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE postings")  # what autovacuum does after a bulk load
        conn.execute("VACUUM ANALYZE chunks")
    texts = list(ds.queries.values())
    vectors = embedder.embed_batch(texts)
    rows: dict[str, dict[str, Any]] = {}
    rows["bm25s (reference)"] = Bm25sBaseline(ds.corpus).latency(texts, 10).as_dict()
    ids, matrix = corpus_vectors(rt, collection)
    rows["numpy exact dense (reference)"] = NumpyDenseBaseline(ids, matrix).latency(list(vectors), 10).as_dict()
    principal = Principal.system()
    for mode in ("bm25", "dense", "hybrid"):
        for i in range(50):  # untimed warm-up
            rt.search(texts[i], collection=collection, mode=mode, principal=principal, query_vector=vectors[i])
        seconds = []
        stages: dict[str, list[float]] = {}
        for text, vec in zip(texts, vectors, strict=True):
            res = rt.search(text, collection=collection, mode=mode, principal=principal, query_vector=vec)
            seconds.append(res.timings_ms["search"] / 1000)
            for stage in ("dense", "bm25", "fuse", "fetch"):
                if stage in res.timings_ms:
                    stages.setdefault(stage, []).append(res.timings_ms[stage])
        rows[f"ragtune {mode}"] = {**Latency.from_seconds(seconds).as_dict(),
                                   "stage_p50_ms": {k: float(np.median(v)) for k, v in stages.items()}}
    buffers = _shared_buffers(rt)
    rt.close()
    target = 3 * (rows["bm25s (reference)"]["p50_ms"] + rows["numpy exact dense (reference)"]["p50_ms"])
    table = Table(title=f"search latency, HotpotQA full corpus ({len(ds.corpus)} paragraphs, {args.vectors} vectors),"
                        f" {len(texts)} queries")
    for col in ("system", "p50 ms", "p95 ms", "mean ms"):
        table.add_column(col, justify="right")
    for name, row in rows.items():
        table.add_row(name, f"{row['p50_ms']:.2f}", f"{row['p95_ms']:.2f}", f"{row['mean_ms']:.2f}")
    console.print(table)
    for name, row in rows.items():
        if "stage_p50_ms" in row:
            console.print(f"{name} stages p50: " + ", ".join(f"{k} {v:.1f} ms" for k, v in row["stage_p50_ms"].items()))
    hybrid = rows["ragtune hybrid"]["p50_ms"]
    console.print(f"target: hybrid p50 {hybrid:.1f} ms <= 3 x (bm25s + numpy) = {target:.1f} ms: "
                  f"{'met' if hybrid <= target else 'MISSED'}")
    name = "search_latency" if args.vectors == "random" else f"search_latency_{args.vectors}"
    path = write_result(name, {"corpus": len(ds.corpus), "queries": len(texts), "vectors": args.vectors,
                               "shared_buffers": buffers, "rows": rows,
                                           "target_ms": target, "hybrid_p50_ms": hybrid, "met": hybrid <= target})
    console.print(f"wrote {path}")


def _shared_buffers(rt: Ragtune) -> str:
    with rt.db.connection() as conn:
        row = conn.execute("SHOW shared_buffers").fetchone()
    return str(row["shared_buffers"]) if row else "?"


if __name__ == "__main__":
    main()
