"""Retrieval quality and search latency: ragtune (PostgreSQL + pgvector) against bm25s, an exact
numpy dot product and fusion variants computed from them, on SQuAD 2.0 dev and HotpotQA dev.

    python benchmarks/retrieval_quality.py [--datasets squad hotpotqa] [--limit N]

The corpora must be indexed first (benchmarks/populate.py; cached, reruns embed nothing). Query
vectors are embedded once per run in a batch and passed to every system, so latencies exclude
query embedding for all of them. Writes benchmarks/results/retrieval_quality.json.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from baselines import Bm25sBaseline, NumpyDenseBaseline
from common import populated, write_result
from rich.console import Console
from rich.table import Table

from ragtune.evaluate.metrics import retrieval_metrics
from ragtune.models import Principal
from ragtune.retrieve import fusion

console = Console()
K = 10
CANDIDATES = 100


def corpus_vectors(rt: Any, collection: str) -> tuple[list[str], np.ndarray]:
    """The stored document vectors, so the numpy baseline sees exactly the same embeddings."""
    info = rt.collection(collection)
    with rt.db.connection() as conn:
        rows = conn.execute(
            "SELECT d.uri, c.embedding FROM chunks c JOIN documents d ON d.id = c.document_id"
            " WHERE c.collection_id = %s ORDER BY c.id", (info.id,)
        ).fetchall()
    ids = [r["uri"] for r in rows]
    matrix = np.stack([np.asarray(r["embedding"].to_numpy() if hasattr(r["embedding"], "to_numpy")
                                  else r["embedding"], dtype=np.float32) for r in rows])
    return ids, matrix


def fused_baseline(dense_run: dict, bm25_run: dict, how: str) -> dict:
    """Fusion of the two reference top-100 lists the way the issue's anchors were measured
    (a document missing from one list counts 0 there)."""
    out = {}
    for qid in dense_run:
        ids = sorted(set(dense_run[qid]) | set(bm25_run.get(qid, {})))
        index = {doc: n for n, doc in enumerate(ids)}
        dense = {index[k]: v for k, v in dense_run[qid].items()}
        bm25 = {index[k]: v for k, v in bm25_run.get(qid, {}).items()}
        if how == "rrf":
            scores = fusion.rrf({"d": sorted(dense, key=dense.get, reverse=True),  # type: ignore[arg-type]
                                 "b": sorted(bm25, key=bm25.get, reverse=True)}, 60)  # type: ignore[arg-type]
        else:
            scores = fusion.convex({"d": dense, "b": bm25}, {"d": 0.5, "b": 0.5})
        top = sorted(scores.items(), key=lambda kv: -kv[1])[:K]
        out[qid] = {ids[i]: s for i, s in top}
    return out


def our_run(rt: Any, collection: str, qids: list[str], texts: list[str], vectors: np.ndarray, mode: str,
            **options: Any) -> tuple[dict, list[float]]:
    run: dict[str, dict[str, float]] = {}
    latencies = []
    principal = Principal.system()
    for i in range(min(50, len(qids))):  # untimed warm-up, as for the baselines
        rt.search(texts[i], collection=collection, top_k=K, mode=mode, principal=principal,
                  query_vector=vectors[i], **options)
    for i, qid in enumerate(qids):
        res = rt.search(texts[i], collection=collection, top_k=K, mode=mode, principal=principal,
                        query_vector=vectors[i], **options)
        latencies.append(res.timings_ms["search"])
        run[qid] = {h.uri: h.score for h in res.hits}
    return run, latencies


def pct(values: list[float]) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(values, 50)), "p95_ms": float(np.percentile(values, 95))}


def bench_dataset(name: str, limit: int | None, variants: list[str], embedder: str = "minilm") -> dict[str, Any]:
    rt, collection, ds, qids, texts = populated(name, limit, embedder)
    t0 = time.perf_counter()
    vectors = rt.embedder.embed_batch(texts)
    console.print(f"{name}: embedded {len(texts)} queries in {time.perf_counter() - t0:.0f}s")
    rows: dict[str, dict[str, Any]] = {}

    # Baselines, on the same text (title + text) and the same stored vectors.
    bm25s = Bm25sBaseline(ds.corpus)
    bm25s_run = bm25s.search(ds.queries, k=CANDIDATES)
    rows["bm25s (reference)"] = {**retrieval_metrics(ds.qrels, {q: dict(list(r.items())[:K])
                                                               for q, r in bm25s_run.items()}),
                                 **bm25s.latency(texts[:2000], K).as_dict()}
    ids, matrix = corpus_vectors(rt, collection)
    numpy_dense = NumpyDenseBaseline(ids, matrix)
    dense_run = numpy_dense.search(qids, vectors, k=CANDIDATES)
    rows["numpy exact dense (reference)"] = {
        **retrieval_metrics(ds.qrels, {q: dict(list(r.items())[:K]) for q, r in dense_run.items()}),
        **numpy_dense.latency(list(vectors[:2000]), K).as_dict(),
    }
    for how in ("rrf", "convex"):
        fused = fused_baseline(dense_run, bm25s_run, how)
        rows[f"reference {how} of top-100 lists"] = retrieval_metrics(ds.qrels, fused)

    for variant in variants:
        mode, _, opt = variant.partition(":")
        options: dict[str, Any] = {}
        for part in filter(None, opt.split(",")):
            if part == "rrf":
                options["fusion"] = "rrf"
            elif part in ("minmax", "zscore"):
                options["normalization"] = part
            elif part.startswith("w="):
                options["dense_weight"] = float(part[2:])
            elif part.startswith("ef="):
                options["hybrid_ef_search" if mode == "hybrid" else "ef_search"] = int(part[3:])
        run, lat = our_run(rt, collection, qids, texts, vectors, mode, **options)
        rows[f"ragtune {variant}"] = {**retrieval_metrics(ds.qrels, run), **pct(lat)}
        console.print(f"{name} ragtune {variant}: nDCG@10 {rows[f'ragtune {variant}']['nDCG@10']:.4f}")
    rt.close()
    return {"dataset": name, "embedder": rt.embedder.name, "queries": len(qids), "corpus": len(ds.corpus),
            "rows": rows}


def show(result: dict[str, Any]) -> None:
    table = Table(title=f"{result['dataset']}: {result['queries']} queries, {result['corpus']} documents")
    cols = ["nDCG@10", "R@5", "R@10", "RR@10", "p50_ms", "p95_ms"]
    table.add_column("system")
    for c in cols:
        table.add_column(c, justify="right")
    for system, row in result["rows"].items():
        table.add_row(system, *(f"{row[c]:.4f}" if c in row and not c.endswith("_ms") else
                                (f"{row[c]:.2f}" if c in row else "") for c in cols))
    console.print(table)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", nargs="+", default=["squad", "hotpotqa"])
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument(
        "--variants", nargs="+",
        default=["bm25", "dense", "hybrid", "hybrid:minmax", "hybrid:rrf", "hybrid:w=0.4", "hybrid:w=0.6"],
    )
    parser.add_argument("--out", default="retrieval_quality_run")
    parser.add_argument("--embedder", default="minilm", help="minilm | minilm-int8 (its own collections)")
    args = parser.parse_args()
    results = []
    for ds_name in args.datasets:
        res = bench_dataset(ds_name, args.limit, args.variants, args.embedder)
        show(res)
        results.append(res)
    path = write_result(args.out, {"k": K, "candidates": CANDIDATES, "limit": args.limit, "results": results})
    console.print(f"wrote {path}")
