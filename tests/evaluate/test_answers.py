"""Answer metrics (official SQuAD normalisation) and ``eval answers`` on a real SQuAD subset."""

from __future__ import annotations

import pytest

from ragtune.engine import Ragtune
from ragtune.evaluate.answers import answer_cases, evaluate_answers, exact_match, normalize_answer, token_f1
from ragtune.evaluate.datasets import load_dataset
from tests.helpers import ProgressRecorder


@pytest.mark.parametrize(("text", "normal"), [
    ("The Eiffel Tower!", "eiffel tower"),
    ("  an   apple, a pear ", "apple pear"),
    ("Theatre", "theatre"),  # "the" only as a word
    ("1,000 $", "1000"),
])
def test_normalize_answer(text: str, normal: str) -> None:
    assert normalize_answer(text) == normal


@pytest.mark.parametrize(("prediction", "golds", "em", "f1"), [
    ("the Normans", ["Normans", "the Normans"], 1.0, 1.0),
    ("Rollo, a Viking", ["Rollo"], 0.0, 2 * (1 / 2) * 1 / (1 / 2 + 1)),
    ("in France", ["France", "Normandy"], 0.0, 2 / 3),
    ("", ["France"], 0.0, 0.0),
    ("", [], 1.0, 1.0),  # abstaining on an unanswerable question is right
    ("France", [], 0.0, 0.0),
])
def test_exact_match_and_f1(prediction: str, golds: list[str], em: float, f1: float) -> None:
    assert exact_match(prediction, golds) == em
    assert token_f1(prediction, golds) == pytest.approx(f1)


def test_cases_interleave_answerable_and_unanswerable(cache_dir) -> None:  # type: ignore[no-untyped-def]
    ds = load_dataset("squad", cache_dir / "packages", limit_queries=50)
    cases = answer_cases(ds, 10)
    assert [c.answerable for c in cases] == [True, False] * 5
    assert all(c.answers for c in cases if c.answerable) and not any(c.answers for c in cases if not c.answerable)
    assert all(c.gold_docs for c in cases)


def test_eval_answers_on_squad_subset(rt: Ragtune) -> None:
    events = ProgressRecorder()
    result = evaluate_answers(rt, "squad", generators=["extractive"], limit=6, keep_answers=True,
                              subset_corpus=True, progress=events)
    assert [(e.done, e.total, e.detail) for e in events.of("answers")] == [(n, 6, "extractive") for n in range(7)]
    assert events.last("documents").done == events.last("documents").total  # the indexing of the subset
    row = result["generators"]["extractive"]
    assert row["questions"] == 6 and row["answerable"] == 3 and row["unanswerable"] == 3
    assert 0.0 <= row["f1"] <= 1.0 and row["p50_ms"] > 0
    assert row["citation_precision"] is not None and row["citation_precision"] > 0
    assert len(result["answers"]["extractive"]) == 6
