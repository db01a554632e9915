"""Dense, BM25 and hybrid search over one collection, with filters and ACL inside the SQL.

All statements of one search run in one REPEATABLE READ snapshot, so the dense list, the BM25
list and the fetched chunk texts agree even while a writer replaces a document.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, TypeVar

import numpy as np

from ragtune.errors import EmbedderMismatchError, QueryError
from ragtune.models import Chunk, Hit, Principal, SearchResult
from ragtune.observe.traces import StageTimer, TraceRecord, TraceWriter
from ragtune.protocols import Embedder
from ragtune.retrieve import fusion
from ragtune.retrieve.filters import Condition, Filter, compile_conditions
from ragtune.retrieve.lexical import LexicalAnalyzer
from ragtune.retrieve.postgres import (
    Bm25Params,
    Bm25Side,
    QueryTerms,
    bm25_query_terms,
    bm25_side,
    count_matching,
    dense_search,
    fetch_chunks,
    fill_scores,
)
from ragtune.settings import SEARCH_MODES, Settings
from ragtune.store.database import Conn
from ragtune.store.repository import CollectionInfo, Repository

MAX_TOP_K = 1000
T = TypeVar("T")


@dataclass(frozen=True)
class SearchOptions:
    mode: str = "hybrid"
    top_k: int = 10
    fusion: str = "convex"
    normalization: str = "zscore"
    dense_weight: float = 0.5
    rrf_k: int = 60
    candidates: int = 100
    ef_search: int = 200  # dense mode
    hybrid_ef_search: int = 100  # the dense list of hybrid
    exact_scan_threshold: int = 5000
    workers: int = 2
    split_min_chunks: int = 20000
    bm25: Bm25Params = field(default_factory=Bm25Params)

    def __post_init__(self) -> None:
        if self.mode not in SEARCH_MODES:
            raise QueryError(f"unknown search mode {self.mode!r}; use one of {', '.join(SEARCH_MODES)}")
        if not 0 < self.top_k <= MAX_TOP_K:
            raise QueryError(f"top_k must be between 1 and {MAX_TOP_K}, got {self.top_k}")
        if self.fusion not in ("convex", "rrf"):
            raise QueryError(f"unknown fusion {self.fusion!r}; use convex or rrf")
        if self.normalization not in fusion.NORMALIZERS:
            raise QueryError(f"unknown score normalization {self.normalization!r}; use zscore or minmax")

    @property
    def dense_ef_search(self) -> int:
        """The HNSW ef_search of this mode's dense list."""
        return self.hybrid_ef_search if self.mode == "hybrid" else self.ef_search

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> SearchOptions:
        values: dict[str, Any] = dict(
            mode=settings.default_mode, fusion=settings.fusion, normalization=settings.hybrid_normalization,
            dense_weight=settings.hybrid_dense_weight,
            rrf_k=settings.rrf_k, candidates=settings.candidates, ef_search=settings.hnsw_ef_search,
            hybrid_ef_search=settings.hybrid_ef_search,
            exact_scan_threshold=settings.exact_scan_threshold,
            workers=settings.search_workers, split_min_chunks=settings.bm25_split_min_chunks,
            bm25=Bm25Params(settings.bm25_k1, settings.bm25_b),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


class Searcher:
    def __init__(self, repo: Repository, embedder: Embedder, analyzer: LexicalAnalyzer,
                 traces: TraceWriter | None) -> None:
        self.repo = repo
        self.embedder = embedder
        self.analyzer = analyzer
        self.traces = traces
        self._split_cache: dict[tuple[int, int], tuple[int, list[int]]] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def search(self, collection: str, query: str, options: SearchOptions, *, filters: Sequence[Filter] = (),
               principal: Principal, query_vector: np.ndarray | None = None) -> SearchResult:
        """``query_vector`` lets a caller that embedded many queries in one batch skip re-embedding."""
        if not query or not query.strip():
            raise QueryError("empty query")
        timer = StageTimer()
        info = self.repo.collection(collection)
        if options.mode != "bm25":
            self._check_embedder(info)
            if query_vector is not None:
                qvec = np.asarray(query_vector, dtype=np.float32)
            else:
                with timer.stage("embed"):
                    qvec = self.embedder.embed_batch([query])[0].astype(np.float32)
        else:
            qvec = None
        terms = self.analyzer.term_counts(query)
        cond = compile_conditions(filters, principal)
        k = options.top_k
        n = max(options.candidates, k)
        with timer.stage("retrieve"), self.repo.db.snapshot() as conn:
            exact = False
            if cond.restrictive and qvec is not None:
                with timer.stage("count"):
                    matching = count_matching(conn, info, cond, options.exact_scan_threshold + 1)
                exact = matching <= options.exact_scan_threshold
            else:
                matching = info.n_chunks
            dense: dict[int, float] = {}
            bm25: dict[int, float] = {}
            wanted = k if options.mode != "hybrid" else n
            convex = options.mode == "hybrid" and options.fusion == "convex"
            side: Bm25Side | None = None
            if convex and qvec is not None and self._splits_work(info, options):
                dense_ranked, side, exact = self._hybrid_parallel(conn, info, terms, qvec, wanted, cond, options,
                                                                  exact, matching, timer)
                dense, bm25 = dict(dense_ranked), dict(side.ranked)
            else:
                if qvec is not None:
                    with timer.stage("dense"):
                        ranked, exact = self._dense(conn, info, qvec, wanted, cond, options, exact, matching)
                    dense = dict(ranked)
                if options.mode != "dense":
                    with timer.stage("bm25"):
                        # Term ids, weights and avgdl are read once per search, in its snapshot.
                        query_terms = bm25_query_terms(conn, info, terms)
                        # hybrid: the BM25 statement also returns the BM25 scores of the dense hits
                        # and the dense scores of its own hits, so convex fusion needs no extra query
                        side = self._bm25(conn, info, query_terms, wanted, cond, options,
                                          qvec if convex else None, list(dense) if convex else [])
                        bm25 = dict(side.ranked)
            with timer.stage("fuse"):
                if options.mode == "dense":
                    fused = dense
                elif options.mode == "bm25":
                    fused = bm25
                elif options.fusion == "rrf":
                    fused = fusion.rrf({"dense": list(dense), "bm25": list(bm25)}, options.rrf_k)
                else:
                    assert side is not None
                    for i, score in side.dense_of_ranked.items():
                        dense.setdefault(i, score)
                    for i in dense:  # a dense hit without any query term has BM25 0
                        bm25.setdefault(i, side.bm25_of_dense.get(i, 0.0))
                    fused = fusion.convex(
                        {"dense": dense, "bm25": bm25},
                        {"dense": options.dense_weight, "bm25": 1.0 - options.dense_weight},
                        options.normalization,
                    )
                top = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
            with timer.stage("fetch"):
                rows = fetch_chunks(conn, [i for i, _ in top])
        hits = []
        for rank, (chunk_id, score) in enumerate(top, start=1):
            r = rows[chunk_id]
            by_source = {}
            if chunk_id in dense:
                by_source["dense"] = dense[chunk_id]
            if chunk_id in bm25:
                by_source["bm25"] = bm25[chunk_id]
            hits.append(Hit(
                chunk=Chunk(ordinal=r["ordinal"], text=r["body"], start=r["start_char"], end=r["end_char"],
                            heading=r["heading"], tokens=r["tokens"], id=chunk_id, document_id=r["document_id"]),
                score=score, rank=rank, uri=r["uri"], document_id=r["document_id"], metadata=r["metadata"],
                scores_by_source=by_source,
            ))
        timings = dict(timer.timings_ms)
        timings["search"] = timings.get("retrieve", 0.0)
        trace_id = None
        if self.traces is not None:
            with timer.stage("trace"):
                trace_id = self.traces.write(TraceRecord(
                    kind="search", principal=principal, collection=collection, query=query,
                    params={"mode": options.mode, "top_k": k, "fusion": options.fusion,
                            "normalization": options.normalization,
                            "dense_weight": options.dense_weight, "exact_scan": exact,
                            "ef_search": None if options.mode == "bm25" else options.dense_ef_search,
                            "bm25_ranges": side.ranges if side is not None else 0,
                            "filters": [{"key": f.key, "op": f.op, "value": _jsonable(f.value)} for f in filters]},
                    results=[{"chunk_id": h.chunk.id, "rank": h.rank, "score": h.score,
                              "scores": h.scores_by_source} for h in hits],
                    timings_ms=timings,
                ))
        return SearchResult(query=query, mode=options.mode, hits=hits, trace_id=trace_id, timings_ms=timings)

    def _dense(self, conn: Conn, info: CollectionInfo, qvec: np.ndarray, wanted: int, cond: Condition,
               options: SearchOptions, exact: bool, matching: int) -> tuple[list[tuple[int, float]], bool]:
        ef = options.dense_ef_search
        ranked = dense_search(conn, info, qvec, wanted, cond, ef_search=ef, exact=exact)
        if len(ranked) < min(wanted, matching) and not exact:
            # the index ran out of candidates before enough rows passed the filters
            ranked = dense_search(conn, info, qvec, wanted, cond, ef_search=ef, exact=True)
            exact = True
        return ranked, exact

    @staticmethod
    def _splits_work(info: CollectionInfo, options: SearchOptions) -> bool:
        return options.workers > 1 and info.n_chunks >= options.split_min_chunks

    def _hybrid_parallel(self, conn: Conn, info: CollectionInfo, terms: Counter[str], qvec: np.ndarray,
                         wanted: int, cond: Condition, options: SearchOptions, exact: bool, matching: int,
                         timer: StageTimer) -> tuple[list[tuple[int, float]], Bm25Side, bool]:
        """Hybrid on a large collection: the BM25 ranges are summed on connections sharing this
        snapshot while this one searches the dense list and then fills in the BM25 scores of the
        dense hits, so only the dense scores of the BM25-only hits wait for BM25 to end. Each
        range's thread joins the snapshot while this one reads the query terms (once, handed over
        in a future) and commits on its own, off the critical path. Falls back to
        one-after-the-other on a busy pool."""
        bounds = self._splits(conn, info, options.workers) if terms else []
        ranges = _ranges(bounds)
        with self.repo.db.snapshot_helpers(conn, len(ranges)) as shared:
            others = shared.conns
            if not others:
                with timer.stage("dense"):
                    ranked, exact = self._dense(conn, info, qvec, wanted, cond, options, exact, matching)
                with timer.stage("bm25"):
                    qt = bm25_query_terms(conn, info, terms)
                    side = bm25_side(conn, info, qt, wanted, cond, options.bm25, qvec=qvec,
                                     dense_ids=[i for i, _ in ranked])
                return ranked, side, exact
            if len(others) < len(ranges):  # busy pool: fewer, wider ranges
                ranges = _ranges(bounds[: len(others) - 1])

            query_terms: Future[QueryTerms | None] = Future()

            def one_range(c: Conn, chunk_range: tuple[int | None, int | None]) -> Bm25Side:
                shared.join(c)
                part = bm25_side(c, info, query_terms.result(), wanted, cond, options.bm25, chunk_range=chunk_range)
                shared.release(c)
                return part

            started = perf_counter()
            futures = [self._executor().submit(_timed, one_range, c, r) for c, r in zip(others, ranges, strict=True)]
            try:
                try:
                    qt = bm25_query_terms(conn, info, terms)
                except BaseException as exc:
                    query_terms.set_exception(exc)  # the range threads stop too
                    raise
                query_terms.set_result(qt)
                (ranked, exact), dense_ms = _timed(self._dense, conn, info, qvec, wanted, cond, options, exact,
                                                   matching)
                # while the ranges are still summing: the BM25 scores of every dense hit
                fill_started = perf_counter()
                bm25_of_dense, _ = fill_scores(conn, info, qt, qvec, options.bm25, bm25_for=[i for i, _ in ranked],
                                               dense_for=[])
                fill_ms = (perf_counter() - fill_started) * 1000.0
                parts = [f.result() for f in futures]
            finally:
                wait(futures)  # no connection goes back to the pool while a thread still uses it
            merged = sorted((kv for part, _ in parts for kv in part.ranked), key=lambda kv: (-kv[1], kv[0]))[:wanted]
            dense_ids = {i for i, _ in ranked}
            with timer.stage("fill"):
                _, dense_of_ranked = fill_scores(conn, info, qt, qvec, options.bm25, bm25_for=[],
                                                 dense_for=sorted(i for i, _ in merged if i not in dense_ids))
        timer.timings_ms["dense"] = dense_ms
        timer.timings_ms["fill_dense_hits"] = fill_ms
        timer.timings_ms["bm25"] = max(ms for _, ms in parts)
        timer.timings_ms["parallel"] = (perf_counter() - started) * 1000.0
        return ranked, Bm25Side(merged, bm25_of_dense, dense_of_ranked, ranges=len(parts)), exact

    def _bm25(self, conn: Conn, info: CollectionInfo, qt: QueryTerms | None, k: int, cond: Condition,
              options: SearchOptions, qvec: np.ndarray | None, dense_ids: list[int]) -> Bm25Side:
        """BM25 of a large collection is summed in disjoint chunk-id ranges on parallel
        connections sharing this search's snapshot; each range's top-k, merged, is the exact
        top-k. Summing postings is the cost of BM25, and it divides across cores."""
        workers = options.workers if qt is not None and info.n_chunks >= options.split_min_chunks else 1
        if workers <= 1:
            return bm25_side(conn, info, qt, k, cond, options.bm25, qvec=qvec, dense_ids=dense_ids)
        bounds = self._splits(conn, info, workers)
        ranges = _ranges(bounds)
        with self.repo.db.shared_snapshot(conn, len(ranges) - 1) as others:
            conns = [conn, *others]
            if len(conns) < len(ranges):  # busy pool: fewer, wider ranges
                ranges = _ranges(bounds[: len(conns) - 1])
            futures = [self._executor().submit(bm25_side, c, info, qt, k, cond, options.bm25, qvec=qvec,
                                               dense_ids=dense_ids, chunk_range=r)
                       for c, r in zip(conns[1:], ranges[1:], strict=True)]
            parts = [bm25_side(conns[0], info, qt, k, cond, options.bm25, qvec=qvec, dense_ids=dense_ids,
                               chunk_range=ranges[0])]
            parts.extend(f.result() for f in futures)
        ranked = sorted((kv for part in parts for kv in part.ranked), key=lambda kv: (-kv[1], kv[0]))[:k]
        kept = {i for i, _ in ranked}
        return Bm25Side(
            ranked,
            {i: s for part in parts for i, s in part.bm25_of_dense.items()},
            {i: s for part in parts for i, s in part.dense_of_ranked.items() if i in kept},
            ranges=len(parts),
        )

    def _splits(self, conn: Conn, info: CollectionInfo, workers: int) -> list[int]:
        """Chunk ids that cut the collection into ``workers`` ranges of about equal size; cached,
        and recomputed when the collection has grown or shrunk by a tenth. Balance only affects
        speed: any cut points give the exact result."""
        cached = self._split_cache.get((info.id, workers))
        if cached is not None and abs(cached[0] - info.n_chunks) <= info.n_chunks / 10:
            return cached[1]
        fractions = [i / workers for i in range(1, workers)]
        row = conn.execute(
            "SELECT percentile_disc(%s::float8[]) WITHIN GROUP (ORDER BY id) AS cuts FROM chunks"
            " WHERE collection_id = %s", (fractions, info.id)).fetchone()
        cuts = sorted({int(c) for c in (row["cuts"] if row and row["cuts"] else []) if c is not None})
        self._split_cache[(info.id, workers)] = (info.n_chunks, cuts)
        return cuts

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=15, thread_name_prefix="ragtune-bm25")
        return self._pool

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def _check_embedder(self, info: CollectionInfo) -> None:
        if info.embedder != self.embedder.name or info.dimension != self.embedder.dimension:
            raise EmbedderMismatchError(
                f"collection {info.name!r} was built with embedder {info.embedder!r} ({info.dimension}-d) but "
                f"the configured embedder is {self.embedder.name!r} ({self.embedder.dimension}-d); "
                f"set embedder = {info.embedder!r} to query it"
            )


def _timed(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
    started = perf_counter()
    result = fn(*args, **kwargs)
    return result, (perf_counter() - started) * 1000.0


def _ranges(cuts: list[int]) -> list[tuple[int | None, int | None]]:
    """[low, high) chunk-id ranges between consecutive cuts, open at both ends."""
    return list(zip([None, *cuts], [*cuts, None], strict=True))


def _jsonable(value: Any) -> Any:
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


class CollectionRetriever:
    """The ``Retriever`` protocol over one collection and a fixed mode."""

    def __init__(self, searcher: Searcher, collection: str, options: SearchOptions) -> None:
        self.searcher = searcher
        self.collection = collection
        self.options = options

    def retrieve(self, query: str, *, top_k: int = 10, filters: Sequence[Filter] = (),
                 principal: Principal | None = None) -> list[Hit]:
        opts = SearchOptions(**{**self.options.__dict__, "top_k": top_k})
        return self.searcher.search(self.collection, query, opts, filters=filters,
                                    principal=principal or Principal()).hits
