"""Bounded load test of ``ragtune serve`` on loopback: N concurrent clients mix search, ask and
ingest for T seconds; reports errors, p50/p95 latency per operation and throughput.

    python benchmarks/server_load.py [--clients 8] [--seconds 60] [--paragraphs 300] [--generator extractive]

The server runs as a subprocess (``ragtune serve --auth``, its own process and GIL) over the
benchmark project (``common.bench_engine``: SQuAD dev paragraphs, embeddings cached across runs);
the clients are threads with one HTTP connection each, each with a key of its own (read and
ingest scopes, as separate tenants), made for the run and revoked after it. Mix per request:
70 % search, 20 % ask, 10 % upload of a small new document (an asynchronous ingest job; all jobs
must succeed by the end). Only 127.0.0.1 is ever contacted,
and both the duration (<= 600 s) and the clients (<= 64) are capped. Writes
benchmarks/results/server_load.json.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from common import bench_engine, percentiles, write_result

from ragtune.testing.serve import start_serve

COLLECTION = "server-load-squad"
MIX = (("search", 0.7), ("ask", 0.2), ("ingest", 0.1))


def prepare(paragraphs: int) -> tuple[Any, list[str]]:
    """The benchmark engine with a SQuAD collection of ``paragraphs`` documents; returns questions."""
    from ragtune.evaluate.datasets import load_dataset
    from ragtune.evaluate.retrieval import dataset_documents

    rt = bench_engine()
    ds = load_dataset("squad", rt.settings.resolved_cache_dir / "packages")
    docs = dataset_documents(ds)[:paragraphs]
    keep = {d.uri for d in docs}
    rt.ingest_documents(docs, collection=COLLECTION, whole_documents=True)
    questions = [ds.queries[q] for q, rel in ds.qrels.items() if set(rel) & keep]
    return rt, questions


@contextmanager
def served(rt: Any, generator: str, *, rate_limit: float = 0) -> Iterator[tuple[str, str]]:
    """``ragtune serve`` on a free loopback port over the same project; yields (url, admin key)."""
    from ragtune.server.auth import KeyStore

    store = KeyStore(rt.db)
    made = store.create("benchmark", scopes=["admin"])
    env = {**os.environ, "RAGTUNE_DATA_DIR": str(rt.settings.data_dir),
           "RAGTUNE_CACHE_DIR": str(rt.settings.resolved_cache_dir), "RAGTUNE_GENERATION_GENERATOR": generator,
           "RAGTUNE_SERVER_RATE_LIMIT": str(rate_limit), "RAGTUNE_INGEST_EMBEDDER": rt.settings.ingest.embedder}
    if rt.settings.database_url:
        env["RAGTUNE_DATABASE_URL"] = rt.settings.database_url
    proc, url = start_serve(env, "--auth", "--log-level", "warning")
    try:
        assert proc.stderr is not None
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # drain the log
        yield url, made.key
    finally:
        proc.terminate()  # SIGTERM: uvicorn's graceful shutdown
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        store.revoke(made.info.key_id)


def client_loop(url: str, key: str, questions: list[str], stop_at: float, seed: int,
                out: dict[str, list[float]], errors: list[str], jobs: list[int], lock: threading.Lock) -> None:
    rng = random.Random(seed)
    kinds, weights = zip(*MIX, strict=True)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
        n = 0
        while time.monotonic() < stop_at:
            kind = rng.choices(kinds, weights)[0]
            question = rng.choice(questions)
            started = time.perf_counter()
            try:
                if kind == "search":
                    r = client.post(f"/collections/{COLLECTION}/search", json={"query": question, "top_k": 10})
                elif kind == "ask":
                    r = client.post(f"/collections/{COLLECTION}/ask", json={"question": question, "max_tokens": 16})
                else:
                    n += 1
                    text = f"# Load note {seed}-{n}\n\nClient {seed} wrote note {n} about: {question}"
                    r = client.post(f"/collections/{COLLECTION}/documents",
                                    files={"files": (f"load-{seed}-{n}.md", text.encode())})
                ms = (time.perf_counter() - started) * 1000
                ok = r.status_code < 400
            except httpx.HTTPError as exc:
                ms, ok, r = (time.perf_counter() - started) * 1000, False, None
                detail = f"{kind}: {type(exc).__name__}: {exc}"
            with lock:
                if ok:
                    out[kind].append(ms)
                    if kind == "ingest" and r is not None:
                        jobs.append(r.json()["id"])
                else:
                    errors.append(detail if r is None else f"{kind}: {r.status_code} {r.text[:200]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--paragraphs", type=int, default=300)
    parser.add_argument("--generator", default="extractive", help="extractive | smollm2 (ask uses max_tokens 16)")
    parser.add_argument("--out", default="server_load", help="result name in benchmarks/results ('' to skip)")
    args = parser.parse_args()
    if not 1 <= args.clients <= 64 or not 0 < args.seconds <= 600:
        parser.error("--clients must be 1..64 and --seconds 0..600 (this is a bounded loopback test)")
    rt, questions = prepare(args.paragraphs)
    out: dict[str, list[float]] = defaultdict(list)
    errors: list[str] = []
    jobs: list[int] = []
    lock = threading.Lock()
    with served(rt, args.generator) as (url, key):
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as warm:
            for q in questions[:20]:  # query embedding and the ask path warm up, untimed
                warm.post(f"/collections/{COLLECTION}/search", json={"query": q})
            warm.post(f"/collections/{COLLECTION}/ask", json={"question": questions[0], "max_tokens": 16})
        # one key per client, as separate tenants would have (a key may hold server_max_jobs_per_key
        # unfinished ingest jobs); the admin key waits for the jobs at the end
        from ragtune.server.auth import KeyStore

        client_keys = [KeyStore(rt.db).create(f"load client {i}", scopes=["read", "ingest"])
                       for i in range(args.clients)]
        started = time.monotonic()
        threads = [threading.Thread(target=client_loop, args=(url, client_keys[i].key, questions,
                                                              started + args.seconds, i, out, errors, jobs, lock))
                   for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        job_status = finish_jobs(url, key, jobs)
        for made in client_keys:
            KeyStore(rt.db).revoke(made.info.key_id)
    requests = sum(len(v) for v in out.values())
    result = {
        "clients": args.clients, "seconds": round(elapsed, 1), "generator": args.generator,
        "paragraphs": args.paragraphs, "mix": dict(MIX), "requests": requests, "errors": len(errors),
        "error_samples": errors[:10], "throughput_rps": round(requests / elapsed, 2),
        "all": percentiles([x for v in out.values() for x in v]),
        "by_operation": {k: percentiles(v) for k, v in sorted(out.items())},
        "ingest_jobs": job_status,
    }
    print_result(result)
    if args.out:
        print(f"wrote {write_result(args.out, result)}")
    cleanup(rt)
    rt.close()


def cleanup(rt: Any) -> None:
    """Remove the documents the clients uploaded, so the collection is the same for the next run."""
    uploaded = [d.uri for d in rt.documents(collection=COLLECTION, prefix="load-")]
    rt.delete(uploaded, collection=COLLECTION)


def finish_jobs(url: str, key: str, jobs: list[int], timeout: float = 300) -> dict[str, int]:
    """Wait (bounded) for the uploads' ingest jobs; returns how many ended in each status."""
    counts: dict[str, int] = defaultdict(int)
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
        for job_id in jobs:
            wait = max(0.0, min(60.0, deadline - time.monotonic()))
            status = client.get(f"/ingest-jobs/{job_id}", params={"wait": wait}).json()["status"]
            counts[status] += 1
    return dict(counts)


def print_result(result: dict[str, Any]) -> None:
    print(f"{result['requests']} requests in {result['seconds']} s from {result['clients']} clients: "
          f"{result['throughput_rps']} req/s, {result['errors']} errors; all p50 {result['all'].get('p50_ms')} ms "
          f"p95 {result['all'].get('p95_ms')} ms")
    for kind, stats in result["by_operation"].items():
        print(f"  {kind:7} n={stats['n']:5}  p50 {stats.get('p50_ms')} ms  p95 {stats.get('p95_ms')} ms")
    print(f"  ingest jobs: {result['ingest_jobs']}")
    for sample in result["error_samples"]:
        print(f"  error: {sample}")


if __name__ == "__main__":
    main()
