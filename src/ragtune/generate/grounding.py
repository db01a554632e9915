"""Is each answer sentence supported by the sources it cites?

Support of a claim by a passage, in [0, 1], combines two kinds of evidence:

* lexical: the share of the claim's content terms (stemmed, stopwords removed: the BM25 analyzer)
  that occur in the passage, since a grounded sentence mostly reuses the source's words, names and
  numbers;
* semantic: the best cosine between the claim and any single sentence of the passage, under the
  collection's own embedder, for paraphrases.

``support = 0.5 * lexical + 0.5 * max(cosine, 0)``. This is a heuristic, not an entailment model:
it catches answers that talk about something the sources do not mention, not a subtly wrong number
in an otherwise copied sentence.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ragtune.generate.sentences import split_sentences
from ragtune.ingest.lexical import LexicalAnalyzer
from ragtune.protocols import Embedder

_CITATION = re.compile(r"\[(\d{1,3}(?:\s*[,;]\s*\d{1,3})*)\]")


def parse_citations(sentence: str) -> tuple[int, ...]:
    """Source numbers cited as [1], [1][2] or [1, 2], in order of first appearance."""
    seen: dict[int, None] = {}
    for match in _CITATION.finditer(sentence):
        for part in re.split(r"\s*[,;]\s*", match.group(1)):
            seen.setdefault(int(part), None)
    return tuple(seen)


def strip_citations(text: str) -> str:
    return re.sub(r"\s+([.,;:!?])", r"\1", _CITATION.sub("", text)).strip()


@dataclass(frozen=True)
class Evidence:
    lexical: float
    semantic: float

    @property
    def support(self) -> float:
        return 0.5 * self.lexical + 0.5 * max(self.semantic, 0.0)


class SupportScorer:
    def __init__(self, embedder: Embedder, analyzer: LexicalAnalyzer, cache_size: int = 4096) -> None:
        self.embedder = embedder
        self.analyzer = analyzer
        # An answer scores the same source sentences twice (question support, then grounding of
        # the generated sentences): remember recent vectors so each sentence is embedded once.
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()  # one engine serves concurrent requests (the server)

    def _embed(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        fresh = dict(zip(missing, self.embedder.embed_batch(missing), strict=True)) if missing else {}
        with self._lock:
            self._cache.update(fresh)
            rows = np.stack([fresh[t] if t in fresh else self._cache[t] for t in texts])
            for text in texts:
                if text in self._cache:
                    self._cache.move_to_end(text)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return rows

    def evidence(self, claims: Sequence[str], passages: Sequence[Sequence[str]]) -> list[list[Evidence]]:
        """Evidence of each claim (rows) in each passage (columns; a passage is a list of texts)."""
        passage_sentences = [[s for text in p for s in split_sentences(text)] or [""] for p in passages]
        flat = [s for sents in passage_sentences for s in sents]
        vectors = self._embed([strip_citations(c) or c for c in claims] + flat)
        claim_vecs, sent_vecs = vectors[: len(claims)], vectors[len(claims):]
        passage_terms = [set(self.analyzer.term_counts(" ".join(p))) for p in passages]
        out: list[list[Evidence]] = []
        for i, claim in enumerate(claims):
            terms = set(self.analyzer.term_counts(strip_citations(claim)))
            row = []
            offset = 0
            for j, sents in enumerate(passage_sentences):
                block = sent_vecs[offset: offset + len(sents)]
                offset += len(sents)
                semantic = float(np.max(block @ claim_vecs[i])) if len(block) else 0.0
                lexical = len(terms & passage_terms[j]) / len(terms) if terms else 0.0
                row.append(Evidence(lexical=lexical, semantic=semantic))
            out.append(row)
        return out
