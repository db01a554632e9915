"""BM25 statistics under ACLs (issue 14): global (every chunk), visible (the chunks the principal
can read, from per-ACL-class statistics, migration 007) and isolated collections (one per group,
the reference), for quality, latency and write cost, side by side in one run.

SQuAD 2.0 dev paragraphs (1,204) are split by a hash of their article's title into a public share
and ``--groups`` ACL groups; every answerable question is asked by a principal of its article's
group (a public article's question by a principal of a group picked by a hash of the question id).
One collection holds every paragraph with its ACL; per group, an isolated collection holds only
what that group can read (public + its own), searched as the system principal: one collection per
tenant, the isolation a deployment could buy without this change. Visible statistics must give
exactly the isolated collection's scores; the table shows what that costs next to global.

    python benchmarks/bm25_statistics.py [--groups 4] [--limit N] [--write-docs 256] [--repeats 3]

Query vectors are embedded once and passed in, so latency excludes query embedding; latency is the
search inside PostgreSQL (``timings_ms["search"]``), every variant interleaved query by query so
load drifts hit them alike. Writes benchmarks/results/bm25_statistics.json.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from common import write_result
from rich.console import Console
from rich.table import Table

import ragtune.retrieve.searcher as searcher_module
from ragtune.engine import Ragtune
from ragtune.evaluate.datasets import load_dataset
from ragtune.evaluate.metrics import retrieval_metrics
from ragtune.evaluate.retrieval import dataset_documents
from ragtune.models import LoadedDocument, Principal
from ragtune.retrieve.postgres import Bm25Params, Bm25Scores, bm25_scores
from ragtune.settings import Settings
from ragtune.store.database import load_migrations
from ragtune.store.repository import BLOCK_BITS, AclClassDelta, add_acl_statistics, move_acl_statistics

console = Console()
K = 10
SHARED = "bm25stats-acl"
BEFORE = "before: global statistics, two statements (HEAD)"
VISIBLE = "visible statistics (new default)"
ISOLATED = "isolated collection per group (reference)"
ISOLATED_EXACT = "isolated collection, as the group's principal"
ADMIN_BEFORE = "admin before (HEAD)"
ADMIN_AFTER = "admin after"
SECRET_WORD = "HRSECRETOTTER"


def pick(key: str, n: int) -> int:
    """One of 0..n-1 by a hash of ``key``: stable across runs and machines."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) % n


def isolated(g: int) -> str:
    return f"bm25stats-iso-g{g}"


def principal_of(g: int) -> Principal:
    return Principal(f"user-g{g}", frozenset({f"g{g}"}))


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def pct(values: list[float]) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(values, 50)), "p95_ms": float(np.percentile(values, 95)), "n": len(values)}


def index(rt: Ragtune, docs: list[LoadedDocument], group_of: dict[str, int], groups: int) -> None:
    """Built afresh every run (the embeddings come from the store's cache), public paragraphs first
    and then each group's, everywhere: chunk ids, which break ties between equal scores, then
    order a group's readable paragraphs alike in the shared and the isolated collections."""
    for info in rt.collections():
        if info.name.startswith("bm25stats-"):
            rt.drop_collection(info.name)
    by_group = {g: [d for d in docs if group_of[d.uri] == g] for g in range(groups + 1)}
    for g, batch in by_group.items():
        rt.ingest_documents(batch, collection=SHARED, acl=[f"g{g}"] if g else None, whole_documents=True)
    for g in range(1, groups + 1):
        rt.ingest_documents(by_group[0], collection=isolated(g), whole_documents=True)
        rt.ingest_documents(by_group[g], collection=isolated(g), whole_documents=True)
    import psycopg

    with psycopg.connect(rt.db.url, autocommit=True) as conn:  # what autovacuum does after a bulk load
        for table in ("postings", "chunks", "acl_classes", "acl_class_terms", "terms"):
            conn.execute(f"VACUUM ANALYZE {table}")


