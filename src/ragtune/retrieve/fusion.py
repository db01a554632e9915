"""Fusing ranked lists from several retrievers.

``convex``: each retriever's scores are min-max normalised over the candidate union, then mixed
with weights. Candidates missing from one list get that retriever's *real* score (computed
exactly for them), not zero, which is what makes the mix better than either list alone.
``rrf``: reciprocal-rank fusion, score = sum 1/(k + rank).
"""

from __future__ import annotations

from collections.abc import Mapping


def min_max(scores: Mapping[int, float]) -> dict[int, float]:
    if not scores:
        return {}
    lo, hi = min(scores.values()), max(scores.values())
    span = hi - lo
    if span <= 0:
        return {k: 1.0 for k in scores}
    return {k: (v - lo) / span for k, v in scores.items()}


def convex(scores_by_source: Mapping[str, Mapping[int, float]], weights: Mapping[str, float]) -> dict[int, float]:
    """Weighted sum of min-max-normalised scores; an id missing from a source counts as its minimum."""
    ids: set[int] = set()
    for s in scores_by_source.values():
        ids.update(s)
    fused = dict.fromkeys(ids, 0.0)
    for source, scores in scores_by_source.items():
        norm = min_max(scores)
        w = weights.get(source, 0.0)
        for i in ids:
            fused[i] += w * norm.get(i, 0.0)
    return fused


def rrf(rankings: Mapping[str, list[int]], k: int = 60) -> dict[int, float]:
    fused: dict[int, float] = {}
    for ranking in rankings.values():
        for rank, i in enumerate(ranking, start=1):
            fused[i] = fused.get(i, 0.0) + 1.0 / (k + rank)
    return fused
