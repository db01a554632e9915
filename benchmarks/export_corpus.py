"""Export one benchmark corpus, exactly as ragtune stores it, for the peer benchmarks.

    python benchmarks/export_corpus.py squad [hotpotqa]

Runs in ragtune's own venv. For each dataset it reads the collection
``eval-<dataset>-<embedder>`` of the benchmark project (benchmarks/populate.py builds it) and writes
``benchmarks/cache/export/<dataset>.npz`` with

* ``ids``, ``texts``, ``vectors``: every stored chunk's document id (the dataset's doc id, i.e. the
  hit's ``uri``), its exact stored text (``chunks.body``: ragtune indexes that text for BM25 and
  embedded it) and its stored float32 vector;
* ``query_ids``, ``query_texts``, ``query_vectors``: the dataset's (answerable) queries in dataset
  order, embedded once here with ragtune's embedder (``embed_batch``);

and ``<dataset>.qrels.json`` (``qrels[qid][doc_id] = relevance``) plus ``<dataset>.meta.json``.

A peer system that loads this file therefore sees the same texts, the same document vectors and
the same query vectors as ragtune: any quality difference comes from retrieval, not embedding.
The script refuses a collection that is still being indexed (fewer chunks than documents).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
from common import CACHE, bench_engine
from retrieval_quality import corpus_vectors

from ragtune.evaluate.datasets import load_dataset

EXPORT = CACHE / "export"


def chunk_texts(rt: Any, collection: str) -> list[str]:
    """Stored chunk bodies in the same order as ``corpus_vectors`` (chunk id)."""
    info = rt.collection(collection)
    with rt.db.connection() as conn:
        rows = conn.execute("SELECT c.body FROM chunks c WHERE c.collection_id = %s ORDER BY c.id",
                            (info.id,)).fetchall()
    return [r["body"] for r in rows]


def export(rt: Any, name: str) -> dict[str, Any]:
    collection = f"eval-{name}-{rt.embedder.name}"
    ds = load_dataset(name, rt.settings.resolved_cache_dir / "packages")
    info = rt.collection(collection)
    if info.n_chunks != len(ds.corpus):
        raise SystemExit(f"{collection}: {info.n_chunks} of {len(ds.corpus)} chunks stored; still indexing?")
    t0 = time.perf_counter()
    ids, vectors = corpus_vectors(rt, collection)
    texts = chunk_texts(rt, collection)
    if len(texts) != len(ids) or len(set(ids)) != len(ids) or set(ids) != set(ds.corpus):
        raise SystemExit(f"{collection}: stored chunks do not map one-to-one onto the dataset's documents")
    read_s = time.perf_counter() - t0

    qids = list(ds.queries)
    qtexts = [ds.queries[q] for q in qids]
    t0 = time.perf_counter()
    qvectors = np.asarray(rt.embedder.embed_batch(qtexts), dtype=np.float32)
    embed_s = time.perf_counter() - t0

    EXPORT.mkdir(parents=True, exist_ok=True)
    # compressed: numpy stores strings fixed-width (UTF-32, padded to the longest text)
    np.savez_compressed(EXPORT / f"{name}.npz", ids=np.array(ids), texts=np.array(texts),
                        vectors=vectors.astype(np.float32), query_ids=np.array(qids),
                        query_texts=np.array(qtexts), query_vectors=qvectors)
    (EXPORT / f"{name}.qrels.json").write_text(json.dumps(ds.qrels), encoding="utf-8")
    meta = {"dataset": name, "collection": collection, "embedder": rt.embedder.name, "documents": len(ids),
            "queries": len(qids), "dimension": int(vectors.shape[1]),
            "doc_norm_range": [float(np.linalg.norm(vectors, axis=1).min()),
                               float(np.linalg.norm(vectors, axis=1).max())],
            "query_norm_range": [float(np.linalg.norm(qvectors, axis=1).min()),
                                 float(np.linalg.norm(qvectors, axis=1).max())],
            "read_seconds": round(read_s, 1), "query_embed_seconds": round(embed_s, 1)}
    (EXPORT / f"{name}.meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("datasets", nargs="+", choices=["squad", "hotpotqa"])
    args = parser.parse_args()
    with bench_engine() as engine:
        for ds_name in args.datasets:
            print(json.dumps(export(engine, ds_name)), flush=True)
