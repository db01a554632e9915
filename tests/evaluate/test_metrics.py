"""Retrieval metrics: a case checkable by hand, and agreement with an independent implementation."""

from __future__ import annotations

import math
import random

import pytest

from ragtune.errors import ConfigError, QueryError
from ragtune.evaluate.metrics import doc_run_from_chunks, per_query_metrics, retrieval_metrics

# q1: one relevant doc at rank 2. q2: two relevant at ranks 1 and 3. q3: relevant doc never retrieved.
# q4: judged but nothing relevant (left out). q5: no run at all (counts 0).
QRELS = {
    "q1": {"a": 1},
    "q2": {"b": 1, "c": 1},
    "q3": {"d": 1},
    "q4": {"e": 0},
    "q5": {"f": 1},
}
RUN = {
    "q1": {"x": 3.0, "a": 2.0, "y": 1.0},
    "q2": {"b": 0.9, "z": 0.8, "c": 0.7},
    "q3": {"x": 5.0},
    "q4": {"e": 1.0},
    "q9": {"a": 1.0},  # not judged: ignored
}


def test_hand_computed_case() -> None:
    per_q = per_query_metrics(QRELS, RUN)
    assert set(per_q) == {"q1", "q2", "q3", "q5"}
    assert per_q["q1"] == pytest.approx({"nDCG@10": 1 / math.log2(3), "R@1": 0.0, "P@1": 0.0, "R@5": 1.0,
                                         "R@10": 1.0, "RR@10": 0.5})
    ndcg_q2 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert per_q["q2"] == pytest.approx({"nDCG@10": ndcg_q2, "R@1": 0.5, "P@1": 1.0, "R@5": 1.0, "R@10": 1.0,
                                         "RR@10": 1.0})
    assert per_q["q3"] == per_q["q5"] == {"nDCG@10": 0.0, "R@1": 0.0, "P@1": 0.0, "R@5": 0.0, "R@10": 0.0,
                                          "RR@10": 0.0}
    mean = retrieval_metrics(QRELS, RUN)
    assert mean["nDCG@10"] == pytest.approx((1 / math.log2(3) + ndcg_q2) / 4)
    assert mean["RR@10"] == pytest.approx(1.5 / 4)
    assert mean["R@5"] == pytest.approx(2 / 4)


def test_cutoffs_and_measure_names_as_given() -> None:
    qrels = {"q": {"r": 1}}
    run = {"q": {f"n{i}": 100.0 - i for i in range(6)} | {"r": 1.0}}  # relevant at rank 7
    got = retrieval_metrics(qrels, run, measures=("R@5", "R@10", "MRR@10", "RR@5", "P@10"))
    assert got == pytest.approx({"R@5": 0.0, "R@10": 1.0, "MRR@10": 1 / 7, "RR@5": 0.0, "P@10": 0.1})


@pytest.mark.parametrize(("run", "rr"), [({"x": 1.0, "a": 1.0}, 0.5), ({"a": 1.0, "x": 1.0}, 1.0)])
def test_ties_keep_the_run_order(run: dict[str, float], rr: float) -> None:
    assert retrieval_metrics({"q": {"a": 1}}, {"q": run}, measures=("RR@10",)) == {"RR@10": rr}


def test_errors_name_the_bad_input() -> None:
    with pytest.raises(ConfigError, match="'nDCG@ten'"):
        retrieval_metrics(QRELS, RUN, measures=("nDCG@ten",))
    with pytest.raises(QueryError, match="no query with a relevant document"):
        retrieval_metrics({"q": {"a": 0}}, {"q": {"a": 1.0}})
    with pytest.raises(QueryError, match=r"'q'.*'a'"):
        retrieval_metrics({"q": {"a": 1}}, {"q": {"a": float("nan")}})


# ------------------------------------------------------------------- independent implementation


def _reference(
    qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]], k: int
) -> dict[str, float]:
    """Textbook definitions (trec_eval's: linear gain, log2(rank + 1) discount, binary rel >= 1)."""
    out: dict[str, list[float]] = {"ndcg": [], "r5": [], "r10": [], "rr": []}
    for qid, judged in qrels.items():
        relevant = {d for d, r in judged.items() if r > 0}
        if not relevant:
            continue
        ranked = [d for d, _ in sorted(run.get(qid, {}).items(), key=lambda item: -item[1])]
        dcg = sum(judged.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
        ideal = sorted((r for r in judged.values() if r > 0), reverse=True)[:k]
        out["ndcg"].append(dcg / sum(g / math.log2(i + 2) for i, g in enumerate(ideal)))
        out["r5"].append(len(relevant & set(ranked[:5])) / len(relevant))
        out["r10"].append(len(relevant & set(ranked[:10])) / len(relevant))
        first = next((i for i, d in enumerate(ranked[:k]) if d in relevant), None)
        out["rr"].append(0.0 if first is None else 1 / (first + 1))
    return {name: sum(v) / len(v) for name, v in out.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_an_independent_implementation_on_random_runs(seed: int) -> None:
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(60)]
    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, dict[str, float]] = {}
    for q in range(200):
        qid = f"q{q}"
        qrels[qid] = {d: rng.choice([0, 1, 1, 2, 3]) for d in rng.sample(docs, rng.randint(1, 6))}
        if rng.random() < 0.9:  # some queries get no run at all
            run[qid] = {d: rng.random() for d in rng.sample(docs, rng.randint(1, 30))}
    got = retrieval_metrics(qrels, run)
    want = _reference(qrels, run, 10)
    assert got["nDCG@10"] == pytest.approx(want["ndcg"], abs=1e-9)
    assert got["R@5"] == pytest.approx(want["r5"], abs=1e-9)
    assert got["R@10"] == pytest.approx(want["r10"], abs=1e-9)
    assert got["RR@10"] == pytest.approx(want["rr"], abs=1e-9)


# ----------------------------------------------------------------------------- chunks -> documents


def test_doc_run_from_chunks_takes_each_documents_best_chunk() -> None:
    hits = {"q": [("A", 0.9), ("B", 0.8), ("A", 0.95), ("C", 0.5), ("B", 0.1)], "empty": []}
    run = doc_run_from_chunks(hits)
    assert run == {"q": {"A": 0.95, "B": 0.8, "C": 0.5}, "empty": {}}
    assert list(run["q"]) == ["A", "B", "C"]
    assert doc_run_from_chunks(hits, k=2) == {"q": {"A": 0.95, "B": 0.8}, "empty": {}}
    with pytest.raises(QueryError, match="k must be at least 1, got 0"):
        doc_run_from_chunks(hits, k=0)


def test_doc_run_counts_a_document_once() -> None:
    qrels = {"q": {"A": 1, "B": 1}}
    chunk_hits = {"q": [("A", 3.0), ("A", 2.0), ("A", 1.5), ("B", 1.0)]}
    # At chunk level B would sit at rank 4; as documents it is rank 2.
    assert retrieval_metrics(qrels, doc_run_from_chunks(chunk_hits), measures=("R@2",)) == {"R@2": 1.0}
