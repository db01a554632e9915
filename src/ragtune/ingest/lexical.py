"""Tokenisation for the lexical (BM25) index.

The same analysis as Lucene's English analyser and bm25s: lower case, words of two or more word
characters, Lucene's 33 English stop words, Snowball English stemming (PyStemmer). Keeping it
identical lets our PostgreSQL BM25 be checked against bm25s score for score. It lives in ``ingest``,
below ``retrieve``: what indexes a chunk and what reads a query must be the same code.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

TOKEN_PATTERN = re.compile(r"(?u)\b\w\w+\b")

# Lucene's EnglishAnalyzer stop set (also bm25s' "en" list).
ENGLISH_STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then "
    "there these they this to was will with".split()
)


class LexicalAnalyzer:
    """Turns text into stemmed terms. Cheap to build; the stemmer loads on first use."""

    def __init__(self, language: str = "english") -> None:
        self.language = language
        self._stemmer = None

    @property
    def stemmer(self) -> Any:
        if self._stemmer is None:
            import Stemmer

            self._stemmer = Stemmer.Stemmer(self.language)
        return self._stemmer

    def terms(self, text: str) -> list[str]:
        words = [w for w in TOKEN_PATTERN.findall(text.lower()) if w not in ENGLISH_STOPWORDS]
        if not words:
            return []
        return list(_stem_all(self.stemmer, tuple(words)))

    def term_counts(self, text: str) -> Counter[str]:
        return Counter(self.terms(text))


def _stem_all(stemmer: Any, words: tuple[str, ...]) -> list[str]:
    cache = _STEMS
    out = []
    missing = [w for w in set(words) if w not in cache]
    if missing:
        for word, stem in zip(missing, stemmer.stemWords(missing), strict=True):
            if len(cache) < 2_000_000:
                cache[word] = stem
            else:
                return list(stemmer.stemWords(list(words)))
    for w in words:
        out.append(cache[w])
    return out


# word -> stem, shared by all analysers (stemming is the slow part of analysis); bounded in _stem_all
_STEMS: dict[str, str] = {}
