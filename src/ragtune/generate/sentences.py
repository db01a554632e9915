"""Sentence spans for packing sources, extractive answers and grounding checks.

A deliberately small splitter: a terminator (. ! ? …, CJK stops) followed by space, a blank line,
or a line break that ends a line on purpose. It does not know abbreviations ("e.g. this"), which
only ever makes a span shorter than a sentence; every caller treats spans as units to keep or drop,
so a short span costs a little context, never text.

A single line break inside a paragraph (PDF text, hard-wrapped mail and READMEs) is a space, and a
word hyphenated across it is one word: sentences run across such breaks, and :func:`unwrap` gives
their text as one line. A line break still ends a sentence when the next line starts a list item,
heading, table row or quote, when the line is a heading or table row, or when the line is short on
purpose: the next line's first word would have fitted on it (a title, a paragraph's last line; the
usual reflow rule, with the text's longest line as its width). Offsets always point at the
original characters, so citations keep exact document offsets.
"""

from __future__ import annotations

import re

# The last group is a single line break, which ends a sentence only where _ends_line says so.
_BREAK = re.compile(r"[.!?…][\"'”’)\]]*\s+|[。！？]\s*|\n[^\S\n]*\n\s*|(\n[^\S\n]*)")
# A next line that starts a block of its own: list item, heading, table row, quote, code fence.
_BLOCK_START = re.compile(r"(?:[-*+•·▪◦‣–]|\d{1,3}[.)]|[a-zA-Z][.)])\s|#|\||>|```")
_BLOCK_LINE = re.compile(r"\s*(?:#|\|)")  # a line that is a heading or a table row
_SOFT_HYPHEN = re.compile(r"[^\W\d_]-\n[^\S\n]*[^\W\d_]")  # "infor-\nmation"
_WORD = re.compile(r"\S+")
# Room the reflow rule leaves for proportional fonts: PDF lines of one paragraph differ in characters.
_SLACK = 0.85


def sentence_spans(text: str, offset: int = 0) -> list[tuple[int, int]]:
    """``(start, end)`` of each non-blank sentence, as offsets into ``text`` plus ``offset``."""
    spans = []
    start = 0
    width = max((len(line.rstrip()) for line in text.split("\n")), default=0)
    for match in _BREAK.finditer(text):
        if match.group(1) is not None and not _ends_line(text, match.start(), match.end(), width):
            continue
        end = match.end()  # the terminator belongs to its sentence; _trim drops the space
        if text[start:end].strip():
            spans.append(_trim(text, start, end, offset))
        start = match.end()
    if text[start:].strip():
        spans.append(_trim(text, start, len(text), offset))
    return spans


def split_sentences(text: str) -> list[str]:
    return [text[a:b] for a, b in sentence_spans(text)]


def unwrap(text: str) -> str:
    """A span's text on one line: a word hyphenated across a line break joined ("infor-\\nmation"
    -> "information"; before a capital the hyphen stays: "Jean-\\nPierre" -> "Jean-Pierre"), other
    line breaks (and the spaces around them) one space. For showing and scoring, never for offsets."""
    text = _SOFT_HYPHEN.sub(lambda m: m[0][0] + ("" if m[0][-1].islower() else "-") + m[0][-1], text)
    return re.sub(r"[^\S\n]*\n\s*", " ", text)


def _ends_line(text: str, at: int, after: int, width: int) -> bool:
    """Whether the single line break at ``text[at]`` ends a sentence; ``after`` is where the next
    line's text starts (never a line break: a blank line is matched before this is asked)."""
    line = text[text.rfind("\n", 0, at) + 1:at].rstrip()
    if not line.strip() or after >= len(text):
        return True
    if at >= 2 and _SOFT_HYPHEN.match(text, at - 2):
        return False
    if _BLOCK_START.match(text, after) or _BLOCK_LINE.match(line):
        return True
    first_word = _WORD.match(text, after)
    return len(line) + 1 + (len(first_word[0]) if first_word else 0) <= _SLACK * width


def _trim(text: str, start: int, end: int, offset: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start + offset, end + offset
