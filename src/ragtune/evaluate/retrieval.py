"""``ragtune eval retrieval``: index a dataset as a collection and score every search mode on it.

Each dataset document is ingested as one document and one chunk, since the corpus documents are
the judged units (uri = its id; text = title and body, the way the bm25s reference indexes it).
Queries are embedded in batches once, then each mode is run through the normal search path (so
the numbers include the ACL SQL and trace writing).

Progress (``protocols.Progress``): the ingest events of indexing ("documents" with the corpus size
as total, "chunks", "embedded"; see ``ingest.pipeline``), then "queries": the searches run so far
of every mode's (``total`` = modes × queries; ``detail`` the mode).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ragtune.models import LoadedDocument, Principal
from ragtune.observe.tracing import numbers, run_span, set_attributes
from ragtune.progress import emit
from ragtune.protocols import Progress


def eval_collection(dataset: str, embedder: str, suffix: str = "") -> str:
    """The collection an evaluation indexes into: a valid collection name for any dataset name
    (``beir:PATH`` holds a colon and slashes)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"eval-{dataset}-{embedder}{suffix}")[:200]


def dataset_documents(dataset: Any) -> list[LoadedDocument]:
    docs = []
    for doc in dataset.corpus.values():
        text = f"{doc.title}\n{doc.text}" if doc.title else doc.text
        docs.append(LoadedDocument(uri=doc.id, text=text, title=doc.title or None,
                                   metadata={"dataset": dataset.name}))
    return docs


def index_dataset(rt: Any, dataset: Any, collection: str | None = None, progress: Progress | None = None
                  ) -> tuple[str, Any]:
    """Ingest a dataset's corpus as a collection (one document = one chunk); stored embeddings and
    unchanged documents make a rerun nearly free. Returns the collection name and the report."""
    name = collection or eval_collection(dataset.name, rt.embedder.name)
    # every judged document indexed, near-duplicates too: the qrels name documents by ID
    report = rt.ingest_documents(dataset_documents(dataset), collection=name, whole_documents=True,
                                 near_duplicates=False, progress=progress)
    return name, report


def _search_modes(rt: Any, dataset: Any, name: str, modes: Sequence[str], top_k: int, measures: Sequence[str],
                  principal: Principal, progress: Progress | None,
                  search_options: dict[str, Any] | None) -> dict[str, Any]:
    """Each mode's metrics and latency over every query of ``dataset``."""
    from ragtune.evaluate.metrics import retrieval_metrics

    qids = list(dataset.queries)
    texts = [dataset.queries[q] for q in qids]
    vectors = rt.embedder.embed_batch(texts) if any(m != "bm25" for m in modes) else None
    results: dict[str, Any] = {}
    total = len(modes) * len(qids)
    for m, mode in enumerate(modes):
        with run_span(rt.tracing, "evaluate", {"ragtune.evaluation.mode": mode, "ragtune.collection": name}) as span:
            run: dict[str, dict[str, float]] = {}
            latencies = []
            emit(progress, "queries", m * len(qids), total, detail=mode)
            for i, qid in enumerate(qids):
                res = rt.search(texts[i], collection=name, top_k=max(top_k, 10) * 2, mode=mode,
                                principal=principal,
                                query_vector=None if vectors is None else vectors[i], **(search_options or {}))
                latencies.append(res.timings_ms.get("search", 0.0))
                scores: dict[str, float] = {}
                for h in res.hits:
                    if h.uri not in scores:  # hits are ranked: the first is the document's best chunk
                        scores[h.uri] = h.score
                    if len(scores) >= top_k:
                        break
                run[qid] = scores
                emit(progress, "queries", m * len(qids) + i + 1, total, detail=mode)
            metrics = retrieval_metrics(dataset.qrels, run, measures=measures)
            metrics["p50_ms"] = float(np.percentile(latencies, 50))
            metrics["p95_ms"] = float(np.percentile(latencies, 95))
            set_attributes(span, numbers("ragtune.evaluation.", metrics))
            results[mode] = metrics
    return results


def evaluate_retrieval(rt: Any, spec: str, *, modes: Sequence[str] = ("bm25", "dense", "hybrid"),
                       limit: int | None = None, subset_corpus: bool = False, collection: str | None = None,
                       progress: Progress | None = None, top_k: int = 10, search_options: dict[str, Any] | None = None,
                       measures: Sequence[str] | None = None) -> dict[str, Any]:
    """Every mode's ``measures`` (ir_measures names; default ``metrics.DEFAULT_MEASURES``) and
    latency. Each query's run holds ``top_k`` documents, or as many as the deepest cutoff needs."""
    from ragtune.evaluate.datasets import load_dataset
    from ragtune.evaluate.metrics import DEFAULT_MEASURES, measure_depth
    from ragtune.retrieve.searcher import MAX_TOP_K

    measures = tuple(measures or DEFAULT_MEASURES)
    top_k = min(MAX_TOP_K // 2, max(top_k, measure_depth(measures) or top_k))

    dataset = load_dataset(spec, rt.settings.resolved_cache_dir / "packages", limit_queries=limit,
                           subset_corpus=subset_corpus)
    name = collection or eval_collection(dataset.name, rt.embedder.name,
                                         f"-sub{limit}" if subset_corpus and limit else "")
    principal = Principal.system()
    # one trace: an ``evaluation`` span, the indexing's ingest and an ``evaluate`` span per mode, its searches below
    with run_span(rt.tracing, "evaluation", {"ragtune.evaluation.type": "retrieval", "ragtune.dataset": dataset.name,
                                             "ragtune.evaluation.queries": len(dataset.queries),
                                             "ragtune.retrieval.top_k": top_k},
                  f"retrieval on {dataset.name}: {len(dataset.queries)} queries, {', '.join(modes)}") as evaluation:
        name, report = index_dataset(rt, dataset, name, progress)
        set_attributes(evaluation, {"ragtune.collection": name, "gen_ai.data_source.id": name})
        results = _search_modes(rt, dataset, name, modes, top_k, measures, principal, progress, search_options)
    measures = [m for m in next(iter(results.values())) if not m.endswith("_ms")] if results else []
    return {"dataset": dataset.name, "queries": len(dataset.queries), "corpus": len(dataset.corpus),
            "collection": name, "ingest": {"added": report.added, "unchanged": report.unchanged,
                                           "embedded": report.embedded, "seconds": round(report.seconds, 2)},
            "measures": measures, "modes": results}
