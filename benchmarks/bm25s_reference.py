"""BM25 reference numbers with bm25s on SQuAD 2.0 dev and HotpotQA dev (full pooled corpus).

These are the numbers our own PostgreSQL BM25 is compared against, so the setup is fixed:
bm25s Lucene BM25 (k1=1.5, b=0.75), PyStemmer English, bm25s English stopwords, documents
indexed as ``title + " " + text``. SQuAD is also run on the paragraph text alone, the setup of
the published anchor 0.886 (titles there are article names shared by ~34 paragraphs each).

Usage:  nice .venv/bin/python benchmarks/bm25s_reference.py [--out PATH] [--cache-dir DIR]
Latency is per query, one at a time (tokenise + score + top-10), after 50 untimed queries.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from baselines import Bm25sBaseline

from ragtune.evaluate.datasets import RetrievalDataset, load_dataset
from ragtune.evaluate.metrics import retrieval_metrics

MEASURES = ("nDCG@10", "R@5", "R@10", "MRR@10")
# (dataset, include_title, nDCG@10 we measured before and publish as the anchor)
RUNS = [
    ("squad", True, None),
    ("squad", False, 0.886),
    ("hotpotqa", True, 0.727),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "bm25s_reference.json"
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="package cache (default: ragtune's)")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args(argv)

    results: list[dict[str, Any]] = []
    loaded: dict[str, RetrievalDataset] = {}
    for name, include_title, anchor in RUNS:
        if name not in loaded:
            loaded[name] = load_dataset(name, args.cache_dir)
        ds = loaded[name]
        bm25 = Bm25sBaseline(ds.corpus, include_title=include_title)
        run = bm25.search(ds.queries, args.k)
        metrics = retrieval_metrics(ds.qrels, run, measures=MEASURES)
        latency = bm25.latency(list(ds.queries.values()), args.k)
        results.append(
            {
                "dataset": name,
                "index_text": "title + text" if include_title else "text",
                **ds.stats(),
                "vocabulary": bm25.vocab_size,
                "index_seconds": round(bm25.index_seconds, 3),
                "metrics": {m: round(v, 4) for m, v in metrics.items()},
                "latency_ms": {
                    k: round(v, 3) if isinstance(v, float) else v for k, v in latency.as_dict().items()
                },
                "anchor_ndcg10": anchor,
            }
        )
        print(f"done {name} ({results[-1]['index_text']})", file=sys.stderr)

    header = (
        f"{'dataset':<9} {'index text':<13} {'docs':>6} {'queries':>7} "
        + " ".join(f"{m:>8}" for m in MEASURES)
        + f" {'p50 ms':>7} {'p95 ms':>7} {'anchor':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        shown = f"{r['anchor_ndcg10']:.3f}" if r["anchor_ndcg10"] is not None else "-"
        print(
            f"{r['dataset']:<9} {r['index_text']:<13} {r['documents']:>6} {r['queries']:>7} "
            + " ".join(f"{r['metrics'][m]:>8.4f}" for m in MEASURES)
            + f" {r['latency_ms']['p50_ms']:>7.3f} {r['latency_ms']['p95_ms']:>7.3f} {shown:>7}"
        )

    report = {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "setup": {
            "library": "bm25s",
            "method": "lucene",
            "k1": 1.5,
            "b": 0.75,
            "stemmer": "PyStemmer english",
            "stopwords": "bm25s 'en'",
            "k": args.k,
            "latency": "one query at a time after 50 untimed; tokenise + score + top-k",
        },
        "environment": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            **{pkg: version(pkg) for pkg in ("bm25s", "PyStemmer", "ir_measures", "numpy")},
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
