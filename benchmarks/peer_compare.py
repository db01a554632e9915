"""Side by side: Haystack 2.x in-memory retrieval (benchmarks/peer_haystack.py) against ragtune, on
the same query sample, the same texts and the same vectors.

    .venv/bin/python benchmarks/export_corpus.py squad
    .venv-peers/bin/python benchmarks/peer_haystack.py squad --limit 2000
    .venv/bin/python benchmarks/peer_compare.py squad
    # HotpotQA likewise, with --limit 500 (Haystack's in-memory BM25 takes ~1 s a query at 66k docs)

Runs in ragtune's venv. It reads Haystack's runs and latencies from
``benchmarks/cache/peers/haystack-<dataset>.json``, runs ragtune (bm25, dense and hybrid with the
project's default settings) over exactly the query ids Haystack ran, with the query vectors from
``benchmarks/cache/export/<dataset>.npz`` (the ones Haystack was given), and scores every run with
``ragtune.evaluate.metrics.retrieval_metrics`` on that sample's qrels (MRR@10 is ``RR@10``).

Latency, one query at a time after 20 untimed warm-up queries, query embedding excluded on both
sides. For Haystack: wall-clock ``Pipeline.run``. For ragtune: ``timings_ms["search"]`` (the
retrieval stage inside PostgreSQL, candidate fetch included) and, for an end-to-end comparison
with ``Pipeline.run``, the wall-clock time of the whole ``rt.search`` call (collection lookup,
query analysis and the trace write included). Writes (merging per dataset)
``benchmarks/results/peer_haystack.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np
from common import CACHE, RESULTS, bench_engine, write_result
from rich.console import Console
from rich.table import Table

from ragtune.evaluate.metrics import retrieval_metrics
from ragtune.models import Principal

console = Console(width=150)
EXPORT = CACHE / "export"
PEERS = CACHE / "peers"
K = 10
WARMUP = 20
MEASURES = ("nDCG@10", "R@5", "R@10", "RR@10")


def pct(values: list[float]) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(values, 50)), "p95_ms": float(np.percentile(values, 95))}


def ragtune_run(rt: Any, collection: str, texts: list[str], qids: list[str], vectors: np.ndarray,
                mode: str) -> dict[str, Any]:
    principal = Principal.system()
    for i in range(min(WARMUP, len(qids))):
        rt.search(texts[i], collection=collection, top_k=K, mode=mode, principal=principal, query_vector=vectors[i])
    run: dict[str, dict[str, float]] = {}
    search_ms: list[float] = []
    wall_ms: list[float] = []
    started = time.perf_counter()
    for i, qid in enumerate(qids):
        t0 = time.perf_counter()
        res = rt.search(texts[i], collection=collection, top_k=K, mode=mode, principal=principal,
                        query_vector=vectors[i])
        wall_ms.append((time.perf_counter() - t0) * 1000)
        search_ms.append(res.timings_ms["search"])
        run[qid] = {h.uri: h.score for h in res.hits}
    return {"run": run, "search_ms": search_ms, "wall_ms": wall_ms, "seconds": time.perf_counter() - started}


def compare(name: str) -> dict[str, Any]:
    peer = json.loads((PEERS / f"haystack-{name}.json").read_text(encoding="utf-8"))
    data = np.load(EXPORT / f"{name}.npz")
    all_qids = [str(x) for x in data["query_ids"]]
    qids = peer["query_ids"]
    if qids != all_qids[:len(qids)]:
        raise SystemExit("Haystack's query sample is not a prefix of the exported queries; re-export and rerun")
    texts = [str(x) for x in data["query_texts"][:len(qids)]]
    vectors = data["query_vectors"][:len(qids)]
    qrels_all = json.loads((EXPORT / f"{name}.qrels.json").read_text(encoding="utf-8"))
    qrels = {q: qrels_all[q] for q in qids}

    rows: dict[str, dict[str, Any]] = {}
    for system, out in peer["systems"].items():
        rows[f"haystack {system}"] = {**retrieval_metrics(qrels, out["run"], measures=MEASURES),
                                      **pct(out["latency_ms"]), "wall_p50_ms": pct(out["latency_ms"])["p50_ms"],
                                      "wall_p95_ms": pct(out["latency_ms"])["p95_ms"], "seconds": out["seconds"]}

    rt = bench_engine()
    collection = f"eval-{name}-{rt.embedder.name}"
    settings = {k: getattr(rt.settings.retrieval, k) for k in (
        "fusion", "hybrid_normalization", "hybrid_dense_weight", "rrf_k", "candidates", "bm25_k1", "bm25_b",
        "hnsw_ef_search")}
    load_before = os.getloadavg()
    for mode in ("bm25", "dense", "hybrid"):
        out = ragtune_run(rt, collection, texts, qids, vectors, mode)
        wall = pct(out["wall_ms"])
        rows[f"ragtune {mode}"] = {**retrieval_metrics(qrels, out["run"], measures=MEASURES), **pct(out["search_ms"]),
                                   "wall_p50_ms": wall["p50_ms"], "wall_p95_ms": wall["p95_ms"],
                                   "seconds": out["seconds"]}
        console.print(f"{name} ragtune {mode}: {len(qids)} queries in {out['seconds']:.0f}s")
    rt.close()
    return {"dataset": name, "queries": len(qids), "of_queries": len(all_qids), "corpus": len(data["ids"]),
            "sample": f"first {len(qids)} queries in dataset order", "haystack_config": peer["config"],
            "haystack_machine": peer["machine"], "ragtune_settings": settings,
            "ragtune_load_avg": [load_before, os.getloadavg()], "rows": rows}


def show(result: dict[str, Any]) -> None:
    table = Table(title=f"{result['dataset']}: {result['queries']} of {result['of_queries']} queries, "
                        f"{result['corpus']} documents")
    cols = [("nDCG@10", "nDCG@10"), ("R@5", "R@5"), ("R@10", "R@10"), ("RR@10", "MRR@10"),
            ("p50_ms", "p50 ms"), ("p95_ms", "p95 ms"), ("wall_p50_ms", "wall p50"), ("wall_p95_ms", "wall p95")]
    table.add_column("system")
    for _, label in cols:
        table.add_column(label, justify="right")
    for system, row in result["rows"].items():
        table.add_row(system, *(f"{row[c]:.4f}" if not c.endswith("_ms") else f"{row[c]:.1f}" for c, _ in cols))
    console.print(table)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("datasets", nargs="+", choices=["squad", "hotpotqa"])
    args = parser.parse_args()
    path = RESULTS / "peer_haystack.json"
    previous = json.loads(path.read_text(encoding="utf-8")).get("results", {}) if path.exists() else {}
    for ds_name in args.datasets:
        res = compare(ds_name)
        show(res)
        previous[ds_name] = res
    written = write_result("peer_haystack", {"k": K, "warmup": WARMUP, "results": previous})
    console.print(f"wrote {written}")
