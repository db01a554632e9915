"""What int8 query vectors cost on a collection embedded in fp32 (issue 16: the CLI's fast query path).

    python benchmarks/query_int8.py [--datasets squad hotpotqa] [--limit N]

The fp32 corpora of benchmarks/populate.py are searched twice per mode, once with the queries embedded
by the fp32 model (sentence-transformers, as the collection was) and once by its int8 ONNX build
(``OnnxInt8Embedder``, what ``[retrieval] query_embedder = "int8"`` uses). Reports nDCG@10 of both,
their difference, and how close the two query vectors are (cosine). Writes
benchmarks/results/query_int8.json.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from common import populated, write_result
from retrieval_quality import our_run
from rich.console import Console
from rich.table import Table

from ragtune.evaluate.metrics import retrieval_metrics
from ragtune.ingest.embedders import OnnxInt8Embedder, packaged_model_path

console = Console()
MODES = ("dense", "hybrid")


def measure(name: str, limit: int | None) -> dict[str, Any]:
    rt, collection, ds, qids, texts = populated(name, limit, "minilm")
    int8 = OnnxInt8Embedder(packaged_model_path(), cache_dir=rt.settings.resolved_cache_dir)
    vectors: dict[str, np.ndarray] = {}
    for label, embedder in (("fp32", rt.embedder), ("int8", int8)):
        started = time.perf_counter()
        vectors[label] = embedder.embed_batch(texts)
        console.print(f"{name}: {len(texts)} queries embedded in {label} in {time.perf_counter() - started:.0f} s")
    cosine = (vectors["fp32"] * vectors["int8"]).sum(axis=1)
    rows: dict[str, Any] = {}
    for mode in MODES:
        for label, matrix in vectors.items():
            run, _ = our_run(rt, collection, qids, texts, matrix, mode)
            rows[f"{mode} {label} queries"] = retrieval_metrics(ds.qrels, run)
        rows[f"{mode} int8 - fp32"] = {
            metric: rows[f"{mode} int8 queries"][metric] - rows[f"{mode} fp32 queries"][metric]
            for metric in rows[f"{mode} fp32 queries"]
        }
    built_by = rt.collection(collection).embedder
    rt.close()
    return {"dataset": name, "queries": len(qids), "corpus": len(ds.corpus), "collection_embedder": built_by,
            "query_cosine_fp32_int8": {"mean": float(cosine.mean()), "min": float(cosine.min())}, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["squad", "hotpotqa"])
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    results = []
    for name in args.datasets:
        result = measure(name, args.limit)
        results.append(result)
        table = Table(title=f"{name}: {result['queries']} queries, {result['corpus']} documents, fp32 corpus; "
                            f"query cosine fp32/int8 mean {result['query_cosine_fp32_int8']['mean']:.4f}")
        for col in ("run", "nDCG@10", "R@10", "RR@10"):
            table.add_column(col)
        for run, row in result["rows"].items():
            shown = "{:+.4f}" if " - " in run else "{:.4f}"
            table.add_row(run, *(shown.format(row[m]) for m in ("nDCG@10", "R@10", "RR@10")))
        console.print(table)
    path = write_result("query_int8", {"limit": args.limit, "results": results})
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
