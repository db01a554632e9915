"""The SQL behind dense and BM25 retrieval. Everything runs inside PostgreSQL.

Dense: the collection's partial HNSW index with pgvector's iterative scans, so rows removed by
filters or ACL are replaced by further index candidates; when few chunks match at all, an exact
scan over just those chunks instead (``exact_scan_threshold``).

BM25 (Lucene/bm25s variant): idf = ln(1 + (N - df + 0.5) / (df + 0.5)),
tf part = tf / (tf + k1 * (1 - b + b * dl / avgdl)), summed over query terms (with multiplicity),
with N, avgdl and df read from the exact statistics kept by every write.
"""

from __future__ import annotations

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


_BM25_CTE = (
    "WITH q AS ("
    " SELECT t.id, t.df, x.qtf FROM unnest(%s::text[], %s::int[]) AS x(term, qtf)"
    " JOIN terms t ON t.collection_id = {cid} AND t.term = x.term WHERE t.df > 0),"
    " st AS (SELECT n_chunks::float8 AS n, greatest(total_len, 1)::float8 / greatest(n_chunks, 1) AS avgdl"
    "  FROM collections WHERE id = {cid}),"
    " s AS (SELECT p.chunk_id AS id,"
    "  sum(q.qtf * ln(1 + (st.n - q.df + 0.5) / (q.df + 0.5))"
    "      * p.tf / (p.tf + {k1} * (1 - {b} + {b} * p.dl / st.avgdl))) AS score"
    "  FROM q JOIN postings p ON p.term_id = q.id CROSS JOIN st {only} GROUP BY p.chunk_id)"
)


def _bm25_args(terms: Counter[str]) -> list[Any]:
    vocab = sorted(terms)
    return [vocab, [terms[t] for t in vocab]]


def bm25_search(conn: Conn, info: CollectionInfo, terms: Counter[str], k: int, cond: Condition,
                params: Bm25Params) -> list[tuple[int, float]]:
    if not terms:
        return []
    cte = sql.SQL(_BM25_CTE).format(
        cid=sql.Literal(info.id), k1=sql.Literal(params.k1), b=sql.Literal(params.b), only=sql.SQL("")
    )
    if cond.restrictive:
        tail = sql.SQL(" SELECT s.id, s.score FROM s JOIN chunks c ON c.id = s.id WHERE {}"
                       " ORDER BY s.score DESC, s.id LIMIT {}").format(cond.sql, sql.Literal(k))
    else:
        tail = sql.SQL(" SELECT s.id, s.score FROM s ORDER BY s.score DESC, s.id LIMIT {}").format(sql.Literal(k))
    rows = conn.execute(cte + tail, [*_bm25_args(terms), *cond.params]).fetchall()
    return [(r["id"], float(r["score"])) for r in rows]


def bm25_scores_for(conn: Conn, info: CollectionInfo, terms: Counter[str], ids: Sequence[int],
                    params: Bm25Params) -> dict[int, float]:
    if not ids or not terms:
        return {}
    cte = sql.SQL(_BM25_CTE).format(
        cid=sql.Literal(info.id), k1=sql.Literal(params.k1), b=sql.Literal(params.b),
        only=sql.SQL("WHERE p.chunk_id = ANY(%s)"),
    )
    rows = conn.execute(cte + sql.SQL(" SELECT id, score FROM s"), [*_bm25_args(terms), list(ids)]).fetchall()
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
