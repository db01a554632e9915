"""Search latency and quality before and after the foundations redesign (issue 15), side by side in
one run.

    python benchmarks/foundations_overhead.py [--before 452fa9a] [--questions 600] [--rounds 3]

*before* is the code at ``--before`` (the last commit before issue 15), checked out into a git
worktree; *after* is this working tree. Each round runs one process per version, in alternating
order, and each process opens its own project (embedded PostgreSQL in the bench data folder, one per
version, SQuAD 2.0 dev indexed once: 1,204 paragraphs, one chunk each), embeds the questions in one
batch and times ``rt.search`` (hybrid, top 10, the query vector passed in, so the embedder's time is
left out alike) over the same questions, after a warm-up pass. Latency: the median over rounds of
each round's p50, and the ratio after/before. Quality: nDCG@10 of the hybrid run on every question
(both versions, once) with ``ir_measures``. Writes benchmarks/results/foundations_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from common import CACHE, default_bench_data, worktree, write_result
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = Path(os.environ.get("RAGTUNE_CACHE_DIR", CACHE))
COLLECTION = "foundations-squad"

# Run inside each version's process: only API both versions have (Settings.load, ingest_documents,
# search with a query vector).
WORKER = r"""
import json, sys, time
from pathlib import Path
import numpy as np
from ragtune.engine import Ragtune
from ragtune.settings import Settings
from ragtune.evaluate.datasets import load_dataset
from ragtune.evaluate.retrieval import dataset_documents

data_dir, cache_dir, collection, limit, quality = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
import ragtune
with Ragtune(Settings.load(data_dir=Path(data_dir), cache_dir=Path(cache_dir))) as rt:
    ds = load_dataset("squad", Path(cache_dir) / "packages")
    rt.ingest_documents(dataset_documents(ds), collection=collection, whole_documents=True)
    qids = sorted(ds.qrels)
    timed = qids[:limit]
    chosen = qids if quality == "1" else timed
    vectors = rt.embedder.embed_batch([ds.queries[q] for q in chosen])
    vector_of = dict(zip(chosen, vectors))
    for q in timed[:50]:  # warm-up: plans, caches, the pool
        rt.search(ds.queries[q], collection=collection, top_k=10, mode="hybrid", query_vector=vector_of[q])
    times, run = [], {}
    for q in chosen:
        started = time.perf_counter()
        result = rt.search(ds.queries[q], collection=collection, top_k=10, mode="hybrid", query_vector=vector_of[q])
        elapsed = (time.perf_counter() - started) * 1000
        if q in vector_of and len(times) < len(timed):
            times.append(elapsed)
        run[q] = {h.uri: h.score for h in result.hits}
    print(json.dumps({"ragtune": str(Path(ragtune.__file__).parent), "times_ms": times,
                      "run": run if quality == "1" else None}))
"""


def run_version(src: Path, data_dir: Path, limit: int, quality: bool) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    env.pop("RAGTUNE_DATABASE_URL", None)  # each version its own embedded server
    out = subprocess.run([sys.executable, "-c", WORKER, str(data_dir), str(CACHE_DIR), COLLECTION, str(limit),
                          "1" if quality else "0"], env=env, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if Path(result["ragtune"]) != src / "ragtune":
        raise SystemExit(f"the worker imported {result['ragtune']}, not {src / 'ragtune'}")
    return result


def ndcg(run: dict[str, dict[str, float]]) -> float:
    import ir_measures
    from ir_measures import nDCG

    from ragtune.evaluate.datasets import load_dataset

    ds = load_dataset("squad", CACHE_DIR / "packages")
    qrels = [ir_measures.Qrel(q, d, int(r)) for q, docs in ds.qrels.items() for d, r in docs.items()]
    scored = [ir_measures.ScoredDoc(q, d, s) for q, hits in run.items() for d, s in hits.items()]
    return float(ir_measures.calc_aggregate([nDCG @ 10], qrels, scored)[nDCG @ 10])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="452fa9a")
    parser.add_argument("--questions", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    versions = {"before": worktree(args.before) / "src", "after": ROOT / "src"}
    bench = Path(os.environ.get("RAGTUNE_BENCH_DATA", default_bench_data()))
    data = {name: bench / f"foundations-{name}" for name in versions}
    p50s: dict[str, list[float]] = {name: [] for name in versions}
    quality: dict[str, float] = {}
    console = Console()
    for n in range(args.rounds):
        order = list(versions) if n % 2 == 0 else list(reversed(versions))
        for name in order:
            result = run_version(versions[name], data[name], args.questions, quality=n == 0)
            if result["run"] is not None:
                quality[name] = ndcg(result["run"])
            p50s[name].append(statistics.median(result["times_ms"]))
            console.print(f"round {n + 1} {name}: p50 {p50s[name][-1]:.2f} ms")
    rows = {name: {"nDCG@10": quality[name], "p50_ms_rounds": p50s[name], "p50_ms": statistics.median(p50s[name])}
            for name in versions}
    ratio = rows["after"]["p50_ms"] / rows["before"]["p50_ms"]
    table = Table(title=f"hybrid search, SQuAD 2.0 dev ({args.questions} questions timed, {args.rounds} rounds)")
    for col in ("version", "nDCG@10 (all questions)", "p50 ms (median of rounds)", "rounds"):
        table.add_column(col)
    for name, row in rows.items():
        table.add_row(name, f"{row['nDCG@10']:.4f}", f"{row['p50_ms']:.2f}",
                      " ".join(f"{v:.2f}" for v in row["p50_ms_rounds"]))
    console.print(table)
    console.print(f"after / before p50: x{ratio:.3f}")
    path = write_result("foundations_overhead", {"before": args.before, "questions": args.questions,
                                                  "rounds": args.rounds, "rows": rows, "ratio_p50": ratio,
                                                  "load": os.getloadavg()})
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
