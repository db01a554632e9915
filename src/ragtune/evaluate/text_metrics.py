"""Text metrics of a reply against its references, shared by ``eval answers`` and ``tune eval``
(``finetune.lora.scoring``): exact match and token F1 with the official SQuAD normalisation (lower
case, no punctuation, no articles, single spaces), best over the gold answers; and ROUGE-L, the
F-measure of the longest common subsequence of tokens, tokenised as the ``rouge-score`` package does
by default (lower case, runs of ``[a-z0-9]``, no stemming; a test compares it with that package).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_ROUGE_TOKEN = re.compile(r"[^a-z0-9]+")


def normalize_answer(text: str) -> str:
    """The official SQuAD evaluation normalisation."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    if not golds:
        return float(normalize_answer(prediction) == "")
    return max(float(normalize_answer(prediction) == normalize_answer(g)) for g in golds)


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    if not golds:
        return float(normalize_answer(prediction) == "")
    pred = normalize_answer(prediction).split()
    best = 0.0
    for gold in golds:
        ref = normalize_answer(gold).split()
        common = sum((Counter(pred) & Counter(ref)).values())
        if not pred or not ref:
            best = max(best, float(pred == ref))
        elif common:
            p, r = common / len(pred), common / len(ref)
            best = max(best, 2 * p * r / (p + r))
    return best


# -- ROUGE-L ----------------------------------------------------------------------------------------
def rouge_tokens(text: str) -> list[str]:
    """``rouge_score.tokenize`` without stemming: lower case, non-alphanumerics as separators."""
    return _ROUGE_TOKEN.sub(" ", text.lower()).split()


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (beta 1) of ``prediction`` against ``reference``."""
    pred, ref = rouge_tokens(prediction), rouge_tokens(reference)
    lcs = lcs_length(ref, pred)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)
