"""What the audit log costs (issue 20): the same searches with the log off, on ("sync": each
search's event committed before it returns) and on with ``audit_reads = "async"`` (committed
without waiting for the disk), side by side in one run; then the searches per second of four
threads sharing the chain's lock, and how fast ``verify`` checks the chain.

    python benchmarks/audit_overhead.py [--questions 300] [--rounds 20] [--threads 4]

Three engines on one project (the bench data folder's embedded PostgreSQL, SQuAD 2.0 dev indexed
as the retrieval benchmark indexes it), tracing off in all three so the log is measured alone.
The questions are embedded once and passed in. Each round times every question's hybrid top-10
search with each engine, the engines' order turning round by round, after a warm-up; reported:
per engine the pooled p50 and p95, the added p50 in ms against "off" with a 95% interval from
resampling whole rounds, and the median of the rounds' differences. Target (issue 20): at most
1 ms added to the p50 of a search.
Writes benchmarks/results/audit_overhead.json.
"""

from __future__ import annotations

import argparse
import operator
import os
import statistics
import threading
import time
from typing import Any

import numpy as np
from common import bench_engine, round_interval, write_result
from rich.console import Console
from rich.table import Table

from ragtune.engine import Ragtune
from ragtune.evaluate.datasets import load_dataset
from ragtune.evaluate.retrieval import index_dataset
from ragtune.models import Principal

console = Console()
READER = Principal.system()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    started = time.perf_counter()
    load = [round(x, 2) for x in os.getloadavg()]
    console.print(f"load average at start: {load}")
    base = bench_engine(tracing=False, audit=False)
    engines: dict[str, Ragtune] = {
        "off": base,
        "sync": Ragtune(base.settings.replace(audit=True, audit_reads="sync"), embedder=base.embedder,
                        database=base.db),
        "async": Ragtune(base.settings.replace(audit=True, audit_reads="async"), embedder=base.embedder,
                         database=base.db),
    }
    dataset = load_dataset("squad", base.settings.resolved_cache_dir / "packages")
    collection, _ = index_dataset(base, dataset)
    qids = sorted(dataset.queries)[: args.questions]
    vectors = dict(zip(qids, base.embedder.embed_batch([dataset.queries[q] for q in qids]), strict=True))

    def search(rt: Ragtune, q: str) -> None:
        rt.search(dataset.queries[q], collection=collection, top_k=10, mode="hybrid", query_vector=vectors[q],
                  principal=READER)

    def timed(rt: Ragtune) -> list[float]:
        out = []
        for q in qids:
            t = time.perf_counter()
            search(rt, q)
            out.append((time.perf_counter() - t) * 1000)
        return out

    for rt in engines.values():
        timed(rt)  # warm-up
    latencies: dict[str, list[list[float]]] = {name: [] for name in engines}
    names = list(engines)
    for r in range(args.rounds):
        order = names[r % 3:] + names[:r % 3]
        for name in order:
            latencies[name].append(timed(engines[name]))
        console.print(f"round {r + 1}: " + ", ".join(
            f"{n} p50 {statistics.median(latencies[n][-1]):.3f} ms" for n in names))

    summary: dict[str, Any] = {}
    for name in names:
        pooled = np.concatenate(latencies[name])
        row: dict[str, Any] = {"p50_ms": round(float(np.percentile(pooled, 50)), 3),
                               "p95_ms": round(float(np.percentile(pooled, 95)), 3)}
        if name != "off":
            low, high = round_interval(latencies[name], latencies["off"], operator.sub)
            row["added_p50_ms"] = round(row["p50_ms"] - summary["off"]["p50_ms"], 3)
            row["added_p50_interval_95"] = [round(low, 3), round(high, 3)]
            row["median_round_added_ms"] = round(statistics.median(
                statistics.median(a) - statistics.median(b) for a, b in zip(latencies[name], latencies["off"],
                                                                            strict=True)), 3)
        summary[name] = row

    throughput = {name: _throughput(engines[name], search, qids, args.threads) for name in names}
    verify_started = time.perf_counter()
    verified = engines["sync"].audit.verify()
    verify_s = time.perf_counter() - verify_started

    table = Table(title=f"Audit log on vs off: {len(qids)} searches x {args.rounds} rounds, "
                        f"and {args.threads} threads")
    for col in ("log", "p50 ms", "p95 ms", "added p50 ms", "95% interval", "median of rounds", "searches/s"):
        table.add_column(col, justify="right")
    for name in names:
        r = summary[name]
        table.add_row(name, f"{r['p50_ms']:.3f}", f"{r['p95_ms']:.3f}", f"{r.get('added_p50_ms', 0):+.3f}",
                      "-" if name == "off" else "{:+.3f} to {:+.3f}".format(*r["added_p50_interval_95"]),
                      "-" if name == "off" else f"{r['median_round_added_ms']:+.3f}", f"{throughput[name]:.0f}")
    console.print(table)
    console.print(f"verify: {verified.checked} events in {verify_s:.2f} s ({verified.checked / verify_s:,.0f}/s), "
                  f"ok={verified.ok}")
    with base.db.connection() as conn:
        size = conn.execute("SELECT pg_total_relation_size('audit_events') AS bytes").fetchone()
    write_result("audit_overhead", {
        "settings": vars(args), "load_at_start": load, "collection": collection, "summary": summary,
        "throughput_searches_per_s": {k: round(v, 1) for k, v in throughput.items()},
        "verify": {"events": verified.checked, "seconds": round(verify_s, 3), "ok": verified.ok,
                   "events_per_s": round(verified.checked / verify_s)},
        "audit_table_bytes": size["bytes"] if size else None,
        "seconds": round(time.perf_counter() - started, 1),
    })
    base.close()


def _throughput(rt: Ragtune, search: Any, qids: list[str], threads: int) -> float:
    """Searches a second of ``threads`` threads searching the questions at once (their events
    take turns at the chain's lock)."""
    done = [0]
    lock = threading.Lock()

    def work() -> None:
        for q in qids:
            search(rt, q)
            with lock:
                done[0] += 1

    started = time.perf_counter()
    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return done[0] / (time.perf_counter() - started)


if __name__ == "__main__":
    main()
