"""The SQL behind dense and BM25 retrieval. Everything runs inside PostgreSQL.

Dense: the collection's partial HNSW index with pgvector's iterative scans, so rows removed by
filters or ACL are replaced by further index candidates; when few chunks match at all, an exact
scan over just those chunks instead (``exact_scan_threshold``).

BM25 (Lucene/bm25s variant): idf = ln(1 + (N - df + 0.5) / (df + 0.5)),
tf part = tf / (tf + k1 * (1 - b + b * dl / avgdl)), summed over query terms (with multiplicity),
with N, avgdl and df read from the exact statistics kept by every write, and the postings read
from their packed blocks in the search's snapshot, then summed in numpy.

Which chunks the statistics count (``bm25_statistics``): "visible" (the default), those the
principal can read, summed over the ACL classes it can read (migration 007), so a readable
chunk's score is exactly its score in a collection holding only what the principal can read, and
says nothing about the rest; "global", every chunk of the collection (an admin always gets these:
it reads everything, so they are the same numbers).
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
from ragtune.store.repository import BLOCK_BITS, CollectionInfo


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


# The query's terms in the collection with N, total length and df: of every chunk (global), or of
# the chunks ``groups`` can read (visible, in the function ragtune_bm25_visible of migration 008),
# from the collection's ACL classes. A class is readable
# when public or sharing a group (the ACL condition of ``filters.compile_conditions``, to the
# letter). A term's df is summed over the readable classes or, when fewer classes are unreadable,
# is the collection's df minus theirs: the rows read are those of the smaller side, and a principal
# that can read every class gets the collection's own numbers.
_GLOBAL_STATISTICS = """
SELECT c.n_chunks, c.total_len, t.id, t.term, t.df FROM collections c
JOIN terms t ON t.collection_id = c.id AND t.term = ANY(%(terms)s) AND t.df > 0 WHERE c.id = %(cid)s
"""
# Then, in the same statement, each term's weight (query term frequency x idf, float8 as in the
# formula above) and avgdl, and the packed posting blocks of the terms some counted chunk holds: a
# term no readable chunk holds has df 0 here and none of its postings is read.
_SCORING = """
WITH q AS MATERIALIZED ({statistics}),
w AS (SELECT q.id, x.n * ln(1 + (q.n_chunks::float8 - q.df + 0.5) / (q.df + 0.5)) AS weight,
             greatest(q.total_len, 1)::float8 / q.n_chunks AS avgdl
      FROM q JOIN unnest(%(terms)s::text[], %(counts)s::int4[]) AS x(term, n) ON x.term = q.term
      WHERE q.df > 0 AND q.n_chunks > 0)
