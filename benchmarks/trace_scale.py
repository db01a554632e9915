"""Traces at scale (issue 19): the trace list, one trace, the dashboard's queries and retention on
millions of spans in our PostgreSQL.

    python benchmarks/trace_scale.py [--spans 10000000] [--days 30] [--repeats 20] [--keep]

1. Real traces first: on the bench project (the SQuAD 2.0 dev collection the retrieval benchmark
   indexes), 200 hybrid searches and 60 extractive answers, as 20 users, with tracing on; their
   spans (every row of every trace: roots, retrieval, each step) are the templates.
2. ``--spans`` rows are generated from those templates (kept out of git: they live in the bench
   data folder's database): each copy gets new trace and span ids, a start time spread uniformly
   over the last ``--days`` days (its spans keep their offsets), one of 50 users, and its root's
   duration scaled by a random factor (0.5-4x, so "slow" filters find a tail); 1% of the answers
   get feedback, half of it negative. Written with COPY into the day partitions.
3. Timed, each ``--repeats`` times (p50/p95 in ms): the list (newest 50 root spans) with no filter
   and with each single filter (kind, collection, user, model, slower than the 99th percentile,
   abstained, ungrounded, negative feedback, the last hour), as an admin and as one user; opening a
   trace (a random one each time); the dashboard's series (24 h by hour) and stats (24 h); and
   retention dropping the oldest day. Reported: table and index sizes.

The bench project's spans are emptied at the end unless ``--keep``. Writes
benchmarks/results/trace_scale.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from common import bench_engine, write_result
from rich.console import Console
from rich.table import Table

from ragtune.evaluate.datasets import load_dataset
from ragtune.evaluate.retrieval import index_dataset
from ragtune.models import Principal
from ragtune.observe.traces import TraceReader, prune
from ragtune.observe.tracing import SPAN_COLUMNS

console = Console()
USERS = [f"user{i:02d}" for i in range(50)]


def real_traces(rt: Any, collection: str, dataset: Any) -> list[list[dict[str, Any]]]:
    """Spans of real searches and answers, grouped by trace."""
    qids = sorted(dataset.queries)
    rng = random.Random(0)
    for i, q in enumerate(qids[:200]):
        rt.search(dataset.queries[q], collection=collection, top_k=10, principal=Principal(USERS[i % 20], {"all"}))
    for i, q in enumerate(qids[200:260]):
        rt.ask(dataset.queries[q], collection=collection, generator="extractive", reader=False, answerability=False,
               principal=Principal(USERS[i % 20], {"all"}), top_k=rng.choice((3, 5)))
    rt.tracing.flush()
    with rt.db.connection() as conn:
        rows = conn.execute(f"SELECT {', '.join(SPAN_COLUMNS)} FROM spans WHERE start_time > now() - interval '1 hour'"
                            " AND kind <> 'ingest' ORDER BY trace_id, start_time").fetchall()
    traces: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        traces.setdefault(r["trace_id"], []).append(dict(r))
    return [t for t in traces.values() if any(s["parent_id"] is None for s in t)]


def generate(rt: Any, templates: list[list[dict[str, Any]]], n_spans: int, days: int) -> dict[str, Any]:
    """``n_spans`` rows copied from ``templates`` over the last ``days`` days (module docstring)."""
    rng = random.Random(1)
    now = datetime.now(UTC)
    first = now - timedelta(days=days)
    prepared = []
    for trace in templates:
        root = next(s for s in trace if s["parent_id"] is None)
        prepared.append([(s, (s["start_time"] - root["start_time"]), json.dumps(s["attributes"]),
                          json.dumps(s["events"])) for s in trace])
    with rt.db.connection() as conn:
        for d in range(days + 1):
            conn.execute("SELECT ragtune_span_partition(%s)", ((first + timedelta(days=d)).date(),))
    written = traces = 0
    votes: list[tuple[str, str, int]] = []
    started = time.perf_counter()
    window = (now - first).total_seconds()
    while written < n_spans:  # a transaction per million spans (no statement timeout: a bulk load)
        goal = min(n_spans, written + 1_000_000)
        with rt.db.transaction(statement_timeout=0) as conn, \
                conn.cursor().copy(f"COPY spans ({', '.join(SPAN_COLUMNS)}) FROM STDIN") as copy:
            while written < goal:
                spans = prepared[traces % len(prepared)]
                trace_id = f"{rng.getrandbits(128):032x}"
                ids = {s["span_id"]: f"{rng.getrandbits(64) or 1:016x}" for s, _, _, _ in spans}
                start = first + timedelta(seconds=rng.random() * window)
                user = rng.choice(USERS)
                scale = rng.uniform(0.5, 4.0)
                for s, offset, attributes, events in spans:
                    is_root = s["parent_id"] is None
                    copy.write_row((
                        trace_id, ids[s["span_id"]], ids.get(s["parent_id"]) if s["parent_id"] else None, s["name"],
                        s["kind"], start + offset, s["duration_ms"] * (scale if is_root else 1.0), s["status"],
                        s["error"], user, False, ["all"], s["collection"], s["model"], s["abstained"], s["grounded"],
                        s["chunk_ids"], attributes, events))
                    written += 1
                if spans[0][0]["kind"] == "ask" and rng.random() < 0.01:
                    votes.append((trace_id, user, rng.choice((-1, 1))))
                traces += 1
        console.print(f"  {written:,} spans, {traces:,} traces, {time.perf_counter() - started:.0f} s")
    with rt.db.transaction(statement_timeout=0) as conn:
        with conn.cursor().copy("COPY feedback (trace_id, principal, thumbs) FROM STDIN") as copy:
            for vote in votes:
                copy.write_row(vote)
        conn.execute("ANALYZE spans")
        conn.execute("ANALYZE feedback")
    feedback = len(votes)
    return {"spans": written, "traces": traces, "feedback": feedback,
            "seconds": round(time.perf_counter() - started, 1), "first": first.isoformat(), "last": now.isoformat()}


def timed(fn: Any, repeats: int) -> dict[str, float]:
    fn()  # a first call: plans and caches, as a live server has them
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return {"p50_ms": round(statistics.median(times), 2),
            "p95_ms": round(times[min(len(times) - 1, int(0.95 * len(times)))], 2), "n": repeats}


def sizes(rt: Any) -> dict[str, Any]:
    """The spans table's partitions: rows' and indexes' bytes, and each index's (summed over days)."""
    with rt.db.connection() as conn:
        table = conn.execute("SELECT sum(pg_table_size(relid)) AS t, sum(pg_indexes_size(relid)) AS i, count(*) AS n"
                             " FROM pg_partition_tree('spans') WHERE isleaf").fetchone()
        indexes = conn.execute(
            "SELECT i.inhparent::regclass::text AS name, sum(pg_relation_size(i.inhrelid)) AS bytes FROM pg_inherits i"
            " WHERE i.inhparent IN (SELECT indexrelid FROM pg_index WHERE indrelid = 'spans'::regclass)"
            " GROUP BY 1 ORDER BY 2 DESC").fetchall()
    return {"partitions": table["n"], "table_bytes": int(table["t"] or 0), "index_bytes": int(table["i"] or 0),
            "by_index": {r["name"]: int(r["bytes"]) for r in indexes}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spans", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the generated spans")
    args = parser.parse_args()

    started = time.perf_counter()
    rt = bench_engine(tracing=True)
    dataset = load_dataset("squad", rt.settings.resolved_cache_dir / "packages")
    collection, _ = index_dataset(rt, dataset)
    with rt.db.transaction(statement_timeout=0) as conn:
        conn.execute("TRUNCATE spans, feedback")
    templates = real_traces(rt, collection, dataset)
    console.print(f"{len(templates)} real traces, {sum(len(t) for t in templates)} spans as templates")
    made = generate(rt, templates, args.spans, args.days)
    console.print(f"generated: {made}")
    reader = TraceReader(rt.db)  # no tracing: nothing to flush, the queries alone
    admin, user = Principal.system(), Principal(USERS[7], {"all"})
    with rt.db.connection() as conn:
        slow = conn.execute("SELECT percentile_disc(0.99) WITHIN GROUP (ORDER BY duration_ms) AS p FROM spans"
                            " WHERE parent_id IS NULL AND start_time > now() - interval '1 day'").fetchone()["p"]
        trace_ids = [r["trace_id"] for r in conn.execute(
            "SELECT trace_id FROM spans TABLESAMPLE SYSTEM (0.1) WHERE parent_id IS NULL LIMIT 500").fetchall()]
    filters: dict[str, dict[str, Any]] = {
        "none": {}, "kind=ask": {"kind": "ask"}, "collection": {"collection": collection}, "user": {"user": USERS[3]},
        "model=extractive": {"model": "extractive"}, f"slower than p99 ({slow:.0f} ms)": {"slower_than_ms": slow},
        "abstained": {"abstained": True}, "ungrounded": {"grounded": False, "kind": "ask"},
        "negative feedback": {"feedback": "negative"},
        "last hour": {"since": datetime.now(UTC) - timedelta(hours=1)},
    }
    results: dict[str, Any] = {"list_admin": {}, "list_user": {}}
    for name, f in filters.items():
        results["list_admin"][name] = timed(lambda f=f: reader.visible(admin, limit=50, **f), args.repeats)
        results["list_user"][name] = timed(lambda f=f: reader.visible(user, limit=50, **f), args.repeats)
    rng = random.Random(2)
    results["open_trace"] = timed(lambda: reader.get(rng.choice(trace_ids), admin), args.repeats)
    day = datetime.now(UTC) - timedelta(hours=24)
    results["dashboard_series_24h"] = timed(lambda: reader.series(admin, since=day, bucket_minutes=60),
                                            max(3, args.repeats // 4))
    results["dashboard_stats_24h"] = timed(lambda: reader.stats(admin, since=day), max(3, args.repeats // 4))
    results["sizes"] = sizes(rt)
    t = time.perf_counter()
    dropped = prune(rt.db, args.days)  # the oldest day is outside the window from now on
    results["retention"] = {"dropped": dropped, "seconds": round(time.perf_counter() - t, 3)}

    table = Table(title=f"{made['spans']:,} spans ({made['traces']:,} traces over {args.days} days)")
    for col in ("query", "admin p50", "admin p95", "user p50", "user p95"):
        table.add_column(col, justify="right")
    for name in filters:
        a, u = results["list_admin"][name], results["list_user"][name]
        table.add_row(f"list: {name}", f"{a['p50_ms']:.1f}", f"{a['p95_ms']:.1f}", f"{u['p50_ms']:.1f}",
                      f"{u['p95_ms']:.1f}")
    for name in ("open_trace", "dashboard_series_24h", "dashboard_stats_24h"):
        r = results[name]
        table.add_row(name, f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}", "", "")
    console.print(table)
    console.print(f"retention: {results['retention']}; sizes: {results['sizes']}")
    if not args.keep:
        with rt.db.transaction(statement_timeout=0) as conn:
            conn.execute("TRUNCATE spans, feedback")
    write_result("trace_scale", {"settings": vars(args), "generated": made, "templates": {
        "traces": len(templates), "spans": sum(len(t) for t in templates)}, "results": results,
        "seconds": round(time.perf_counter() - started, 1)})
    rt.close()


if __name__ == "__main__":
    main()
