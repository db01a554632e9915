"""The SQL behind dense and BM25 retrieval. Everything runs inside PostgreSQL.

Dense: the collection's partial HNSW index with pgvector's iterative scans, so rows removed by
filters or ACL are replaced by further index candidates; when few chunks match at all, an exact
scan over just those chunks instead (``exact_scan_threshold``).

BM25 (Lucene/bm25s variant): idf = ln(1 + (N - df + 0.5) / (df + 0.5)),
tf part = tf / (tf + k1 * (1 - b + b * dl / avgdl)), summed over query terms (with multiplicity),
with N, avgdl and df read from the exact statistics kept by every write.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from psycopg import sql

from ragtune.retrieve.filters import Condition
from ragtune.store.database import Conn
from ragtune.store.repository import CollectionInfo


@dataclass(frozen=True)
class Bm25Params:
    k1: float = 1.5
    b: float = 0.75


def _vector_type(info: CollectionInfo) -> sql.Composable:
    return sql.SQL("vector({})").format(sql.Literal(info.dimension))


def count_matching(conn: Conn, info: CollectionInfo, cond: Condition, limit: int) -> int:
    query = sql.SQL(
        "SELECT count(*) AS n FROM (SELECT 1 FROM chunks c WHERE c.collection_id = {} AND {} LIMIT {}) x"
    ).format(sql.Literal(info.id), cond.sql, sql.Literal(limit))
    row = conn.execute(query, cond.params).fetchone()
    return int(row["n"]) if row else 0


def dense_search(conn: Conn, info: CollectionInfo, qvec: np.ndarray, k: int, cond: Condition,
                 *, ef_search: int, exact: bool) -> list[tuple[int, float]]:
    vt = _vector_type(info)
    # The expression and predicate must match the partial index exactly for the planner to use it,
    # so collection id and dimension are literals, not parameters.
    query = sql.SQL(
        "WITH cand AS MATERIALIZED ("
        " SELECT c.id, c.embedding::{vt} <=> %s::{vt} AS dist FROM chunks c"
        " WHERE c.collection_id = {cid} AND {cond}"
        " ORDER BY c.embedding::{vt} <=> %s::{vt} LIMIT {k})"
        " SELECT id, 1 - dist AS score FROM cand ORDER BY dist, id"
    ).format(vt=vt, cid=sql.Literal(info.id), cond=cond.sql, k=sql.Literal(k))
    if exact:
        conn.execute("SET LOCAL enable_indexscan = off")
    else:
        conn.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(max(ef_search, min(k, 1000)))))
        conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
    try:
        rows = conn.execute(query, [qvec, *cond.params, qvec]).fetchall()
    finally:
        if exact:
            conn.execute("SET LOCAL enable_indexscan = on")
    return [(r["id"], float(r["score"])) for r in rows]


def dense_scores_for(conn: Conn, info: CollectionInfo, qvec: np.ndarray, ids: Sequence[int]
                     ) -> dict[int, float]:
    if not ids:
        return {}
    vt = _vector_type(info)
    rows = conn.execute(
        sql.SQL("SELECT id, 1 - (embedding::{vt} <=> %s::{vt}) AS score FROM chunks WHERE id = ANY(%s)").format(vt=vt),
        [qvec, list(ids)],
    ).fetchall()
    return {r["id"]: float(r["score"]) for r in rows}


@dataclass(frozen=True)
class QueryTerms:
    """The query's terms present in the collection with their BM25 weight (query term frequency
    x idf) and the collection's average chunk length, read in the search's snapshot."""

    ids: list[int]
    weights: list[float]
    avgdl: float


def bm25_query_terms(conn: Conn, info: CollectionInfo, terms: Counter[str]) -> QueryTerms | None:
    if not terms:
        return None
    stats = conn.execute("SELECT n_chunks, total_len FROM collections WHERE id = %s", (info.id,)).fetchone()
    rows = conn.execute(
        "SELECT id, term, df FROM terms WHERE collection_id = %s AND term = ANY(%s) AND df > 0",
        (info.id, sorted(terms)),
    ).fetchall()
    if not stats or not rows or stats["n_chunks"] <= 0:
        return None
    n = float(stats["n_chunks"])
    return QueryTerms(
        ids=[r["id"] for r in rows],
        weights=[terms[r["term"]] * math.log(1 + (n - r["df"] + 0.5) / (r["df"] + 0.5)) for r in rows],
        avgdl=max(stats["total_len"], 1) / n,
    )


def _tf_part(params: Bm25Params, avgdl: float) -> sql.Composable:
    # float8 literals: an untyped literal would make PostgreSQL do this arithmetic in numeric,
    # measured 6x slower over the postings of common terms.
    return sql.SQL("p.tf / (p.tf + {k1}::float8 * (1 - {b}::float8 + {b}::float8 * p.dl / {avgdl}::float8))").format(
        k1=sql.Literal(float(params.k1)), b=sql.Literal(float(params.b)), avgdl=sql.Literal(float(avgdl)))


# Exhaustive: sum every posting of every query term. Exact; its cost is the postings of common terms.
_BM25_FULL = (
    "WITH q(id, w) AS (SELECT * FROM unnest(%s::bigint[], %s::float8[])),"
    " s AS (SELECT p.chunk_id AS id, sum(q.w * {tf}) AS score"
    "  FROM q JOIN postings p ON p.term_id = q.id GROUP BY p.chunk_id)"
)


def bm25_search(conn: Conn, qt: QueryTerms | None, k: int, cond: Condition,
                params: Bm25Params) -> list[tuple[int, float]]:
    """Exact top-k BM25: every posting of every query term is summed, inside PostgreSQL.

    Static MaxScore pruning (score rare terms first, bound the rest) was tried and measured on
    HotpotQA: its bound was below the k-th partial score in under 20% of queries, so with the
    fallback it was slower than summing everything. The cost is the postings of common terms.
    """
    if qt is None:
        return []
    tf = _tf_part(params, qt.avgdl)
    cte = sql.SQL(_BM25_FULL).format(tf=tf)
    if cond.restrictive:
        tail = sql.SQL(" SELECT s.id, s.score FROM s JOIN chunks c ON c.id = s.id WHERE {}"
                       " ORDER BY s.score DESC, s.id LIMIT {}").format(cond.sql, sql.Literal(k))
    else:
        tail = sql.SQL(" SELECT s.id, s.score FROM s ORDER BY s.score DESC, s.id LIMIT {}").format(sql.Literal(k))
    rows = conn.execute(cte + tail, [qt.ids, qt.weights, *cond.params]).fetchall()
    return [(r["id"], float(r["score"])) for r in rows]


def bm25_scores_for(conn: Conn, qt: QueryTerms | None, ids: Sequence[int], params: Bm25Params) -> dict[int, float]:
    """Exact BM25 scores of the given chunks, looked up by index (chunk, then term)."""
    if not ids or qt is None:
        return {}
    query = sql.SQL(
        "SELECT p.chunk_id AS id, sum(q.w * {tf}) AS score"
        " FROM unnest(%s::bigint[], %s::float8[]) AS q(id, w)"
        " JOIN postings p ON p.term_id = q.id AND p.chunk_id = ANY(%s) GROUP BY p.chunk_id"
    ).format(tf=_tf_part(params, qt.avgdl))
    rows = conn.execute(query, [qt.ids, qt.weights, list(ids)]).fetchall()
    return {r["id"]: float(r["score"]) for r in rows}


def fetch_chunks(conn: Conn, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    if not ids:
        return {}
    rows = conn.execute(
        "SELECT c.id, c.document_id, c.ordinal, c.body, c.start_char, c.end_char, c.heading, c.tokens,"
        " c.metadata, d.uri FROM chunks c JOIN documents d ON d.id = c.document_id WHERE c.id = ANY(%s)",
        (list(ids),),
    ).fetchall()
    return {r["id"]: r for r in rows}
