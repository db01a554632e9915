"""What a PDF prints on its pages that is not its text: running heads and footers, page numbers,
and table-of-contents lines with dot leaders.

pypdf extracts a page as it is laid out, so every page of a manual starts with its running head
("How to use bzip2") and ends with its number ("3", "iii", "Page 3 of 38"), and the table of
contents is lines of "2.1. NAME . . . . . . 2". Chunked as they are, those lines land in every
chunk that crosses a page break, and the contents pages rank for every question about a title.

Rules (measured on Debian's PDF manuals, benchmarks/boilerplate.py):

* a line among the first or last ``EDGE_LINES`` non-empty lines of a page that, digits aside, is
  also at an edge of at least ``MIN_REPEATS`` other pages is a running head or footer (a chapter's
  own head repeats only over that chapter, hence a count, not a share of the pages), on pages with
  more lines than their edges (a slide's only line is its text);
* a line at an edge that is only a page number (arabic, roman, "Page 3", "3 of 38", "- 3 -") goes;
* a line anywhere that ends in a dot leader and a page number is a table-of-contents line.

Only whole lines go; the page's other text and its line breaks stay as they were.
"""

from __future__ import annotations

import re
from collections import Counter

EDGE_LINES = 3
MIN_REPEATS = 3
MAX_HEAD_CHARS = 80  # a running head is a title, not a sentence of the text

_DIGITS = re.compile(r"\d+")
_SPACE = re.compile(r"\s+")
_PAGE_NUMBER = re.compile(
    r"^(?:page\s+)?(?:\d{1,5}|[ivxlcdm]{1,8})(?:\s*(?:of|/)\s*\d{1,5})?$|^[-\u2013\u2014]\s*\d{1,5}\s*[-\u2013\u2014]$",
    re.IGNORECASE,
)
# "2.1. NAME . . . . . 2", "Introduction ........ 1", "Index …… 40"
_TOC_LEADER = re.compile(r"(?:[.\u2026·]\s?){4,}\s*(?:\d{1,5}|[ivxlcdm]{1,8})\s*$", re.IGNORECASE)


def _is_toc_line(line: str) -> bool:
    leader = _TOC_LEADER.search(line)
    return leader is not None and any(c.isalpha() for c in line[:leader.start()])


def _key(line: str) -> str:
    return _DIGITS.sub("#", _SPACE.sub(" ", line.strip().lower()))


def _has_body(lines: list[str]) -> bool:
    """More lines than the edges hold: on a page of a few lines (a slide, a title page) every line
    is at an edge, and one repeated from page to page is the text, not a running head."""
    return sum(1 for line in lines if line.strip()) > 2 * EDGE_LINES


def _edges(lines: list[str]) -> list[int]:
    """Indexes of the first and last EDGE_LINES non-empty lines."""
    filled = [i for i, line in enumerate(lines) if line.strip()]
    return sorted(set(filled[:EDGE_LINES] + filled[-EDGE_LINES:]))


def strip_page_chrome(pages: list[str]) -> tuple[list[str], int]:
    """The pages without their running heads/footers, page numbers and contents lines, and how
    many lines went."""
    split = [page.split("\n") for page in pages]
    seen_at_edges: Counter[str] = Counter()
    for lines in split:
        if not _has_body(lines):
            continue
        keys = {_key(lines[i]) for i in _edges(lines)}
        seen_at_edges.update(k for k in keys if k and len(k) <= MAX_HEAD_CHARS and any(c.isalpha() for c in k))
    cleaned: list[str] = []
    removed = 0
    for lines in split:
        edges = set(_edges(lines))
        heads = _has_body(lines)
        kept: list[str] = []
        for index, line in enumerate(lines):
            stripped = line.strip()
            drop = bool(stripped) and (
                _is_toc_line(stripped)
                or (index in edges and (_PAGE_NUMBER.match(stripped) is not None
                                        or (heads and seen_at_edges[_key(line)] > MIN_REPEATS)))
            )
            if drop:
                removed += 1
            else:
                kept.append(line)
        cleaned.append("\n".join(kept).strip("\n"))
    return cleaned, removed