def head_bm25_scores(conn: Any, info: Any, terms: Counter[str], params: Bm25Params,
                     groups: Any = None) -> Bm25Scores:
    """BM25 as it was before this change (commit 6aff500, retrieve/postgres.py): the collection's
    statistics in one statement, the packed postings in a second, summed the same way. The
    baseline "before" rows swap it into the searcher, which is all that changed on that path."""
    if not terms:
        return Bm25Scores.none()
    rows = conn.execute(
        "SELECT c.n_chunks, c.total_len, t.id, t.term, t.df FROM collections c"
        " LEFT JOIN terms t ON t.collection_id = c.id AND t.term = ANY(%s) AND t.df > 0 WHERE c.id = %s",
        (sorted(terms), info.id)).fetchall()
    found = [r for r in rows if r["id"] is not None]
    if not found or rows[0]["n_chunks"] <= 0:
        return Bm25Scores.none()
    n = float(rows[0]["n_chunks"])
    weights = [terms[r["term"]] * math.log(1 + (n - r["df"] + 0.5) / (r["df"] + 0.5)) for r in found]
    avgdl = max(rows[0]["total_len"], 1) / n
    rows = conn.execute(
        "SELECT q.ord::int4 AS ord, b.block, b.postings FROM unnest(%s::bigint[]) WITH ORDINALITY AS q(id, ord)"
        " JOIN posting_blocks b ON b.term_id = q.id", ([r["id"] for r in found],), binary=True).fetchall()
    if not rows:
        return Bm25Scores.none()
    counts = np.fromiter((len(r["postings"]) // 12 for r in rows), dtype=np.int64, count=len(rows))
    packed = np.frombuffer(b"".join(r["postings"] for r in rows), dtype=np.dtype(">i4")).reshape(-1, 3)
    block_base = np.fromiter((r["block"] for r in rows), dtype=np.int64, count=len(rows)) << BLOCK_BITS
    term_of_row = np.fromiter((r["ord"] for r in rows), dtype=np.int64, count=len(rows)) - 1
    chunk_ids = np.repeat(block_base, counts) + packed[:, 0]
    w = np.asarray(weights, dtype=np.float64)[np.repeat(term_of_row, counts)]
    tf = packed[:, 1].astype(np.float64)
    norm = params.k1 * (1 - params.b) + (params.k1 * params.b / avgdl) * packed[:, 2].astype(np.float64)
    first = int(chunk_ids.min())
    span = int(chunk_ids.max()) - first + 1
    contributions = w * (tf / (tf + norm))
    if span <= max(1 << 20, 8 * len(chunk_ids)):
        sums = np.bincount(chunk_ids - first, weights=contributions)
        scored = np.flatnonzero(sums)
        return Bm25Scores(scored + first, sums[scored], len(packed))
    ids, slot = np.unique(chunk_ids, return_inverse=True)
    return Bm25Scores(ids, np.bincount(slot, weights=contributions), len(packed))


def searches(rt: Ragtune, qids: list[str], texts: list[str], vectors: np.ndarray, group_of_query: dict[str, int],
             mode: str, warmup: int) -> dict[str, dict[str, Any]]:
    """Every variant for every question, interleaved (the order rotates per question)."""
    system = Principal.system()
    # name -> (collection, principal, bm25_statistics, the code before this change)
    variants: dict[str, Any] = {
        BEFORE: lambda g: (SHARED, principal_of(g), "global", True),
        "global statistics (setting global)": lambda g: (SHARED, principal_of(g), "global", False),
        VISIBLE: lambda g: (SHARED, principal_of(g), "visible", False),
        ISOLATED: lambda g: (isolated(g), system, "global", False),
        # the same collection searched as the group's principal: an exact dense scan like the shared
        # collection's (the ACL condition makes the count pick it), so hybrid is comparable exactly
        ISOLATED_EXACT: lambda g: (isolated(g), principal_of(g), "visible", False),
        ADMIN_BEFORE: lambda g: (SHARED, system, "global", True),
        ADMIN_AFTER: lambda g: (SHARED, system, "visible", False),
    }
    names = list(variants)
    runs: dict[str, dict[str, dict[str, float]]] = {n: {} for n in names}
    ordered: dict[str, dict[str, list[tuple[str, float]]]] = {n: {} for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    stage: dict[str, list[float]] = {n: [] for n in names}
    for i, qid in enumerate(qids):
        timed = i >= warmup
        for j in range(len(names)):
            name = names[(i + j) % len(names)]
            collection, principal, stats, before = variants[name](group_of_query[qid])
            searcher_module.bm25_scores = head_bm25_scores if before else bm25_scores
            try:
                res = rt.search(texts[i], collection=collection, top_k=K, mode=mode, principal=principal,
                                query_vector=vectors[i] if mode != "bm25" else None, bm25_statistics=stats)
            finally:
                searcher_module.bm25_scores = bm25_scores
            if timed:
                times[name].append(res.timings_ms["search"])
                stage[name].append(res.timings_ms.get("bm25", 0.0))
            runs[name][qid] = {h.uri: h.score for h in res.hits}
            ordered[name][qid] = [(h.uri, h.score) for h in res.hits]
    return {n: {"run": runs[n], "ordered": ordered[n], "times": times[n], "bm25_stage": stage[n]} for n in names}


def compare(a: dict[str, list[tuple[str, float]]], b: dict[str, list[tuple[str, float]]]) -> dict[str, Any]:
    """How far two variants' top-k lists are apart: same ranked lists, and the largest score gap."""
    same, gap = 0, 0.0
    for qid, hits in a.items():
        other = b[qid]
        same += [u for u, _ in hits] == [u for u, _ in other]
        by_uri = dict(other)
        gap = max([gap, *(abs(s - by_uri[u]) for u, s in hits if u in by_uri)])
    return {"identical_top_k": same, "queries": len(a), "max_abs_score_difference": gap}


def bm25_read_cost(rt: Ragtune, texts: list[str], groups: int) -> dict[str, Any]:
    """BM25's reads and sum alone for the same principal and question, in one snapshot, the three
    interleaved (the order rotates): before (two statements), global and visible (one statement)."""
    info = rt.collection(SHARED)
    terms = [rt.analyzer.term_counts(t) for t in texts]
    params = Bm25Params(rt.settings.retrieval.bm25_k1, rt.settings.retrieval.bm25_b)
    variants: list[tuple[str, Any]] = [
        ("before (HEAD), global", lambda c, g: head_bm25_scores(c, info, terms[i], params)),
        ("after, global", lambda c, g: bm25_scores(c, info, terms[i], params)),
        ("after, visible", lambda c, g: bm25_scores(c, info, terms[i], params, g)),
    ]
    times: dict[str, list[float]] = {name: [] for name, _ in variants}
    with rt.db.snapshot() as conn:
        for i in range(len(terms)):
            readable = [f"g{1 + pick(texts[i], groups)}"]
            for j in range(len(variants)):
                name, fn = variants[(i + j) % len(variants)]
                started = time.perf_counter()
                fn(conn, readable)
                times[name].append((time.perf_counter() - started) * 1e6)
    return {"median_us": {name: statistics.median(v) for name, v in times.items()}, "calls": len(terms)}


def write_cost(rt: Ragtune, docs: list[LoadedDocument], n: int, groups: int, repeats: int) -> dict[str, Any]:
    """N paragraphs (stored embeddings: the time is storing, not embedding) added to the ACL'd
    collection in one batch per group, moved to the next group (an ACL-only change), deleted; the
    class statements of each, timed alone and rolled back."""
    step = max(1, len(docs) // n)
    picked = [LoadedDocument(uri=f"write-bench/{d.uri}", text=d.text, title=d.title, metadata=d.metadata)
              for d in docs[::step][:n]]
    group = {d.uri: 1 + i % groups for i, d in enumerate(picked)}
    info = rt.collection(SHARED)
    times: dict[str, list[float]] = {}

    def record(name: str, seconds: float) -> None:
        times.setdefault(name, []).append(seconds)

    for _ in range(repeats):
        started = time.perf_counter()
        for g in range(1, groups + 1):
            report = rt.ingest_documents([d for d in picked if group[d.uri] == g], collection=SHARED,
                                         acl=[f"g{g}"], whole_documents=True)
            assert report.embedded == 0 and report.failed == [], report
        record(f"add {len(picked)} documents ({groups} batches, one ACL each)", time.perf_counter() - started)
        with rt.db.connection() as conn:
            rows = conn.execute(
                "SELECT d.id AS doc, c.acl, c.lex_len, array_agg(p.term_id) FILTER (WHERE p.term_id IS NOT NULL)"
                " AS terms FROM documents d JOIN chunks c ON c.document_id = d.id"
                " LEFT JOIN postings p ON p.chunk_id = c.id WHERE d.collection_id = %s AND starts_with(d.uri, %s)"
                " GROUP BY d.id, c.id", (info.id, "write-bench/")).fetchall()
            per_acl: dict[tuple[str, ...], list[Any]] = {}
            for r in rows:
                per_acl.setdefault(tuple(r["acl"]), []).append(r)
            seconds = 0.0
            for acl, members in per_acl.items():  # the call each batch's write makes
                df: Counter[int] = Counter()
                for r in members:
                    df.update(r["terms"] or [])
                delta = {acl: AclClassDelta(len(members), sum(r["lex_len"] for r in members), dict(df))}
                with conn.transaction(force_rollback=True):
                    started = time.perf_counter()
                    add_acl_statistics(conn, info.id, delta)
                    seconds += time.perf_counter() - started
            record("  of which: the ACL class statistics (add_acl_statistics)", seconds)
            doc_ids = sorted({r["doc"] for r in rows})
            seconds = 0.0
            for doc_id in doc_ids:  # one transaction per document, as an ACL-only change makes
                with conn.transaction(force_rollback=True):
                    started = time.perf_counter()
                    move_acl_statistics(conn, info.id, doc_id, ["moved"])
                    seconds += time.perf_counter() - started
            record("  of which: moving their class statistics (move_acl_statistics)", seconds)
        started = time.perf_counter()
        for g in range(1, groups + 1):  # an ACL-only change: the next group
            rt.ingest_documents([d for d in picked if group[d.uri] == g], collection=SHARED,
                                acl=[f"g{1 + g % groups}"], change_acl=True, whole_documents=True)
        record(f"change the ACL of the {len(picked)} documents", time.perf_counter() - started)
        with rt.db.connection() as conn, conn.transaction(force_rollback=True):
            # what a delete adds, as standalone statements: an upper bound (the delete itself does it
            # inside the statements that delete the postings and chunks, reading them once)
            started = time.perf_counter()
            conn.execute(
                "WITH g AS (SELECT k.id AS class_id, p.term_id, count(*) AS n FROM chunks c"
                " JOIN postings p ON p.chunk_id = c.id JOIN acl_classes k ON k.collection_id = c.collection_id"
                " AND k.acl = c.acl WHERE c.document_id = ANY(%s) GROUP BY 1, 2)"
                " UPDATE acl_class_terms x SET df = x.df - g.n FROM g WHERE x.class_id = g.class_id"
                " AND x.term_id = g.term_id", (doc_ids,))
            conn.execute(
                "UPDATE acl_classes k SET n_chunks = k.n_chunks - g.n, total_len = k.total_len - g.len"
                " FROM (SELECT collection_id, acl, count(*) AS n, sum(lex_len) AS len FROM chunks"
                " WHERE document_id = ANY(%s) GROUP BY 1, 2) g WHERE k.collection_id = g.collection_id"
                " AND k.acl = g.acl", (doc_ids,))
            record("  of which (upper bound): the class statistics of a delete", time.perf_counter() - started)
        started = time.perf_counter()
        rt.delete([d.uri for d in picked], collection=SHARED)
        record(f"delete the {len(picked)} documents", time.perf_counter() - started)
    n = len(picked)
    order = [f"add {n} documents ({groups} batches, one ACL each)",
             "  of which: the ACL class statistics (add_acl_statistics)",
             f"change the ACL of the {n} documents", "  of which: moving their class statistics (move_acl_statistics)",
             f"delete the {n} documents", "  of which (upper bound): the class statistics of a delete"]
    return {k: {"median_s": statistics.median(times[k]), "runs_s": times[k]} for k in order}


def timing_channel(rt: Ragtune, docs: list[LoadedDocument], sizes: list[int], repeats: int) -> dict[str, Any]:
    """What per-stage timings still tell. One collection per size, side by side: 300 public
    paragraphs, one g1 document holding "otterword", and ``size`` g2 documents (not readable by g1)
    holding HRSECRETOTTER and "otterword". A g1 principal searches every collection in turn (the
    order rotating, so load drift hits all alike) for the hidden-only word, the shared word, and a
    word no document holds (the noise floor). Medians of the search and of its BM25 stage."""
    hidden_text = f"{SECRET_WORD} otterword " + docs[301].text  # one text: embedded once, then from the cache
    names = {size: f"bm25stats-timing-{size}" for size in sizes}
    for size, name in names.items():
        rt.ingest_documents(docs[:300], collection=name, whole_documents=True)
        rt.ingest_documents([LoadedDocument(uri="g1-doc", text=f"otterword {docs[300].text}")], collection=name,
                            acl=["g1"], whole_documents=True)
        batch = [LoadedDocument(uri=f"g2-{i}", text=hidden_text) for i in range(size)]
        for start in range(0, len(batch), 1000):
            rt.ingest_documents(batch[start:start + 1000], collection=name, acl=["g2"], whole_documents=True)
    reader = principal_of(1)
    combos = [(size, stats, query) for size in sizes for stats in ("visible", "global")
              for query in (SECRET_WORD.lower(), "otterword", "zqxjnoword")]
    times: dict[tuple[int, str, str], list[tuple[float, float]]] = {c: [] for c in combos}
    for i in range(repeats + 20):
        for j in range(len(combos)):
            size, stats, query = combos[(i + j) % len(combos)]
            res = rt.search(query, collection=names[size], mode="bm25", principal=reader, bm25_statistics=stats)
            assert [h.uri for h in res.hits] == (["g1-doc"] if query == "otterword" else []), res.hits
            if i >= 20:
                times[(size, stats, query)].append((res.timings_ms["search"], res.timings_ms.get("bm25", 0.0)))
    for name in names.values():
        rt.drop_collection(name)
    return {str(size): {f"{stats}: {query}": {
        "search_p50_ms": statistics.median(s for s, _ in times[(size, stats, query)]),
        "bm25_stage_p50_ms": statistics.median(b for _, b in times[(size, stats, query)])}
        for (s2, stats, query) in combos if s2 == size} for size in sizes}


def writes_with_and_without(rt: Ragtune, docs: list[LoadedDocument], n: int, groups: int,
                            repeats: int) -> dict[str, Any]:
    """The same writes into a fresh collection with the class maintenance and without it (its two
    functions swapped for no-ops, as before this change; that collection's class rows are then
    wrong, and it is dropped), alternating: add N paragraphs in one batch per group, then change
    every ACL (an ACL-only change, one transaction per document)."""
    import ragtune.store.repository as repository

    step = max(1, len(docs) // n)
    picked = [LoadedDocument(uri=f"ab/{d.uri}", text=d.text, title=d.title) for d in docs[1::step][:n]]
    group = {d.uri: 1 + i % groups for i, d in enumerate(picked)}
    times: dict[str, list[float]] = {}
    for r in range(repeats):
        for with_classes in ((True, False) if r % 2 == 0 else (False, True)):
            label = "with" if with_classes else "without"
            name = f"bm25stats-ab-{label}"
            rt.collection(name, create=True)
            if not with_classes:
                repository.add_acl_statistics = lambda *a: None  # type: ignore[assignment]
                repository.move_acl_statistics = lambda *a: None  # type: ignore[assignment]
            try:
                started = time.perf_counter()
                for g in range(1, groups + 1):
                    rt.ingest_documents([d for d in picked if group[d.uri] == g], collection=name, acl=[f"g{g}"],
                                        whole_documents=True)
                times.setdefault(f"add {len(picked)}, {label} class statistics", []).append(
                    time.perf_counter() - started)
                started = time.perf_counter()
                for g in range(1, groups + 1):
                    rt.ingest_documents([d for d in picked if group[d.uri] == g], collection=name,
                                        acl=[f"g{1 + g % groups}"], change_acl=True, whole_documents=True)
                times.setdefault(f"change {len(picked)} ACLs, {label} class statistics", []).append(
                    time.perf_counter() - started)
            finally:
                repository.add_acl_statistics = add_acl_statistics
                repository.move_acl_statistics = move_acl_statistics
            rt.drop_collection(name)
    return {k: {"median_s": statistics.median(v), "runs_s": v} for k, v in sorted(times.items())}


def backfill(rt: Ragtune) -> dict[str, Any]:
    """Migration 007 as it runs on upgrade, on this whole database, rolled back."""
    (migration,) = [m for m in load_migrations() if m.version == 7]
    with rt.db.connection() as conn:
        sizes = conn.execute("SELECT (SELECT count(*) FROM postings) AS postings, (SELECT count(*) FROM chunks)"
                             " AS chunks, (SELECT count(*) FROM collections) AS collections").fetchone()
        with conn.transaction(force_rollback=True):
            conn.execute("SET LOCAL statement_timeout = 0")
            conn.execute("DROP TABLE acl_class_terms, acl_classes")
            started = time.perf_counter()
            conn.execute(migration.sql.encode())
            seconds = time.perf_counter() - started
        rows = conn.execute("SELECT (SELECT count(*) FROM acl_classes) AS classes,"
                            " (SELECT count(*) FROM acl_class_terms) AS class_terms").fetchone()
    return {"seconds": seconds, **sizes, **rows}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--limit", type=int, default=None, help="answerable questions (default: all 5,928)")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--write-docs", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timing-sizes", type=int, nargs="+", default=[0, 1000, 4000, 16000],
                        help="how many unreadable documents the timing-channel measurement adds, step by step")
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".cache" / "ragtune" / "bm25-statistics-data")
    args = parser.parse_args()
    load_before = load_average()
    rt = Ragtune(Settings(data_dir=args.data_dir))
    ds = load_dataset("squad", rt.settings.resolved_cache_dir / "packages", limit_queries=args.limit)
    docs = dataset_documents(ds)
    group_of = {d.uri: pick(ds.corpus[d.uri].title, args.groups + 1) for d in docs}  # 0: public
    started = time.perf_counter()
    index(rt, docs, group_of, args.groups)
    console.print(f"indexed in {time.perf_counter() - started:.0f}s; load {load_average()}")
    qids = list(ds.queries)
    texts = [ds.queries[q] for q in qids]
    group_of_query = {}
    for q in qids:
        (doc,) = ds.qrels[q]
        g = group_of[doc]
        group_of_query[q] = g if g else 1 + pick(q, args.groups)
    started = time.perf_counter()
    vectors = rt.embedder.embed_batch(texts)
    console.print(f"embedded {len(texts)} questions in {time.perf_counter() - started:.0f}s")
    shares = Counter(group_of.values())
    results: dict[str, Any] = {}
    for mode in ("bm25", "hybrid"):
        out = searches(rt, qids, texts, vectors, group_of_query, mode, args.warmup)
        rows = {}
        for name, r in out.items():
            metrics = retrieval_metrics(ds.qrels, r["run"])
            rows[name] = {"nDCG@10": metrics["nDCG@10"], "R@10": metrics["R@10"], "RR@10": metrics["RR@10"],
                          **pct(r["times"]), "bm25_stage_p50_ms": float(np.median(r["bm25_stage"]))}
        results[mode] = {
            "rows": rows,
            "visible_vs_isolated": compare(out[VISIBLE]["ordered"], out[ISOLATED]["ordered"]),
            "visible_vs_isolated_exact_dense": compare(out[VISIBLE]["ordered"], out[ISOLATED_EXACT]["ordered"]),
            "before_vs_isolated": compare(out[BEFORE]["ordered"], out[ISOLATED]["ordered"]),
            "admin_after_vs_before": compare(out[ADMIN_AFTER]["ordered"], out[ADMIN_BEFORE]["ordered"]),
        }
        console.print(f"{mode} done; load {load_average()}")
    query_cost = bm25_read_cost(rt, texts[:2000], args.groups)
    writes = write_cost(rt, docs, args.write_docs, args.groups, args.repeats)
    writes.update(writes_with_and_without(rt, docs, args.write_docs, args.groups, 2 * args.repeats))
    timing = timing_channel(rt, docs, args.timing_sizes, 200)
    migration = backfill(rt)
    rt.close()
    load_after = load_average()

    for mode, res in results.items():
        table = Table(title=f"SQuAD 2.0 dev, {mode}: {len(qids)} questions, {len(docs)} paragraphs "
                            f"(public {shares[0]}, groups {[shares[g] for g in range(1, args.groups + 1)]})")
        for col in ("statistics", "nDCG@10", "R@10", "p50 ms", "p95 ms", "bm25 stage p50 ms"):
            table.add_column(col, justify="right")
        for name, row in res["rows"].items():
            table.add_row(name, f"{row['nDCG@10']:.4f}", f"{row['R@10']:.4f}", f"{row['p50_ms']:.2f}",
                          f"{row['p95_ms']:.2f}", f"{row['bm25_stage_p50_ms']:.2f}")
        console.print(table)
        for key in ("visible_vs_isolated", "visible_vs_isolated_exact_dense", "before_vs_isolated",
                    "admin_after_vs_before"):
            c = res[key]
            console.print(f"  {key}: identical top-10 in {c['identical_top_k']}/{c['queries']},"
                          f" max |score difference| {c['max_abs_score_difference']:.3g}")
        rows = res["rows"]
        extra = rows[VISIBLE]["p50_ms"] - rows[BEFORE]["p50_ms"]
        admin = rows[ADMIN_AFTER]["p50_ms"] / rows[ADMIN_BEFORE]["p50_ms"]
        console.print(f"  visible (after) - before p50: {extra:+.3f} ms ({100 * extra / rows[BEFORE]['p50_ms']:+.1f}%);"
                      f" admin after/before p50 x{admin:.3f}")
    console.print(f"BM25 reads and sum alone, median of {query_cost['calls']} questions: "
                  + ", ".join(f"{k} {v:.0f} us" for k, v in query_cost["median_us"].items()))
    table = Table(title=f"write cost, medians of {args.repeats}")
    table.add_column("operation")
    table.add_column("seconds", justify="right")
    for name, row in writes.items():
        table.add_row(name, f"{row['median_s']:.4f}")
    table.add_row(f"migration 007 backfill ({migration['postings']:,} postings, {migration['chunks']:,} chunks,"
                  f" {migration['collections']} collections)", f"{migration['seconds']:.3f}")
    console.print(table)
    table = Table(title="timing channel: a g1 principal's BM25 search while g2 documents are added (p50 ms)")
    table.add_column("unreadable documents", justify="right")
    for key in next(iter(timing.values())):
        table.add_column(f"{key}: search / bm25 stage", justify="right")
    for size, row in timing.items():
        table.add_row(size, *(f"{v['search_p50_ms']:.2f} / {v['bm25_stage_p50_ms']:.2f}" for v in row.values()))
    console.print(table)
    console.print(f"load average (1/5/15 min): before {load_before}, after {load_after}")
    path = write_result("bm25_statistics", {
        "dataset": "squad", "questions": len(qids), "paragraphs": len(docs), "groups": args.groups,
        "shares": {("public" if g == 0 else f"g{g}"): shares[g] for g in sorted(shares)},
        "k": K, "warmup": args.warmup, "results": results, "bm25_read_and_sum": query_cost,
        "write_cost": writes, "write_docs": args.write_docs, "migration_007": migration, "timing_channel": timing,
        "load_before": load_before, "load_after": load_after})
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
