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
    # one round trip: the collection's counts, with its rows of the query's terms (none: one row of NULLs)
    rows = conn.execute(
        "SELECT c.n_chunks, c.total_len, t.id, t.term, t.df FROM collections c"
        " LEFT JOIN terms t ON t.collection_id = c.id AND t.term = ANY(%s) AND t.df > 0 WHERE c.id = %s",
        (sorted(terms), info.id),
    ).fetchall()
    found = [r for r in rows if r["id"] is not None]
    if not found or rows[0]["n_chunks"] <= 0:
        return None
    n = float(rows[0]["n_chunks"])
    return QueryTerms(
        ids=[r["id"] for r in found],
        weights=[terms[r["term"]] * math.log(1 + (n - r["df"] + 0.5) / (r["df"] + 0.5)) for r in found],
        avgdl=max(rows[0]["total_len"], 1) / n,
    )


def _tf_part(params: Bm25Params, avgdl: float) -> sql.Composable:
    # k1 * (1 - b + b * dl / avgdl) folded into two constants: fewer operations per posting.
    # float8 literals: an untyped literal would make PostgreSQL do this arithmetic in numeric,
    # measured 6x slower over the postings of common terms.
    return sql.SQL("p.tf / (p.tf + ({k}::float8 + {slope}::float8 * p.dl))").format(
        k=sql.Literal(float(params.k1 * (1 - params.b))), slope=sql.Literal(float(params.k1 * params.b / avgdl)))


@dataclass(frozen=True)
class Bm25Side:
    """One BM25 statement's answer: its ranked list, the BM25 scores of the given dense hits it
    covers, and the dense scores of its ranked chunks (when a query vector was given)."""

    ranked: list[tuple[int, float]]
    bm25_of_dense: dict[int, float]
    dense_of_ranked: dict[int, float]
    ranges: int = 1  # how many chunk-id ranges were summed in parallel


def bm25_side(conn: Conn, info: CollectionInfo, qt: QueryTerms | None, k: int, cond: Condition,
              params: Bm25Params, *, qvec: np.ndarray | None = None, dense_ids: Sequence[int] = (),
              chunk_range: tuple[int | None, int | None] = (None, None)) -> Bm25Side:
    """Exact top-k BM25, and what hybrid fusion needs besides, in one statement.

    Every posting of every query term is summed inside PostgreSQL; the sums are kept (a
    materialised CTE) so the BM25 scores of the dense hits are read from them instead of probing
    the postings again. ``chunk_range`` = [low, high) restricts the sum to a range of chunk ids,
    so disjoint ranges can run on parallel connections and their top-k lists merge exactly.

    Static MaxScore pruning (score rare terms first, bound the rest) was tried and measured on
    HotpotQA: its bound was below the k-th partial score in under 20% of queries, so with the
    fallback it was slower than summing everything. The cost is the postings of common terms.
    """
    if qt is None:
        return Bm25Side([], {}, {})
    low, high = chunk_range
    bounds: sql.Composable = sql.SQL("")
    if low is not None:
        bounds += sql.SQL(" AND p.chunk_id >= {}").format(sql.Literal(int(low)))
    if high is not None:
        bounds += sql.SQL(" AND p.chunk_id < {}").format(sql.Literal(int(high)))
    restrict = sql.SQL(" JOIN chunks c ON c.id = s.id WHERE {}").format(cond.sql) if cond.restrictive else sql.SQL("")
    dense_col: sql.Composable
    dense_join: sql.Composable
    if qvec is not None:
        vt = _vector_type(info)
        dense_col = sql.SQL("1 - (c.embedding::{vt} <=> %s::{vt})").format(vt=vt)
        # only for chunks the dense list lacks: reading a vector can mean a TOAST fetch
        dense_join = sql.SQL(" LEFT JOIN chunks c ON c.id = t.id AND t.id <> ALL(%s::bigint[])")
    else:
        dense_col, dense_join = sql.SQL("NULL::float8"), sql.SQL("")
    if qvec is None and not dense_ids:
        # BM25 alone: no sums to keep, so no materialised CTE (measured 3 ms less per statement)
        query = sql.SQL(
            "SELECT s.id, s.score, NULL::float8 AS dense, true AS ranked FROM"
            " (SELECT p.chunk_id AS id, sum(q.w * {tf}) AS score"
            "  FROM unnest(%s::bigint[], %s::float8[]) AS q(id, w)"
            "  JOIN postings p ON p.term_id = q.id{bounds} GROUP BY p.chunk_id) s{restrict}"
            " ORDER BY s.score DESC, s.id LIMIT {k}"
        ).format(tf=_tf_part(params, qt.avgdl), bounds=bounds, restrict=restrict, k=sql.Literal(k))
    else:
        query = sql.SQL(
            "WITH q(id, w) AS (SELECT * FROM unnest(%s::bigint[], %s::float8[])),"
            " s AS MATERIALIZED (SELECT p.chunk_id AS id, sum(q.w * {tf}) AS score"
            "  FROM q JOIN postings p ON p.term_id = q.id{bounds} GROUP BY p.chunk_id),"
            " t AS MATERIALIZED (SELECT s.id, s.score FROM s{restrict} ORDER BY s.score DESC, s.id LIMIT {k})"
            " SELECT t.id, t.score, {dense_col} AS dense, true AS ranked FROM t{dense_join}"
            " UNION ALL"
            " SELECT s.id, s.score, NULL::float8, false FROM unnest(%s::bigint[]) AS d(id)"
            " JOIN s ON s.id = d.id"
        ).format(tf=_tf_part(params, qt.avgdl), bounds=bounds, restrict=restrict, k=sql.Literal(k),
                 dense_col=dense_col, dense_join=dense_join)
    # placeholders in text order: terms, weights, the condition's, the query vector, dense ids
    values: list[Any] = [qt.ids, qt.weights, *(cond.params if cond.restrictive else [])]
    if qvec is not None or dense_ids:
        values += [*([qvec, list(dense_ids)] if qvec is not None else []), list(dense_ids)]
    ranked: list[tuple[int, float]] = []
    bm25_of_dense: dict[int, float] = {}
    dense_of_ranked: dict[int, float] = {}
    for r in conn.execute(query, values).fetchall():
        if r["ranked"]:
            ranked.append((r["id"], float(r["score"])))
            if r["dense"] is not None:
                dense_of_ranked[r["id"]] = float(r["dense"])
        else:
            bm25_of_dense[r["id"]] = float(r["score"])
    ranked.sort(key=lambda kv: (-kv[1], kv[0]))
    return Bm25Side(ranked, bm25_of_dense, dense_of_ranked)


