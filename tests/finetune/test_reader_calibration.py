"""The reader's abstention rule: how ``choose_thresholds`` shares the abstention budget between
retrieval support and the reader's no-answer score. The inputs are what calibration measures (the
support of each question's passages, the reader's span and margin); the rule is plain arithmetic
over them, so it is tested on planted values where the right split is known."""

from __future__ import annotations

import random

from ragtune.finetune.reader import ANSWERED, CalibrationQuestion, choose_thresholds
from ragtune.generate.reader import Abstention, ReaderSpan


def _case(rng: random.Random, *, where: str, answerable: bool, support: float, margin: float
          ) -> tuple[CalibrationQuestion, ReaderSpan]:
    answers = ["Paris"] if answerable else []
    question = CalibrationQuestion(f"q{rng.random()}", ["Paris is in France."], support, answers, where)
    return question, ReaderSpan("Paris", 0, 0, 5, margin)


def _calibration(*, support_separates_outside: bool, reader_separates_adversarial: bool, seed: int = 0
                 ) -> tuple[list[CalibrationQuestion], list[ReaderSpan]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(200):
        rows.append(_case(rng, where="in", answerable=True, support=rng.uniform(0.4, 0.9), margin=rng.uniform(0, 8)))
        adversarial_margin = rng.uniform(-8, -1) if reader_separates_adversarial else rng.uniform(0, 8)
        rows.append(_case(rng, where="in", answerable=False, support=rng.uniform(0.4, 0.9),
                          margin=adversarial_margin))
        outside_support = rng.uniform(0.0, 0.3) if support_separates_outside else rng.uniform(0.4, 0.9)
        rows.append(_case(rng, where="out", answerable=False, support=outside_support, margin=rng.uniform(0, 8)))
    return [q for q, _ in rows], [s for _, s in rows]


def _answered(questions: list[CalibrationQuestion], spans: list[ReaderSpan], rule: Abstention) -> float:
    kept = [rule.decide(q.support, s.no_answer) is None for q, s in zip(questions, spans, strict=True)
            if q.answers and q.where == "in"]
    return sum(kept) / len(kept)


def test_both_signals_together_keep_the_answerable_questions_answered() -> None:
    for support_separates in (True, False):
        for reader_separates in (True, False):
            questions, spans = _calibration(support_separates_outside=support_separates,
                                            reader_separates_adversarial=reader_separates)
            chosen = choose_thresholds(questions, spans)
            rule = Abstention(chosen["support_below"], chosen["no_answer_above"])
            assert _answered(questions, spans, rule) >= ANSWERED
            assert chosen["answerable_answered"] >= ANSWERED


def test_the_budget_goes_to_the_signal_that_separates() -> None:
    # out-of-collection questions have low support, adversarial ones look answerable to the reader:
    # every out-of-collection question is caught by support, and the reader's threshold abstains on
    # no answerable question beyond the budget
    questions, spans = _calibration(support_separates_outside=True, reader_separates_adversarial=False)
    chosen = choose_thresholds(questions, spans)
    assert chosen["out_of_collection_recall"] == 1.0
    # the reader separates adversarial questions and support separates nothing: the reader's
    # threshold catches the adversarial ones, support abstains on (almost) nothing
    questions, spans = _calibration(support_separates_outside=False, reader_separates_adversarial=True)
    chosen = choose_thresholds(questions, spans)
    rule = Abstention(chosen["support_below"], chosen["no_answer_above"])
    adversarial = [rule.decide(q.support, s.no_answer) is not None for q, s in zip(questions, spans, strict=True)
                   if not q.answers and q.where == "in"]
    assert sum(adversarial) / len(adversarial) == 1.0
    assert chosen["out_of_collection_recall"] < 0.2
    assert chosen["no_answer_roc_auc_in_collection"] > 0.99


def test_a_reader_that_separates_nothing_leaves_the_threshold_near_the_budget() -> None:
    questions, spans = _calibration(support_separates_outside=False, reader_separates_adversarial=False)
    chosen = choose_thresholds(questions, spans)
    rule = Abstention(chosen["support_below"], chosen["no_answer_above"])
    answered = _answered(questions, spans, rule)
    assert ANSWERED <= answered <= ANSWERED + 0.02  # it spends the budget, no more
    assert 0.4 < chosen["no_answer_roc_auc_in_collection"] < 0.6
