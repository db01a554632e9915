"""Search latency on the full HotpotQA corpus (66,635 paragraphs) against bm25s + numpy in the
same run, without needing an hour of embedding: the corpus is indexed with *random* unit vectors
(the lexical index, the BM25 work and the HNSW graph size are real; HNSW over random vectors is
a harder, slower case than over real embeddings, so dense and hybrid times are pessimistic).

    python benchmarks/search_latency.py [--queries 1000] [--data-dir DIR]

Query vectors are random too and passed in, so no time goes to embedding, for any system.
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
from common import write_result
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
    args = parser.parse_args()
    from ragtune.ingest.embedders import make_embedder

    settings = Settings(data_dir=args.data_dir)
    embedder = RandomEmbedder(make_embedder("minilm", cache_dir=settings.resolved_cache_dir).tokenizer)
    rt = Ragtune(settings, embedder=embedder)
    ds = load_dataset("hotpotqa", settings.resolved_cache_dir / "packages", limit_queries=args.queries)
    started = time.perf_counter()
    report = rt.ingest_documents(dataset_documents(ds), collection=COLLECTION, whole_documents=True)
    console.print(f"indexed: {report} ({time.perf_counter() - started:.0f}s)")
    import psycopg

    with psycopg.connect(rt.db.url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE postings")  # what autovacuum does after a bulk load
    texts = list(ds.queries.values())
    vectors = embedder.embed_batch(texts)
    rows: dict[str, dict[str, Any]] = {}
    rows["bm25s (reference)"] = Bm25sBaseline(ds.corpus).latency(texts, 10).as_dict()
    ids, matrix = corpus_vectors(rt, COLLECTION)
    rows["numpy exact dense (reference)"] = NumpyDenseBaseline(ids, matrix).latency(list(vectors), 10).as_dict()
    principal = Principal.system()
    for mode in ("bm25", "dense", "hybrid"):
        for i in range(50):  # untimed warm-up
            rt.search(texts[i], collection=COLLECTION, mode=mode, principal=principal, query_vector=vectors[i])
        seconds = []
        for text, vec in zip(texts, vectors, strict=True):
            res = rt.search(text, collection=COLLECTION, mode=mode, principal=principal, query_vector=vec)
            seconds.append(res.timings_ms["search"] / 1000)
        rows[f"ragtune {mode}"] = Latency.from_seconds(seconds).as_dict()
    rt.close()
    target = 3 * (rows["bm25s (reference)"]["p50_ms"] + rows["numpy exact dense (reference)"]["p50_ms"])
    table = Table(title=f"search latency, HotpotQA full corpus ({len(ds.corpus)} paragraphs), {len(texts)} queries")
    for col in ("system", "p50 ms", "p95 ms", "mean ms"):
        table.add_column(col, justify="right")
    for name, row in rows.items():
        table.add_row(name, f"{row['p50_ms']:.2f}", f"{row['p95_ms']:.2f}", f"{row['mean_ms']:.2f}")
    console.print(table)
    hybrid = rows["ragtune hybrid"]["p50_ms"]
    console.print(f"target: hybrid p50 {hybrid:.1f} ms <= 3 x (bm25s + numpy) = {target:.1f} ms: "
                  f"{'met' if hybrid <= target else 'MISSED'}")
    path = write_result("search_latency", {"corpus": len(ds.corpus), "queries": len(texts), "rows": rows,
                                           "target_ms": target, "hybrid_p50_ms": hybrid, "met": hybrid <= target})
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
