"""Does a reranker that ragtune trains itself beat hybrid search? nDCG@10 of hybrid against
hybrid + cross-encoder rerank on questions never used for training, and the latency it adds.

    RAGTUNE_CACHE_DIR=~/.cache/ragtune python benchmarks/rerank_quality.py --datasets squad hotpotqa

The questions of each dataset are split in two halves by a hash of the question id
(``ragtune.finetune.rerankers.mining.hash_split``): triples (question, positive paragraph, hard negative
from the hybrid top hits) are mined from the first half only, a cross-encoder initialised from
MiniLM is trained on a bounded number of them, and both systems are scored on a bounded sample of
the second half. The corpora must be indexed first (benchmarks/populate.py). Per-query rerank
latency is the time of ``CrossEncoderReranker.rerank`` over the ``--top-n`` hybrid candidates,
after a few untimed warm-up queries. Results are merged into benchmarks/results/rerank_quality.json
under ``--label`` (default: the dataset name), so variants and datasets can run separately.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from typing import Any

import numpy as np
from common import RESULTS, bench_engine, machine, write_result
from rich.console import Console
from rich.table import Table

from ragtune.evaluate.datasets import load_dataset
from ragtune.evaluate.metrics import doc_run_from_chunks, retrieval_metrics
from ragtune.finetune.rerankers.mining import HASH_SPLIT, hash_split, triples_from_dataset
from ragtune.finetune.rerankers.training import train_reranker, validation_chooser
from ragtune.models import Principal, ProgressEvent
from ragtune.retrieve.rerank import CrossEncoderReranker, reranker_store

console = Console()
K = 10
OUT = "rerank_quality"


def _ordered(ids: list[str], salt: str) -> list[str]:
    """A fixed pseudo-random order (so a bounded sample is not the first N questions of the file)."""
    return sorted(ids, key=lambda i: hashlib.sha256(f"{salt}\x00{i}".encode()).hexdigest())


def _doc_run(hits: list[Any]) -> dict[str, float]:
    # by rank, not score: only the order matters
    return doc_run_from_chunks({"q": [(h.uri, -float(rank)) for rank, h in enumerate(hits)]}, k=K)["q"]


def bench_dataset(name: str, args: argparse.Namespace) -> dict[str, Any]:
    rt = bench_engine(args.embedder)
    collection = f"eval-{name}-{rt.embedder.name}"
    ds = load_dataset(name, rt.settings.resolved_cache_dir / "packages")
    info = rt.collection(collection)
    assert info.n_chunks == len(ds.corpus), f"{collection} has {info.n_chunks} chunks; run populate.py first"
    train_ids, held_ids = hash_split(ds.queries)
    assert not set(train_ids) & set(held_ids)
    per_query = args.negatives * max(1, round(np.mean([len(ds.qrels[q]) for q in train_ids])))
    ordered_train = _ordered(train_ids, "train")
    picked = ordered_train[: math.ceil(args.train_triples / per_query)]
    validation = ordered_train[len(picked): len(picked) + args.validation]  # never trained on

    t0 = time.perf_counter()
    triples = triples_from_dataset(rt, ds, collection, picked, negatives_per_query=args.negatives)
    triples = triples[: args.train_triples]
    mine_seconds = time.perf_counter() - t0
    console.print(f"{name}: {len(triples)} triples from {len({t.query for t in triples})} train questions "
                  f"in {mine_seconds:.0f}s; training ({args.epochs} epoch(s))")

    last = [0.0]

    def progress(event: ProgressEvent) -> None:
        if time.perf_counter() - last[0] > 60 or event.done == event.total:
            last[0] = time.perf_counter()
            console.print(f"  step {event.done}/{event.total} ({event.detail})")

    artifact = train_reranker(
        triples, reranker_store(rt.settings.data_dir, collection), epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.lr, seed=0, max_length=args.max_length, progress=progress,
        choose=validation_chooser(rt, collection, ds.positives(validation), top_n=args.top_n),
        source={"dataset": name, "questions": len(picked), "validation_questions": len(validation)},
        split=f"{HASH_SPLIT}; a bounded sample of the 'train' half trained on, the next questions of it held out "
              "to choose the fusion weight",
    )
    metrics = artifact.manifest["metrics"]
    console.print(f"{name}: fusion weight {artifact.thresholds['fusion_weight']} chosen on validation "
                  f"{metrics.get('validation', {}).get('ndcg@10')}")
    console.print(f"{name}: trained v{artifact.version} in {metrics['train_seconds']:.0f}s")

    held = _ordered(held_ids, "eval")[: args.eval_queries]
    texts = [ds.queries[q] for q in held]
    vectors = rt.embedder.embed_batch(texts)
    reranker = CrossEncoderReranker(artifact.path, top_n=args.top_n, batch_size=args.top_n)
    principal = Principal.system()
    candidates = max(K, args.top_n)
    for i in range(min(5, len(held))):  # untimed warm-up: model load, first batches
        res = rt.search(texts[i], collection=collection, top_k=candidates, mode="hybrid", principal=principal,
                        query_vector=vectors[i])
        reranker.rerank(texts[i], res.hits)
    hybrid_run: dict[str, dict[str, float]] = {}
    rerank_run: dict[str, dict[str, float]] = {}
    search_ms: list[float] = []
    rerank_ms: list[float] = []
    for i, qid in enumerate(held):
        res = rt.search(texts[i], collection=collection, top_k=candidates, mode="hybrid", principal=principal,
                        query_vector=vectors[i])
        search_ms.append(res.timings_ms["search"])
        started = time.perf_counter()
        reranked = reranker.rerank(texts[i], res.hits)
        rerank_ms.append((time.perf_counter() - started) * 1000)
        hybrid_run[qid] = _doc_run(res.hits)
        rerank_run[qid] = _doc_run(reranked)
        if (i + 1) % 100 == 0:
            console.print(f"  evaluated {i + 1}/{len(held)}")
    qrels = {q: ds.qrels[q] for q in held}
    hybrid = retrieval_metrics(qrels, hybrid_run)
    rerank = retrieval_metrics(qrels, rerank_run)
    rt.close()
    return {
        "dataset": name, "collection": collection, "corpus": len(ds.corpus),
        "questions": {"train_half": len(train_ids), "held_out_half": len(held_ids), "evaluated": len(held)},
        "training": {"triples": len(triples), "questions": len({t.query for t in triples}),
                     "negatives_per_question": args.negatives, "mine_seconds": round(mine_seconds, 1),
                     "artifact": str(artifact.path), "manifest": artifact.manifest},
        "top_n": args.top_n,
        "rows": {"hybrid": {**hybrid, "p50_ms": float(np.percentile(search_ms, 50)),
                            "p95_ms": float(np.percentile(search_ms, 95))},
                 "hybrid + rerank": {**rerank, "added_p50_ms": float(np.percentile(rerank_ms, 50)),
                                     "added_p95_ms": float(np.percentile(rerank_ms, 95))}},
        "delta_ndcg@10": rerank["nDCG@10"] - hybrid["nDCG@10"],
        "machine": machine(),
    }


def show(label: str, result: dict[str, Any]) -> None:
    tr = result["training"]
    table = Table(title=f"{label}: {result['questions']['evaluated']} held-out questions; trained on "
                        f"{tr['triples']} triples in {tr['manifest']['metrics']['train_seconds']:.0f}s; "
                        f"top_n {result['top_n']}")
    cols = ["nDCG@10", "R@5", "R@10", "RR@10"]
    table.add_column("system")
    for c in cols:
        table.add_column(c, justify="right")
    table.add_column("latency p50 / p95 ms", justify="right")
    for system, row in result["rows"].items():
        lat = (f"+{row['added_p50_ms']:.0f} / +{row['added_p95_ms']:.0f}" if "added_p50_ms" in row
               else f"{row['p50_ms']:.1f} / {row['p95_ms']:.1f}")
        table.add_row(system, *(f"{row[c]:.4f}" for c in cols), lat)
    console.print(table)
    console.print(f"delta nDCG@10: {result['delta_ndcg@10']:+.4f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", nargs="+", default=["squad", "hotpotqa"])
    parser.add_argument("--train-triples", type=int, default=1500)
    parser.add_argument("--negatives", type=int, default=3, help="hard negatives per question")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4, help="questions per step")
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--validation", type=int, default=100, help="train-half questions held out to pick "
                                                                     "the fusion weight")
    parser.add_argument("--eval-queries", type=int, default=500)
    parser.add_argument("--top-n", type=int, default=20)
    parser.add_argument("--embedder", default="minilm", help="the collection's embedder (populate.py --embedder)")
    parser.add_argument("--label", default=None, help="key in the results file (default: the dataset name)")
    args = parser.parse_args()
    path = RESULTS / f"{OUT}.json"
    merged: dict[str, Any] = json.loads(path.read_text())["results"] if path.exists() else {}
    for ds_name in args.datasets:
        label = args.label or ds_name
        if len(args.datasets) > 1 and args.label:
            label = f"{ds_name} {args.label}"
        result = bench_dataset(ds_name, args)
        result["settings"] = {k: v for k, v in vars(args).items() if k not in ("datasets", "label")}
        show(label, result)
        merged[label] = result
        path = write_result(OUT, {"note": "written by benchmarks/rerank_quality.py; one entry per dataset/variant",
                                  "results": merged})
        console.print(f"wrote {path}")
