"""What tracing costs a request (issue 19): the same searches and answers with spans on and off,
side by side in one run.

    python benchmarks/tracing_overhead.py [--questions 400] [--asks 100] [--rounds 5]

Two engines on one project (the bench data folder's embedded PostgreSQL, SQuAD 2.0 dev indexed as
the retrieval benchmark indexes it): ``[observability] tracing`` on (spans batched into the spans
table by a background thread) and off (no spans, no trace). The questions are embedded once and
passed in, so the embedder's time is left out alike. Each round times every question's
``rt.search`` (hybrid, top 10) and the first ``--asks`` questions' ``rt.ask`` (extractive: the
cheapest answer, so the ratio is the strictest) with each engine, in alternating order, after a
warm-up pass. Reported: per engine the median over rounds of each round's p50 and p95, the ratio
on/off, each round's ratio, and what the exporter did (spans written, dropped). The background
writer shares the 2 cores with the requests, which is part of what is measured.
Writes benchmarks/results/tracing_overhead.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from common import bench_engine, percentiles, write_result
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
    parser.add_argument("--questions", type=int, default=400, help="searches per engine per round")
    parser.add_argument("--asks", type=int, default=100, help="answers per engine per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    started = time.perf_counter()
    on = bench_engine(tracing=True)
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
    for r in range(args.rounds):
        order = ["off", "on"] if r % 2 == 0 else ["on", "off"]
        row: dict[str, Any] = {"order": order}
        for name in order:
            rt = engines[name]
            row[name] = {"search": percentiles(timed(search(rt), qids)),
                         "ask": percentiles(timed(ask(rt), qids[: args.asks]))}
        rounds.append(row)
        console.print(f"round {r + 1}: search p50 off {row['off']['search']['p50_ms']} on "
                      f"{row['on']['search']['p50_ms']} ms; ask p50 off {row['off']['ask']['p50_ms']} on "
                      f"{row['on']['ask']['p50_ms']} ms")
    on.tracing.flush()
    summary: dict[str, Any] = {}
    for kind in ("search", "ask"):
        summary[kind] = {}
        for stat in ("p50_ms", "p95_ms"):
            values = {name: statistics.median(r[name][kind][stat] for r in rounds) for name in engines}
            ratios = [r["on"][kind][stat] / r["off"][kind][stat] for r in rounds]
            summary[kind][stat] = {**values, "ratio_of_medians": round(values["on"] / values["off"], 4),
                                   "round_ratios": [round(x, 4) for x in ratios],
                                   "median_round_ratio": round(statistics.median(ratios), 4)}
    table = Table(title=f"Tracing on vs off, {len(qids)} searches and {args.asks} answers x {args.rounds} rounds")
    for col in ("request", "stat", "off ms", "on ms", "on/off (median of rounds)", "round ratios"):
        table.add_column(col, justify="right")
    for kind, stats in summary.items():
        for stat, v in stats.items():
            table.add_row(kind, stat, f"{v['off']:.2f}", f"{v['on']:.2f}", f"{v['median_round_ratio']:.3f}",
                          " ".join(f"{x:.3f}" for x in v["round_ratios"]))
    console.print(table)
    exporter = on.tracing.stats()
    console.print(f"exporter: {exporter}")
    write_result("tracing_overhead", {
        "settings": vars(args), "collection": collection, "summary": summary, "rounds": rounds,
        "exporter": exporter, "seconds": round(time.perf_counter() - started, 1),
    })
    on.close()  # writes what is queued, then closes the database both engines share


if __name__ == "__main__":
    main()
