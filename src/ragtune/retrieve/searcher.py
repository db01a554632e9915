"""Dense, BM25 and hybrid search over one collection, with filters and ACL inside the SQL.

All statements of one search run in one REPEATABLE READ snapshot, so the dense list, the BM25
list and the fetched chunk texts agree even while a writer replaces a document.

What a caller sees (hits, scores, the trace) depends only on what it can read: BM25 statistics
are those of its readable chunks (``bm25_statistics = "visible"``, see ``retrieve.postgres``), and
the trace records no count over all chunks (it used to record how many postings BM25 summed,
hidden chunks' included, which told whether a word occurs in documents the caller cannot read).
Per-stage timings still grow with the postings of hidden chunks for words readable chunks hold
too: the README's security section says what that and the shared HNSW graph leave open.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ragtune.errors import EmbedderMismatchError, QueryError
from ragtune.govern.injection import DEFAULT_THRESHOLD
from ragtune.govern.policy import InjectionPolicy, Policy
from ragtune.ingest.lexical import LexicalAnalyzer
from ragtune.models import Chunk, Hit, Principal, SearchResult
from ragtune.observe.traces import StageTimer, TraceRecord, record
from ragtune.observe.tracing import Tracing
from ragtune.protocols import Embedder
from ragtune.retrieve import fusion
from ragtune.retrieve.filters import Condition, Filter, compile_conditions
from ragtune.retrieve.postgres import (
    Bm25Params,
    Bm25Scores,
    bm25_scores,
    bm25_top,
    count_matching,
    dense_scores,
    dense_search,
    fetch_chunks,
)
from ragtune.settings import BM25_STATISTICS, SEARCH_MODES, Settings
from ragtune.store.database import Conn
from ragtune.store.repository import CollectionInfo, Repository

MAX_TOP_K = 1000


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
    bm25: Bm25Params = field(default_factory=Bm25Params)
    bm25_statistics: str = "visible"  # "visible" | "global": which chunks N, avgdl and df count

    def __post_init__(self) -> None:
        if self.mode not in SEARCH_MODES:
            raise QueryError(f"unknown search mode {self.mode!r}; use one of {', '.join(SEARCH_MODES)}")
        if not 0 < self.top_k <= MAX_TOP_K:
            raise QueryError(f"top_k must be between 1 and {MAX_TOP_K}, got {self.top_k}")
        if self.fusion not in ("convex", "rrf"):
            raise QueryError(f"unknown fusion {self.fusion!r}; use convex or rrf")
        if self.normalization not in fusion.NORMALIZERS:
            raise QueryError(f"unknown score normalization {self.normalization!r}; use zscore or minmax")
        if self.bm25_statistics not in BM25_STATISTICS:
            raise QueryError(f"unknown bm25_statistics {self.bm25_statistics!r}; use one of "
                             f"{', '.join(BM25_STATISTICS)}")

    @property
    def dense_ef_search(self) -> int:
        """The HNSW ef_search of this mode's dense list."""
        return self.hybrid_ef_search if self.mode == "hybrid" else self.ef_search

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> SearchOptions:
        r = settings.retrieval
        values: dict[str, Any] = dict(
            mode=r.default_mode, fusion=r.fusion, normalization=r.hybrid_normalization,
            dense_weight=r.hybrid_dense_weight, rrf_k=r.rrf_k, candidates=r.candidates, ef_search=r.hnsw_ef_search,
            hybrid_ef_search=r.hybrid_ef_search, exact_scan_threshold=r.exact_scan_threshold,
            bm25=Bm25Params(r.bm25_k1, r.bm25_b), bm25_statistics=r.bm25_statistics,
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


class Searcher:
    def __init__(self, repo: Repository, embedder: Embedder, analyzer: LexicalAnalyzer,
                 tracing: Tracing | None, policy_for: Callable[[CollectionInfo], Policy] | None = None) -> None:
        """``policy_for``: a collection's policy in force (``govern.policies``), whose injection rule
        flags or demotes the hits it retrieves."""
        self.repo = repo
        self.embedder = embedder
        self.analyzer = analyzer
        self.tracing = tracing
        self.policy_for = policy_for

    def search(self, collection: str, query: str, options: SearchOptions, *, filters: Sequence[Filter] = (),
               principal: Principal, query_vector: np.ndarray | None = None,
               trace_params: dict[str, Any] | None = None) -> SearchResult:
        """``query_vector`` lets a caller that embedded many queries in one batch skip re-embedding;
        ``trace_params`` are further facts for the trace (how a conversation made the query)."""
        if not query or not query.strip():
            raise QueryError("empty query")
        if self.tracing is None:
            return self._search(collection, query, options, filters, principal, query_vector, trace_params, None)
        # a search is a retrieval span: a trace's root, or a child of the answer it is for
        with self.tracing.span("retrieval", {
                "gen_ai.operation.name": "retrieval", "gen_ai.data_source.id": collection,
                "gen_ai.retrieval.top_k": options.top_k, "gen_ai.retrieval.query.text": query,
                "gen_ai.request.model": getattr(self.embedder, "name", None)}, current=False) as span:
            return self._search(collection, query, options, filters, principal, query_vector, trace_params, span)

    def _search(self, collection: str, query: str, options: SearchOptions, filters: Sequence[Filter],
                principal: Principal, query_vector: np.ndarray | None, trace_params: dict[str, Any] | None,
                span: Any) -> SearchResult:
        timer = StageTimer()  # its steps are exported as the retrieval span's children
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
        cond = compile_conditions(filters, principal, quarantine=info.quarantined > 0)
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
            scores = Bm25Scores.none()
            statistics = None  # which BM25 statistics were used, for the trace
            wanted = k if options.mode != "hybrid" else n
            if qvec is not None:
                with timer.stage("dense"):
                    ranked, exact = self._dense(conn, info, qvec, wanted, cond, options, exact, matching)
                dense = dict(ranked)
            if options.mode != "dense":
                with timer.stage("bm25"):
                    # statistics and postings come from the search's snapshot, in one statement; an
                    # admin reads every chunk, so its visible statistics are the collection's
                    groups = None if principal.admin or options.bm25_statistics == "global" \
                        else sorted(principal.groups)
                    statistics = "global" if groups is None else "visible"
                    scores = bm25_scores(conn, info, terms, options.bm25, groups)
                    bm25 = dict(bm25_top(conn, scores, wanted, cond))
            with timer.stage("fuse"):
                if options.mode == "dense":
                    fused = dense
                elif options.mode == "bm25":
                    fused = bm25
                elif options.fusion == "rrf":
                    fused = fusion.rrf({"dense": list(dense), "bm25": list(bm25)}, options.rrf_k)
                else:
                    assert qvec is not None
                    # convex fusion scores every candidate on both sides: the BM25 of the dense hits
                    # is already summed (0 without a query term); the dense score of the BM25-only
                    # hits is one more statement
                    bm25 = {**{i: 0.0 for i in dense}, **scores.of(list(dense)), **bm25}
                    with timer.stage("fill"):
                        dense.update(dense_scores(conn, info, qvec, [i for i in bm25 if i not in dense]))
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
                scores_by_source=by_source, injection=r["injection"],
            ))
        if info.policy_version and self.policy_for is not None:
            hits = flag_injections(hits, self.policy_for(info).injection)
        timings = dict(timer.timings_ms)
        timings["search"] = timings.get("retrieve", 0.0)
        trace_id = None
        if span is not None:
            trace_id = record(span, TraceRecord(
                kind="search", principal=principal, collection=collection, query=query,
                params={"mode": options.mode, "top_k": k, "fusion": options.fusion,
                        "normalization": options.normalization,
                        "dense_weight": options.dense_weight, "exact_scan": exact,
                        "ef_search": None if options.mode == "bm25" else options.dense_ef_search,
                        "bm25_statistics": statistics,
                        "filters": [{"key": f.key, "op": f.op, "value": _jsonable(f.value)} for f in filters],
                        **(trace_params or {})},
                results=[{"chunk_id": h.chunk.id, "rank": h.rank, "score": h.score,
                          "scores": h.scores_by_source,
                          **({"injection": h.injection_flag} if h.injection_flag else {})} for h in hits],
                timings_ms=timings,
            ), steps=timer.steps)
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

    def _check_embedder(self, info: CollectionInfo) -> None:
        if info.embedder != self.embedder.name or info.dimension != self.embedder.dimension:
            raise EmbedderMismatchError(
                f"collection {info.name!r} was built with embedder {info.embedder!r} ({info.dimension}-d) but "
                f"the configured embedder is {self.embedder.name!r} ({self.embedder.dimension}-d); "
                f"set [ingest] embedder = {info.embedder!r} to query it"
            )


def flag_injections(hits: list[Hit], rule: InjectionPolicy) -> list[Hit]:
    """``hits`` as an injection rule of ``warn`` or ``demote`` leaves them: those scored at or over
    its threshold at ingest are flagged; demoted ones also rank after every other hit. (Quarantined
    chunks never reach here: the search's condition holds them out.)"""
    if rule.action not in ("warn", "demote"):
        return hits
    threshold = rule.threshold if rule.threshold is not None else DEFAULT_THRESHOLD
    flag = "flagged" if rule.action == "warn" else "demoted"
    marked = [dataclasses.replace(h, injection_flag=flag) if h.injection is not None and h.injection >= threshold
              else h for h in hits]
    if rule.action == "demote":
        marked = [h for h in marked if h.injection_flag is None] + [h for h in marked if h.injection_flag]
        marked = [dataclasses.replace(h, rank=i) for i, h in enumerate(marked, start=1)]
    return marked


def _jsonable(value: Any) -> Any:
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
