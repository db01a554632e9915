"""Sentence spans for packing sources, extractive answers and grounding checks.

A deliberately small splitter: a terminator (. ! ? …, CJK stops) followed by space, or a line break.
It does not know abbreviations ("e.g. this"), which only ever makes a span shorter than a sentence;
every caller treats spans as units to keep or drop, so a short span costs a little context, never text.
"""

from __future__ import annotations

import re

_BREAK = re.compile(r"[.!?…][\"'”’)\]]*\s+|[。！？]\s*|\n\s*")


def sentence_spans(text: str, offset: int = 0) -> list[tuple[int, int]]:
    """``(start, end)`` of each non-blank sentence, as offsets into ``text`` plus ``offset``."""
    spans = []
    start = 0
    for match in _BREAK.finditer(text):
        end = match.end()  # the terminator belongs to its sentence; _trim drops the space
        if text[start:end].strip():
            spans.append(_trim(text, start, end, offset))
        start = match.end()
    if text[start:].strip():
        spans.append(_trim(text, start, len(text), offset))
    return spans


def split_sentences(text: str) -> list[str]:
    return [text[a:b] for a, b in sentence_spans(text)]


def _trim(text: str, start: int, end: int, offset: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start + offset, end + offset
