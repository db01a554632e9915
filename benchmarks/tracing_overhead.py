"""What tracing costs a request (issue 19): the same searches and answers with spans on and off,
side by side in one run.

    python benchmarks/tracing_overhead.py [--questions 300] [--asks 100] [--rounds 30]

Two engines on one project (the bench data folder's embedded PostgreSQL, SQuAD 2.0 dev indexed as
the retrieval benchmark indexes it): ``[observability] tracing`` on (spans batched into the spans
table by a background thread) and off (no spans, no trace). The questions are embedded once and
passed in, so the embedder's time is left out alike. Each round times every question's
``rt.search`` (hybrid, top 10) and the first ``--asks`` questions' ``rt.ask`` (extractive: the
cheapest answer, so the ratio is the strictest) with each engine, in alternating order, after a
warm-up pass; after the traced engine's block, its queue is left to drain (untimed) so that its
writing does not spill into the other engine's block. The background writer shares the 2 cores
with the requests, which is part of what is measured.

The machine is shared and its speed drifts by more than the few per cent measured (one round's
ratio ranges 0.87-1.23), so many short rounds are run and reported as: per engine the p50 of all
its requests pooled, their ratio with a 95% interval from resampling whole rounds (a bootstrap
that keeps each round's on/off pair together), and the median of the rounds' ratios; also what
the exporter did (spans written, dropped).
Writes benchmarks/results/tracing_overhead.json.
"""

from __future__ import annotations

import argparse
import operator
import os
import statistics
import time
from typing import Any

import numpy as np
from common import bench_engine, percentiles, round_interval, write_result
from rich.console import Console
from rich.table import Table

from ragtune.engine import Ragtune
from ragtune.evaluate.datasets import load_dataset
from ragtune.evaluate.retrieval import index_dataset
from ragtune.models import Principal

console = Console()
OPERATOR = Principal.system()


def timed(fn: Any, items: list[Any]) -> list[float]:
    out = []
    for item in items:
        started = time.perf_counter()
        fn(item)
        out.append((time.perf_counter() - started) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--questions", type=int, default=300, help="searches per engine per round")
    parser.add_argument("--asks", type=int, default=100, help="answers per engine per round")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()

    started = time.perf_counter()
    load = [round(x, 2) for x in os.getloadavg()]
    console.print(f"load average at start: {load}")
    on = bench_engine(tracing=True, audit=False)  # tracing alone: the audit log is measured by audit_overhead.py
    off = Ragtune(on.settings.replace(tracing=False), embedder=on.embedder, database=on.db)
    dataset = load_dataset("squad", on.settings.resolved_cache_dir / "packages")
    collection, _ = index_dataset(on, dataset)
    qids = sorted(dataset.queries)[: args.questions]
    vectors = dict(zip(qids, on.embedder.embed_batch([dataset.queries[q] for q in qids]), strict=True))
    engines = {"off": off, "on": on}

    def search(rt: Ragtune) -> Any:
        return lambda q: rt.search(dataset.queries[q], collection=collection, top_k=10, mode="hybrid",
                                   query_vector=vectors[q], principal=OPERATOR)

    def ask(rt: Ragtune) -> Any:
        return lambda q: rt.ask(dataset.queries[q], collection=collection, generator="extractive",
                                query_vector=vectors[q], principal=OPERATOR, reader=False, answerability=False)

    for rt in engines.values():  # warm-up: plans, caches, the pool, the support scorer
        timed(search(rt), qids[:50])
        timed(ask(rt), qids[:20])
    rounds: list[dict[str, Any]] = []
    latencies: dict[str, dict[str, list[list[float]]]] = {n: {"search": [], "ask": []} for n in engines}
    for r in range(args.rounds):
        order = ["off", "on"] if r % 2 == 0 else ["on", "off"]
        row: dict[str, Any] = {"order": order}
        for name in order:
            rt = engines[name]
            searched, asked = timed(search(rt), qids), timed(ask(rt), qids[: args.asks])
            latencies[name]["search"].append(searched)
            latencies[name]["ask"].append(asked)
            row[name] = {"search": percentiles(searched), "ask": percentiles(asked)}
            if name == "on":
                on.tracing.flush()  # drained before the other engine's block
        rounds.append(row)
        console.print(f"round {r + 1}: search p50 off {row['off']['search']['p50_ms']} on "
                      f"{row['on']['search']['p50_ms']} ms; ask p50 off {row['off']['ask']['p50_ms']} on "
                      f"{row['on']['ask']['p50_ms']} ms")
    summary: dict[str, Any] = {}
    for kind in ("search", "ask"):
        summary[kind] = {}
        for stat, q in (("p50_ms", 50), ("p95_ms", 95)):
            pooled = {name: float(np.percentile(np.concatenate(latencies[name][kind]), q)) for name in engines}
            ratios = [r["on"][kind][stat] / r["off"][kind][stat] for r in rounds]
            low, high = round_interval(latencies["on"][kind], latencies["off"][kind], operator.truediv, q)
            summary[kind][stat] = {**{k: round(v, 3) for k, v in pooled.items()},
                                   "pooled_ratio": round(pooled["on"] / pooled["off"], 4),
                                   "interval_95": [round(low, 4), round(high, 4)],
                                   "round_ratios": [round(x, 4) for x in ratios],
                                   "median_round_ratio": round(statistics.median(ratios), 4)}
    table = Table(title=f"Tracing on vs off, {len(qids)} searches and {args.asks} answers x {args.rounds} rounds")
    for col in ("request", "stat", "off ms", "on ms", "on/off pooled", "95% interval", "median of rounds"):
        table.add_column(col, justify="right")
    for kind, stats in summary.items():
        for stat, v in stats.items():
            table.add_row(kind, stat, f"{v['off']:.3f}", f"{v['on']:.3f}", f"{v['pooled_ratio']:.3f}",
                          f"{v['interval_95'][0]:.3f}-{v['interval_95'][1]:.3f}", f"{v['median_round_ratio']:.3f}")
    console.print(table)
    exporter = on.tracing.stats()
    console.print(f"exporter: {exporter}")
    write_result("tracing_overhead", {
        "settings": vars(args), "load_at_start": load, "collection": collection, "summary": summary,
        "exporter": exporter, "seconds": round(time.perf_counter() - started, 1),
    })
    on.close()  # writes what is queued, then closes the database both engines share


if __name__ == "__main__":
    main()
