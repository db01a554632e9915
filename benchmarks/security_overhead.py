"""What the issue-14 checks cost a search, each measured beside its baseline in the same run.

    python benchmarks/security_overhead.py [--questions 300] [--rounds 2]

The corpus is SQuAD 2.0 dev (1,204 paragraphs, one chunk each) split into 4 ACL groups by a hash of
the article title; each question is asked as a principal of its article's group (so the ACL and the
per-principal BM25 statistics apply), hybrid mode, top 10. Costs:

- HTTP: servers in this process on loopback, one per variant, the requests interleaved question by
  question (variant order rotated every question), so drift and load hit every variant alike:
  *before* (no request guard, no cancel-on-disconnect watcher, BM25 statistics of the whole
  collection), each check added alone, and *all* (what ships). Keys are verified once, then cached.
- In-process: the request guard and the cancel watcher around an app that answers at once, the
  engine's per-search text and filter-size checks, and the database checkout's liveness poll, timed
  over many calls (they are microseconds, within the noise of an A/B of whole searches), as a share
  of the shipped search p50.

Writes benchmarks/results/security_overhead.json.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import time
from contextlib import ExitStack
from typing import Any

import httpx
from common import bench_engine, write_result

from ragtune.testing.serve import serve_in_thread

COLLECTION = "security-overhead-squad"
GROUPS = ("g0", "g1", "g2", "g3")


def group_of(title: str) -> str:
    return GROUPS[int(hashlib.sha256(title.encode()).hexdigest()[:8], 16) % len(GROUPS)]


def prepare(rt: Any, limit: int) -> list[tuple[str, str]]:
    """The collection (each paragraph with its article's group as ACL); (question, group) pairs."""
    from ragtune.evaluate.datasets import load_dataset
    from ragtune.evaluate.retrieval import dataset_documents

    ds = load_dataset("squad", rt.settings.resolved_cache_dir / "packages")
    docs = dataset_documents(ds)
    by_group: dict[str, list[Any]] = {g: [] for g in GROUPS}
    group_of_doc = {}
    for doc in docs:
        g = group_of(doc.title or doc.uri)
        by_group[g].append(doc)
        group_of_doc[doc.uri] = g
    for g, members in by_group.items():
        rt.ingest_documents(members, collection=COLLECTION, acl=[g], whole_documents=True)
    pairs = []
    for qid, rel in ds.qrels.items():
        doc = next(iter(rel))
        pairs.append((ds.queries[qid], group_of_doc[doc]))
        if len(pairs) >= limit:
            break
    return pairs


def variant_app(rt: Any, settings: Any, *, guard: bool, cancel: bool) -> Any:
    from ragtune.server.app import create_app
    from ragtune.server.cancel import CancelOnDisconnect
    from ragtune.server.guards import RequestGuard

    app = create_app(rt, settings, auth=True, start_worker=False)
    dropped = ({RequestGuard} if not guard else set()) | ({CancelOnDisconnect} if not cancel else set())
    app.user_middleware = [m for m in app.user_middleware if m.cls not in dropped]
    return app


def p50(values: list[float]) -> float:
    return statistics.median(values)


def micro(fn: Any, n: int) -> float:
    """Median microseconds per call over 7 batches of ``n``."""
    batches = []
    for _ in range(7):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        batches.append((time.perf_counter() - started) / n * 1e6)
    return statistics.median(batches)


def middleware_us(rounds: int = 7, n: int = 3000) -> dict[str, float]:
    """Median microseconds the request guard and the cancel watcher add to one JSON POST, each
    around an app that answers at once (plain ASGI calls in one event loop: no sockets, no noise
    from the rest of a search)."""
    import asyncio
    import json

    from ragtune.server.cancel import CancelOnDisconnect
    from ragtune.server.guards import RequestGuard, allowed_hosts

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    body = json.dumps({"query": "When were the Normans in Normandy?", "top_k": 10}).encode()
    scope = {"type": "http", "method": "POST", "path": "/collections/x/search", "query_string": b"",
             "scheme": "http", "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"),
                                           (b"content-length", str(len(body)).encode())]}

    class Client:
        """One request's receive and send: the body, then a disconnect once the response is sent."""

        def __init__(self) -> None:
            self.sent = False
            self.done = asyncio.Event()

        async def receive(self) -> dict[str, Any]:
            if not self.sent:
                self.sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await self.done.wait()
            return {"type": "http.disconnect"}

        async def send(self, message: Any) -> None:
            if message["type"] == "http.response.body":
                self.done.set()

    async def per_request(handler: Any) -> float:
        started = time.perf_counter()
        for _ in range(n):
            client = Client()
            await handler(dict(scope), client.receive, client.send)
        return (time.perf_counter() - started) / n * 1e6

    async def measure() -> dict[str, float]:
        handlers = {"bare": app, "guard": RequestGuard(app, hosts=allowed_hosts("127.0.0.1", []), cors_origins=[]),
                    "watcher": CancelOnDisconnect(app)}
        times: dict[str, list[float]] = {k: [] for k in handlers}
        for _ in range(rounds):
            for name, handler in handlers.items():
                times[name].append(await per_request(handler))
        bare = statistics.median(times["bare"])
        return {name: statistics.median(v) - bare for name, v in times.items() if name != "bare"}

    return asyncio.run(measure())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from bm25_statistics import head_bm25_scores

    import ragtune.retrieve.searcher as searcher_module
    from ragtune.engine import Ragtune
    from ragtune.retrieve.filters import FilterLimits, as_filters, bad_text, check_size
    from ragtune.retrieve.postgres import bm25_scores
    from ragtune.server.auth import KeyStore

    rt = bench_engine(server={"rate_limit": 0})
    pairs = prepare(rt, args.questions)
    settings = rt.settings
    global_rt = Ragtune(settings.replace(bm25_statistics="global"), embedder=rt.embedder, database=rt.db)
    keys = {g: KeyStore(rt.db).create(f"overhead {g}", groups=[g], scopes=["read"]) for g in GROUPS}
    before, reference = "before (HEAD)", "global statistics, no guard, no watcher"
    variants = {  # name -> (engine, guard, cancel)
        before: (global_rt, False, False),
        reference: (global_rt, False, False),
        "visible statistics": (rt, False, False),
        "global + request guard": (global_rt, True, False),
        "global + cancel watcher": (global_rt, False, True),
        "all (shipped)": (rt, True, True),
    }
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {name: [] for name in variants}
    with ExitStack() as stack:
        clients: dict[str, dict[str, httpx.Client]] = {}
        for name, (engine, guard, cancel) in variants.items():
            url = stack.enter_context(serve_in_thread(variant_app(engine, settings, guard=guard, cancel=cancel),
                                                      settings))
            clients[name] = {g: stack.enter_context(httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {keys[g].key}"}, timeout=60)) for g in GROUPS}
        names = list(variants)
        for name in names:  # warm up: models, key verification, caches
            searcher_module.bm25_scores = head_bm25_scores if name == before else bm25_scores
            for question, g in pairs[:30]:
                clients[name][g].post(f"/collections/{COLLECTION}/search", json={"query": question})
        for r in range(args.rounds):
            for i, (question, g) in enumerate(pairs):
                shift = (i + r) % len(names)
                for name in names[shift:] + names[:shift]:
                    # one request at a time, so swapping the searcher's BM25 function is safe
                    searcher_module.bm25_scores = head_bm25_scores if name == before else bm25_scores
                    started = time.perf_counter()
                    response = clients[name][g].post(f"/collections/{COLLECTION}/search", json={"query": question})
                    times[name].append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 200, response.text
    searcher_module.bm25_scores = bm25_scores
    load_after = os.getloadavg()
    base, ref = p50(times[before]), p50(times[reference])
    rows = {name: {"p50_ms": round(p50(v), 3), "p95_ms": round(sorted(v)[int(0.95 * len(v))], 3),
                   "ratio_to_before": round(p50(v) / base, 4), "ratio_to_reference": round(p50(v) / ref, 4),
                   "n": len(v)} for name, v in times.items()}

    shipped = rows["all (shipped)"]["p50_ms"] * 1000  # µs
    limits = FilterLimits(settings.retrieval.max_filters, settings.retrieval.max_filter_values)
    parsed = as_filters({"team": "a"})
    query = pairs[0][0]
    text_us = micro(lambda: (bad_text(query), check_size(parsed, limits)), 20000)
    db = rt.db

    def checkout() -> None:
        with db.connection():
            pass

    def bare_checkout() -> None:
        with db.pool.connection():  # the pool without the liveness poll and cancel scope
            pass

    checkout_us, bare_us = micro(checkout, 2000), micro(bare_checkout, 2000)
    middleware = middleware_us()
    in_process = {
        "request guard (per request)": {"us": round(middleware["guard"], 2),
                                        "share_of_p50": middleware["guard"] / shipped},
        "cancel watcher (per request)": {"us": round(middleware["watcher"], 2),
                                         "share_of_p50": middleware["watcher"] / shipped},
        "text and filter-size checks (per search)": {"us": round(text_us, 2), "share_of_p50": text_us / shipped},
        "checkout liveness poll (x3 per search)": {"us": round(3 * (checkout_us - bare_us), 2),
                                                   "share_of_p50": 3 * (checkout_us - bare_us) / shipped},
    }
    print(f"\nsearch over HTTP, hybrid, {len(pairs)} questions x {args.rounds} rounds, as group principals "
          f"(load {load_before[0]:.2f} -> {load_after[0]:.2f}):")
    print(f"{'variant':42s} {'p50 ms':>8s} {'p95 ms':>8s} {'x before':>9s} {'x global ref':>13s}")
    for name, row in rows.items():
        print(f"{name:42s} {row['p50_ms']:8.2f} {row['p95_ms']:8.2f} {row['ratio_to_before']:9.4f}"
              f" {row['ratio_to_reference']:13.4f}")
    print("\nin process:")
    for name, row in in_process.items():
        print(f"{name:44s} {row['us']:8.2f} us  {100 * row['share_of_p50']:.3f}% of the shipped p50")
    write_result("security_overhead", {"questions": len(pairs), "rounds": args.rounds, "http": rows,
                                       "in_process": in_process, "load": [load_before, load_after]})
    for made in keys.values():
        KeyStore(rt.db).revoke(made.info.key_id)
    rt.close()


if __name__ == "__main__":
    main()
