from __future__ import annotations

import pytest

from ragtune.generate.grounding import SupportScorer, parse_citations, strip_citations
from ragtune.ingest.lexical import LexicalAnalyzer


@pytest.mark.parametrize(("sentence", "numbers"), [
    ("Paris is the capital [1].", (1,)),
    ("It is big [2][1] and old [2].", (2, 1)),
    ("Both [1, 3] agree.", (1, 3)),
    ("See [12; 4].", (12, 4)),
    ("No citation here.", ()),
    ("An array a[i] is not [x] a citation.", ()),
])
def test_parse_citations(sentence: str, numbers: tuple[int, ...]) -> None:
    assert parse_citations(sentence) == numbers


def test_strip_citations() -> None:
    assert strip_citations("Paris is the capital [1][2].") == "Paris is the capital."


def test_support_separates_grounded_from_unrelated_claims(embedder) -> None:  # type: ignore[no-untyped-def]
    scorer = SupportScorer(embedder, LexicalAnalyzer())
    passage = ["The Eiffel Tower was completed in 1889 for the World's Fair in Paris. It is 330 metres tall."]
    claims = ["The Eiffel Tower was finished in 1889 [1].", "Bananas are rich in potassium [1]."]
    grounded, unrelated = (row[0] for row in scorer.evidence(claims, [passage]))
    assert grounded.lexical == pytest.approx(3 / 4)  # "finished" is not in the passage; the rest is
    assert grounded.support > 0.7 > 0.3 > unrelated.support
