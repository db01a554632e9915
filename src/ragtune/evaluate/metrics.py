"""Retrieval metrics over plain dicts, computed by ``ir_measures`` (trec_eval underneath).

We do not re-implement nDCG & co.: ``ir_measures`` is the reference most papers' numbers come
from. What this module adds is the bookkeeping that silently changes numbers when left to chance:

* **Which queries count.** Every query in ``qrels`` with at least one relevant document
  (relevance > 0) is averaged; a query the system returned nothing for scores 0 rather than
  being dropped (dropping it would flatter a system that fails on hard queries). Queries with
  no relevant document cannot be scored by recall or nDCG and are left out, as trec_eval does.
* **Ties.** trec_eval breaks equal scores by document id, other providers differently. We
  rank each query's documents by score, keeping the run's own order for equal scores (the order
  the system would show), and hand ``ir_measures`` strictly decreasing scores, so every measure
  sees the same ranking.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence

import ir_measures
from ir_measures import Measure

from ragtune.errors import ConfigError, QueryError

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]

# R@1 and P@1: whether the first hit is right, what a generator given one source sees (with one
# relevant document per query, as in SQuAD, the two are equal).
DEFAULT_MEASURES: tuple[str, ...] = ("nDCG@10", "R@1", "P@1", "R@5", "R@10", "RR@10")


def _parse(measures: Sequence[str]) -> list[tuple[str, Measure]]:
    if not measures:
        raise ConfigError("no measures given")
    parsed: list[tuple[str, Measure]] = []
    for name in measures:
        try:
            measure = ir_measures.parse_measure(name)
        except (ValueError, NameError, TypeError, SyntaxError) as exc:
            raise ConfigError(f"unknown retrieval measure {name!r}: give ir_measures names such as 'nDCG@10', "
                              "'R@1', 'P@1', 'R@5', 'RR@10', 'AP'") from exc
        cutoff = measure.params.get("cutoff")
        if cutoff is not None and (not isinstance(cutoff, int) or cutoff < 1):
            raise ConfigError(f"retrieval measure {name!r}: the cutoff after @ must be a whole number of at least 1")
        parsed.append((name, measure))
    return parsed


def parse_measures(text: str | Sequence[str]) -> tuple[str, ...]:
    """ir_measures names from a space- or comma-separated list (``"nDCG@10 R@1 P@1"``), each checked,
    duplicates dropped; a ``ConfigError`` names the first that is not a measure."""
    names = re.split(r"[\s,]+", text.strip()) if isinstance(text, str) else [n.strip() for n in text]
    names = list(dict.fromkeys(n for n in names if n))
    _parse(names)
    return tuple(names)


def measure_depth(measures: Sequence[str]) -> int | None:
    """The deepest cutoff among ``measures`` (None when one has none, e.g. ``AP``: it reads the
    whole run): how many documents a run must hold for them to be right."""
    cutoffs = [m.params.get("cutoff") for _, m in _parse(measures)]
    return max(int(c) for c in cutoffs if c is not None) if all(c is not None for c in cutoffs) else None


def _judged(qrels: Qrels) -> dict[str, dict[str, int]]:
    return {q: dict(docs) for q, docs in qrels.items() if any(r > 0 for r in docs.values())}


def _canonical_run(run: Run, queries: Iterable[str]) -> dict[str, dict[str, float]]:
    """Ranks as strictly decreasing scores; ties keep the run's order (see module docstring)."""
    out: dict[str, dict[str, float]] = {}
    for qid in queries:
        docs = run.get(qid) or {}
        for doc_id, score in docs.items():
            if not isinstance(score, int | float) or math.isnan(score):
                raise QueryError(f"run for query {qid!r}: score of {doc_id!r} is not a number: {score!r}")
        ranked = sorted(docs.items(), key=lambda item: -item[1])  # stable: ties keep run order
        n = len(ranked)
        out[qid] = {doc_id: float(n - i) for i, (doc_id, _) in enumerate(ranked)}
    return out


def per_query_metrics(
    qrels: Qrels, run: Run, *, measures: Sequence[str] = DEFAULT_MEASURES
) -> dict[str, dict[str, float]]:
    """``{query_id: {measure: value}}`` for every query with a relevant document; keys of the inner
    dict are the measure names as given (``"MRR@10"`` stays ``"MRR@10"``)."""
    parsed = _parse(measures)
    judged = _judged(qrels)
    canon = _canonical_run(run, judged)
    result: dict[str, dict[str, float]] = {q: dict.fromkeys(measures, 0.0) for q in judged}
    by_measure: dict[Measure, list[str]] = {}
    for name, measure in parsed:
        by_measure.setdefault(measure, []).append(name)
    # Queries with an empty run stay at 0; ir_measures would otherwise skip or score them by its
    # own rule, so they are not passed in.
    present = {q: docs for q, docs in canon.items() if docs}
    if present:
        for metric in ir_measures.iter_calc(list(by_measure), judged, present):
            for name in by_measure[metric.measure]:
                result[metric.query_id][name] = float(metric.value)
    return result


def retrieval_metrics(
    qrels: Qrels, run: Run, *, measures: Sequence[str] = DEFAULT_MEASURES
) -> dict[str, float]:
    """Mean of each measure over the judged queries (see module docstring for which count).

    ``run[qid][doc_id] = score``, higher is better; only the order matters. Raises ``QueryError``
    when no query in ``qrels`` has a relevant document (a mean over nothing is not 0).
    """
    per_query = per_query_metrics(qrels, run, measures=measures)
    if not per_query:
        raise QueryError("qrels hold no query with a relevant document; nothing to evaluate")
    n = len(per_query)
    return {name: math.fsum(values[name] for values in per_query.values()) / n for name in measures}


def doc_run_from_chunks(
    chunk_hits: Mapping[str, Iterable[tuple[str, float]]], *, k: int | None = None
) -> dict[str, dict[str, float]]:
    """Turn chunk-level hits into a document-level run: a document scores its best chunk (MaxP).

    ``chunk_hits[qid]`` is an iterable of ``(document_id, chunk_score)`` in rank order, one pair
    per retrieved chunk. Qrels judge documents, and a long document split into several chunks
    must count once, at its best chunk's rank. Keep ``k`` documents per query (all if None).
    Note a caller that wants 10 documents must usually retrieve more than 10 chunks.
    """
    if k is not None and k < 1:
        raise QueryError(f"k must be at least 1, got {k}")
    run: dict[str, dict[str, float]] = {}
    for qid, hits in chunk_hits.items():
        best: dict[str, float] = {}
        for doc_id, score in hits:
            if doc_id not in best or score > best[doc_id]:
                best[doc_id] = float(score)
        ranked = sorted(best.items(), key=lambda item: -item[1])  # stable: ties keep hit order
        run[qid] = dict(ranked[:k] if k is not None else ranked)
    return run
