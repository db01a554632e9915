"""Search over HTTP against the same search in-process: the server's overhead ratio.

    python benchmarks/server_overhead.py [--queries 300] [--paragraphs 300] [--clients 4]

The same engine settings and collection (``server_load.prepare``: SQuAD dev paragraphs) are
searched (hybrid, top 10) with the same questions (a) in-process by ``Ragtune.search`` and (b)
through ``ragtune serve`` on 127.0.0.1 (a subprocess, API key on, rate limit off), first by one
client after the other, then by ``--clients`` concurrent clients for throughput. Both sides embed
the query themselves; 50 untimed warm-up queries go first on each. Reports p50/p95 latency,
queries/s and the HTTP/in-process ratios. Writes benchmarks/results/server_overhead.json.
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

import httpx
from common import write_result
from server_load import COLLECTION, percentiles, prepare, served

from ragtune.models import Principal


def timed(fn: Any, items: list[str]) -> tuple[list[float], float]:
    latencies = []
    started = time.perf_counter()
    for item in items:
        t = time.perf_counter()
        fn(item)
        latencies.append((time.perf_counter() - t) * 1000)
    return latencies, time.perf_counter() - started


def concurrent(fn_factory: Any, items: list[str], clients: int) -> float:
    """Queries per second with ``clients`` threads sharing the items."""
    chunks = [items[i::clients] for i in range(clients)]
    threads = [threading.Thread(target=lambda part=part: [f(q) for f in [fn_factory()] for q in part])
               for part in chunks]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(items) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--paragraphs", type=int, default=300)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--out", default="server_overhead", help="result name in benchmarks/results ('' to skip)")
    args = parser.parse_args()
    if not 1 <= args.queries <= 5000 or not 1 <= args.clients <= 32:
        parser.error("--queries must be 1..5000 and --clients 1..32")
    rt, questions = prepare(args.paragraphs)
    warmup, queries = questions[:50], (questions[50:] * 10)[: args.queries]
    principal = Principal(id="bench", admin=True)  # what an admin key is on the server

    def local(q: str) -> None:
        rt.search(q, collection=COLLECTION, top_k=10, principal=principal)

    timed(local, warmup)
    local_ms, local_s = timed(local, queries)
    local_qps = concurrent(lambda: local, queries, args.clients)

    with served(rt, "extractive") as (url, key):
        headers = {"Authorization": f"Bearer {key}"}

        def http_client() -> Any:
            client = httpx.Client(base_url=url, headers=headers, timeout=60)

            def search(q: str) -> None:
                r = client.post(f"/collections/{COLLECTION}/search", json={"query": q, "top_k": 10})
                r.raise_for_status()

            return search

        one = http_client()
        timed(one, warmup)
        http_ms, http_s = timed(one, queries)
        http_qps = concurrent(http_client, queries, args.clients)

    local_p, http_p = percentiles(local_ms), percentiles(http_ms)
    result = {
        "queries": len(queries), "paragraphs": args.paragraphs, "mode": rt.settings.retrieval.default_mode, "top_k": 10,
        "in_process": {**local_p, "qps_sequential": round(len(queries) / local_s, 2),
                       f"qps_{args.clients}_clients": round(local_qps, 2)},
        "http": {**http_p, "qps_sequential": round(len(queries) / http_s, 2),
                 f"qps_{args.clients}_clients": round(http_qps, 2)},
        "ratio_p50": round(http_p["p50_ms"] / local_p["p50_ms"], 3),
        "ratio_p95": round(http_p["p95_ms"] / local_p["p95_ms"], 3),
        "ratio_throughput_sequential": round((len(queries) / local_s) / (len(queries) / http_s), 3),
        "ratio_throughput_concurrent": round(local_qps / http_qps, 3),
    }
    for side in ("in_process", "http"):
        print(f"{side:10} p50 {result[side]['p50_ms']} ms  p95 {result[side]['p95_ms']} ms  "
              f"{result[side]['qps_sequential']} q/s sequential, {result[side][f'qps_{args.clients}_clients']} q/s "
              f"with {args.clients} clients")
    print(f"HTTP / in-process: p50 x{result['ratio_p50']}, p95 x{result['ratio_p95']}, "
          f"throughput x{result['ratio_throughput_sequential']} (sequential) x{result['ratio_throughput_concurrent']}"
          " (concurrent)")
    if args.out:
        print(f"wrote {write_result(args.out, result)}")
    rt.close()


if __name__ == "__main__":
    main()