def fill_scores(conn: Conn, info: CollectionInfo, qt: QueryTerms | None, qvec: np.ndarray, params: Bm25Params, *,
                bm25_for: Sequence[int], dense_for: Sequence[int]) -> tuple[dict[int, float], dict[int, float]]:
    """BM25 scores of ``bm25_for`` and dense scores of ``dense_for``, exactly, in one statement:
    what convex fusion needs when the dense and BM25 lists were searched in parallel. A chunk in
    ``bm25_for`` with no query term is absent from the BM25 scores (its BM25 is 0)."""
    if not bm25_for and not dense_for:
        return {}, {}
    vt = _vector_type(info)
    query = sql.SQL(
        "SELECT c.id, 1 - (c.embedding::{vt} <=> %s::{vt}) AS score, true AS dense FROM chunks c"
        " WHERE c.id = ANY(%s::bigint[])"
        " UNION ALL"
        " SELECT p.chunk_id, sum(q.w * {tf}), false FROM unnest(%s::bigint[], %s::float8[]) AS q(id, w)"
        " JOIN postings p ON p.term_id = q.id AND p.chunk_id = ANY(%s::bigint[]) GROUP BY p.chunk_id"
    ).format(vt=vt, tf=_tf_part(params, qt.avgdl if qt is not None else 1.0))
    ids, weights = (qt.ids, qt.weights) if qt is not None else ([], [])
    bm25: dict[int, float] = {}
    dense: dict[int, float] = {}
    for r in conn.execute(query, (qvec, list(dense_for), ids, weights, list(bm25_for))).fetchall():
        (dense if r["dense"] else bm25)[r["id"]] = float(r["score"])
    return bm25, dense


def fetch_chunks(conn: Conn, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    if not ids:
        return {}
    rows = conn.execute(
        "SELECT c.id, c.document_id, c.ordinal, c.body, c.start_char, c.end_char, c.heading, c.tokens,"
        " c.metadata, d.uri FROM chunks c JOIN documents d ON d.id = c.document_id WHERE c.id = ANY(%s)",
        (list(ids),),
    ).fetchall()
    return {r["id"]: r for r in rows}
