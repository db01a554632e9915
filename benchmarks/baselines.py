"""Reference retrievers that benchmark scripts compare ragtune against.

They live outside the package on purpose: they are yardsticks, not features. Both work on the
same plain dicts as ``ragtune.evaluate`` (a corpus of ``CorpusDoc``, runs ``{qid: {doc_id: score}}``).

* ``Bm25sBaseline``   bm25s (Lucene BM25, k1=1.5, b=0.75), PyStemmer English stemmer, bm25s's
                      English stopwords, indexing ``title + " " + text``: the exact setup our
                      published BM25 anchors were measured with (HotpotQA 0.727, SQuAD 0.886 nDCG@10).
* ``NumpyDenseBaseline`` exact inner-product search over a float32 matrix: the ceiling an
                      approximate (HNSW) index can only approach.

Import from a script in this folder with ``from baselines import Bm25sBaseline`` (the script's
folder is on ``sys.path`` when run as ``python benchmarks/<script>.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ragtune.evaluate.datasets import CorpusDoc


@dataclass(frozen=True)
class Latency:
    """Per-query wall-clock latency, one query at a time (what an interactive user waits)."""

    n: int
    p50_ms: float
    p95_ms: float
    mean_ms: float
    max_ms: float

    @classmethod
    def from_seconds(cls, seconds: Sequence[float]) -> Latency:
        if not seconds:
            raise ValueError("no timings to summarise")
        ms = np.asarray(seconds, dtype=np.float64) * 1000.0
        return cls(
            n=len(ms),
            p50_ms=float(np.percentile(ms, 50)),
            p95_ms=float(np.percentile(ms, 95)),
            mean_ms=float(ms.mean()),
            max_ms=float(ms.max()),
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _time_each(fn: Callable[[Any], object], items: Sequence[Any], warmup: int) -> Latency:
    for item in items[: min(warmup, len(items))]:
        fn(item)  # untimed: first calls pay for caches and lazy initialisation
    seconds = []
    for item in items:
        start = time.perf_counter()
        fn(item)
        seconds.append(time.perf_counter() - start)
    return Latency.from_seconds(seconds)


class Bm25sBaseline:
    """bm25s over ``title + " " + text`` with English stemming and stopwords.

    Indexes in the constructor (a benchmark yardstick is built to be used at once; the time is
    kept in ``index_seconds``). ``include_title=False`` indexes the text alone: the SQuAD anchor
    0.886 was measured that way (0.888 with titles); on HotpotQA titles matter (0.727 vs 0.672).
    Queries are tokenised the same way as documents; terms the corpus never saw are dropped by
    bm25s, and a query left with no known term scores every document 0 and returns no hits.
    """

    def __init__(
        self, corpus: Mapping[str, CorpusDoc], *, k1: float = 1.5, b: float = 0.75, include_title: bool = True
    ) -> None:
        import bm25s
        import Stemmer

        if not corpus:
            raise ValueError("Bm25sBaseline needs a non-empty corpus")
        self._bm25s = bm25s
        self.stemmer = Stemmer.Stemmer("english")
        self.doc_ids: list[str] = list(corpus)
        start = time.perf_counter()
        texts = [f"{doc.title} {doc.text}" if include_title else doc.text for doc in corpus.values()]
        tokens = bm25s.tokenize(texts, stopwords="en", stemmer=self.stemmer, show_progress=False)
        self.retriever = bm25s.BM25(method="lucene", k1=k1, b=b)
        self.retriever.index(tokens, show_progress=False)
        self.index_seconds = time.perf_counter() - start
        self.vocab_size = len(tokens.vocab)

    def _tokenize(self, texts: list[str]) -> list[list[str]]:
        out: list[list[str]] = self._bm25s.tokenize(
            texts, stopwords="en", stemmer=self.stemmer, return_ids=False, show_progress=False
        )
        return out

    def _retrieve(self, texts: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(self.doc_ids))
        docs, scores = self.retriever.retrieve(self._tokenize(texts), k=k, show_progress=False, n_threads=0)
        return docs, scores

    def search(
        self, queries: Mapping[str, str], k: int = 10, *, batch_size: int = 512
    ) -> dict[str, dict[str, float]]:
        """Top-``k`` documents per query as a run; documents scoring 0 (no shared term) are left out."""
        qids, texts = list(queries), list(queries.values())
        run: dict[str, dict[str, float]] = {}
        for lo in range(0, len(texts), batch_size):
            docs, scores = self._retrieve(texts[lo : lo + batch_size], k)
            for qid, row_docs, row_scores in zip(qids[lo : lo + batch_size], docs, scores, strict=True):
                run[qid] = {
                    self.doc_ids[int(d)]: float(s) for d, s in zip(row_docs, row_scores, strict=True) if s > 0
                }
        return run

    def latency(self, queries: Sequence[str], k: int = 10, *, warmup: int = 50) -> Latency:
        """Tokenise + score + top-k for one query at a time, after ``warmup`` untimed queries."""
        return _time_each(lambda q: self._retrieve([q], k), list(queries), warmup)


class NumpyDenseBaseline:
    """Exact top-k by inner product (cosine for normalised vectors) with ``argpartition``.

    ``matrix`` is (documents x dimension) float32, row i belonging to ``doc_ids[i]``.
    """

    def __init__(self, doc_ids: Sequence[str], matrix: np.ndarray) -> None:
        if matrix.ndim != 2 or matrix.shape[0] != len(doc_ids):
            raise ValueError(f"matrix shape {matrix.shape} does not match {len(doc_ids)} document ids")
        self.doc_ids = list(doc_ids)
        self.matrix = np.ascontiguousarray(matrix, dtype=np.float32)

    def topk(self, query_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices and scores (queries x k), best first."""
        q = np.atleast_2d(np.asarray(query_vectors, dtype=np.float32))
        scores = q @ self.matrix.T
        k = min(k, scores.shape[1])
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        part_scores = np.take_along_axis(scores, part, axis=1)
        order = np.argsort(-part_scores, axis=1, kind="stable")
        return np.take_along_axis(part, order, axis=1), np.take_along_axis(part_scores, order, axis=1)

    def search(
        self, query_ids: Sequence[str], query_vectors: np.ndarray, k: int = 10, *, batch_size: int = 256
    ) -> dict[str, dict[str, float]]:
        """Run for the queries; batched so (batch x documents) scores stay small in memory."""
        if len(query_ids) != len(query_vectors):
            raise ValueError(f"{len(query_ids)} query ids for {len(query_vectors)} query vectors")
        run: dict[str, dict[str, float]] = {}
        for lo in range(0, len(query_ids), batch_size):
            idx, sc = self.topk(query_vectors[lo : lo + batch_size], k)
            for qid, row_idx, row_sc in zip(query_ids[lo : lo + batch_size], idx, sc, strict=True):
                run[qid] = {self.doc_ids[int(i)]: float(s) for i, s in zip(row_idx, row_sc, strict=True)}
        return run

    def latency(
        self,
        queries: Sequence[Any],
        k: int = 10,
        *,
        warmup: int = 50,
        encode: Callable[[Any], np.ndarray] | None = None,
    ) -> Latency:
        """Search latency per query. With ``encode``, ``queries`` are texts and each timed step is
        encode + search (query embedding dominates; the embedder needs ~200 warm-up queries)."""
        if encode is None:
            return _time_each(lambda v: self.topk(v, k), list(queries), warmup)
        enc = encode
        return _time_each(lambda text: self.topk(enc(text), k), list(queries), warmup)