SELECT w.weight, w.avgdl, b.block, b.postings FROM w JOIN posting_blocks b ON b.term_id = w.id
"""
_GLOBAL_SCORING = _SCORING.format(statistics=_GLOBAL_STATISTICS)
# The same with the visible statistics, in a function (migration 008) that keeps one generic plan
# per session: as a statement, planning it took twice as long as running it, on every search.
_VISIBLE_SCORING = ("SELECT weight, avgdl, block, postings"
                    " FROM ragtune_bm25_visible(%(cid)s, %(terms)s, %(counts)s, %(groups)s)")


_PACKED = np.dtype(">i4")  # the records of posting_blocks: (chunk id - block base, tf, dl)


@dataclass(frozen=True)
class Bm25Scores:
    """The BM25 score of every chunk holding a query term (any other chunk scores 0), with no
    filter applied: ``scores[i]`` belongs to chunk ``ids[i]``, ids ascending."""

    ids: np.ndarray
    scores: np.ndarray
    postings: int  # how many postings were summed

    @classmethod
    def none(cls) -> Bm25Scores:
        return cls(np.zeros(0, dtype=np.int64), np.zeros(0), 0)

    def of(self, ids: Sequence[int]) -> dict[int, float]:
        """Scores of the given chunks; a chunk with no query term is left out (its BM25 is 0)."""
        wanted = np.asarray(ids, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.ids, wanted), max(len(self.ids) - 1, 0))
        found = self.ids[at] == wanted if len(self.ids) else np.zeros(len(wanted), dtype=bool)
        return {int(i): float(s) for i, s in zip(wanted[found], self.scores[at[found]], strict=True)}

    def ranked(self, limit: int | None = None) -> list[tuple[int, float]]:
        """Chunks best first (ties by chunk id), the first ``limit`` of them."""
        candidates = np.arange(len(self.scores))
        if limit is not None and limit < len(candidates):
            # the limit-th best score, then everything at least as good: ties at the cut stay whole
            cut = np.partition(self.scores, len(candidates) - limit)[len(candidates) - limit]
            candidates = np.flatnonzero(self.scores >= cut)
        order = candidates[np.lexsort((self.ids[candidates], -self.scores[candidates]))][:limit]
        return list(zip(self.ids[order].tolist(), self.scores[order].tolist(), strict=True))


def bm25_scores(conn: Conn, info: CollectionInfo, terms: Counter[str], params: Bm25Params,
                groups: Sequence[str] | None = None) -> Bm25Scores:
    """BM25 of every chunk holding a query term, with the statistics of the whole collection or,
    with ``groups``, of only the chunks those groups can read.

    One round trip in the search's snapshot reads the statistics and the packed postings (two
    round trips took 0.13 ms more per SQuAD question, 2026-12-05), and numpy sums them, as bm25s
    does in memory: PostgreSQL returns ~50 block rows per term instead of one row per posting, whose
    per-row cost made this 5x slower in SQL (24 ms vs 4 ms per HotpotQA question, 2026-11-26)."""
    if not terms:
        return Bm25Scores.none()
    keys = sorted(terms)
    args: dict[str, Any] = {"cid": info.id, "terms": keys, "counts": [terms[k] for k in keys]}
    if groups is not None:
        args["groups"] = sorted(groups)
    rows = conn.execute(_GLOBAL_SCORING if groups is None else _VISIBLE_SCORING, args, binary=True).fetchall()
    if not rows:
        return Bm25Scores.none()
    counts = np.fromiter((len(r["postings"]) // 12 for r in rows), dtype=np.int64, count=len(rows))
    packed = np.frombuffer(b"".join(r["postings"] for r in rows), dtype=_PACKED).reshape(-1, 3)
    block_base = np.fromiter((r["block"] for r in rows), dtype=np.int64, count=len(rows)) << BLOCK_BITS
    chunk_ids = np.repeat(block_base, counts) + packed[:, 0]
    weights = np.repeat(np.fromiter((r["weight"] for r in rows), dtype=np.float64, count=len(rows)), counts)
    avgdl = float(rows[0]["avgdl"])
    tf = packed[:, 1].astype(np.float64)
    # k1 * (1 - b + b * dl / avgdl) folded into two constants, as in the formula above
    norm = params.k1 * (1 - params.b) + (params.k1 * params.b / avgdl) * packed[:, 2].astype(np.float64)
    first = int(chunk_ids.min())
    span = int(chunk_ids.max()) - first + 1
    contributions = weights * (tf / (tf + norm))
    if span <= max(1 << 20, 8 * len(chunk_ids)):  # one slot per chunk id in range: no sorting
        sums = np.bincount(chunk_ids - first, weights=contributions)
        scored = np.flatnonzero(sums)
        return Bm25Scores(scored + first, sums[scored], len(packed))
    # the collection's ids are spread thinly (its chunks interleaved with other collections')
    ids, slot = np.unique(chunk_ids, return_inverse=True)
    return Bm25Scores(ids, np.bincount(slot, weights=contributions), len(packed))


def allowed_chunks(conn: Conn, ids: Sequence[int], cond: Condition) -> set[int]:
    """Which of ``ids`` pass the filters and ACL."""
    if not ids:
        return set()
    query = sql.SQL("SELECT c.id FROM chunks c WHERE c.id = ANY(%s::bigint[]) AND {}").format(cond.sql)
    return {r["id"] for r in conn.execute(query, [list(ids), *cond.params]).fetchall()}


def bm25_top(conn: Conn, scores: Bm25Scores, k: int, cond: Condition) -> list[tuple[int, float]]:
    """The exact top-k of the chunks passing ``cond``: candidates are checked best first, the best
    4k + 64, then a window 8 times longer, until k pass or none is left."""
    if not cond.restrictive:
        return scores.ranked(k)
    # ranking only the best few first: ranking all ~25k scored chunks of a HotpotQA question costs
    # more than the whole unfiltered search. Growing the window instead of checking everything
    # else at once bounds the work by how many unreadable chunks outrank the k-th readable one,
    # which visible BM25 statistics make likelier (a word rare in what the principal reads but
    # common in what it cannot gets a high idf, and the unreadable chunks holding it score high).
    window = 4 * k + 64
    checked = 0
    passed: set[int] = set()
    while True:
        ranked = scores.ranked(window)  # each window starts with the previous one, in the same order
        passed |= allowed_chunks(conn, [i for i, _ in ranked[checked:]], cond)
        checked = len(ranked)
        if len(passed) >= k or checked >= len(scores.ids):
            return [kv for kv in ranked if kv[0] in passed][:k]
        window *= 8


def dense_scores(conn: Conn, info: CollectionInfo, qvec: np.ndarray, ids: Sequence[int]) -> dict[int, float]:
    """Cosine similarity of the query to the given chunks: what convex fusion needs for the BM25
    hits the dense list lacks."""
    if not ids:
        return {}
    vt = _vector_type(info)
    query = sql.SQL("SELECT c.id, 1 - (c.embedding::{vt} <=> %s::{vt}) AS score FROM chunks c"
                    " WHERE c.id = ANY(%s::bigint[])").format(vt=vt)
    return {r["id"]: float(r["score"]) for r in conn.execute(query, (qvec, list(ids))).fetchall()}


def fetch_chunks(conn: Conn, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    if not ids:
        return {}
    rows = conn.execute(
        "SELECT c.id, c.document_id, c.ordinal, c.body, c.start_char, c.end_char, c.heading, c.tokens,"
        " c.metadata, c.injection, d.uri FROM chunks c JOIN documents d ON d.id = c.document_id"
        " WHERE c.id = ANY(%s)",
        (list(ids),),
    ).fetchall()
    return {r["id"]: r for r in rows}
