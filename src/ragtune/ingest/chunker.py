"""Structure-following chunking, measured in the embedder's own tokens.

``StructuredChunker`` cuts a ``LoadedDocument`` into chunks that:

* never cross a section (heading) boundary: each section is chunked on its own, and each chunk
  carries the heading path (``"Intro > Setup"``) of the section it came from;
* keep a section that fits the budget whole (exactly its stripped text, heading line included);
  otherwise pack whole paragraphs, then sentences (or lines), then words, then pieces split at
  punctuation, and only inside a single word longer than the budget any token boundary;
* overlap the previous chunk of the same section by up to ``overlap_tokens``, made of whole
  sentences where some fit, else of whole words;
* have exact offsets: ``document.text[chunk.start:chunk.end] == chunk.text``, with no
  whitespace at either edge.

Why it is built on token offsets: chunking must cost next to nothing beside embedding (tens of
paragraphs per second), so the document is tokenised once, every candidate boundary
(paragraph, sentence, word) is mapped to a token index, and cutting is index arithmetic; no
piece is re-tokenised to see whether it fits. For WordPiece tokenizers (MiniLM, BERT) a cut at a
word boundary tokenises exactly as the whole did, so ``chunk.tokens`` equals
``count_tokens(chunk.text)``; the rare cut inside a word (a URL longer than the budget) is
recounted and shrunk until it fits. Concession: for byte-level BPE or SentencePiece tokenizers,
whose first token of a word includes the space before it, a chunk's real count can differ from
``chunk.tokens`` by about one token.

A section consisting of its heading line alone (a heading immediately followed by a
subheading) yields no chunk of its own: the heading survives in its subsections' heading paths,
and a chunk holding one heading line only adds noise to retrieval. A document made of nothing
but headings still yields them.
"""

from __future__ import annotations

import re
import string
import unicodedata
from array import array
from bisect import bisect_left
from dataclasses import dataclass
from itertools import pairwise
from typing import Protocol, runtime_checkable

from ragtune.errors import ConfigError
from ragtune.models import Chunk, LoadedDocument

# Strength of the boundary before a token, weakest first: inside a word, at punctuation
# ("end|." or "(|see"), between words (whitespace), between sentences, between paragraphs.
_ANY, _PUNCT, _WORD, _SENTENCE, _PARAGRAPH = 0, 1, 2, 3, 4
_LEVELS = 5
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
# After a sentence terminator (and closing quotes, brackets or emphasis) and space, after CJK
# terminators, and after a single line break (list items, table rows, code lines).
_SENTENCE_BREAK = re.compile(r"[.!?…][\"'”’)\]*_`]*\s+|[。！？]\s*|\n\s*")
# "2. Validate" starts a list item; the "." of its marker does not end a sentence.
_LIST_MARKER = re.compile(r"^[ \t]*(?:\d{1,3}|[A-Za-z])[.)][ \t]+", re.MULTILINE)
# A chunk cut at a paragraph boundary must still be at least this full; otherwise a short
# paragraph before a long one would become a chunk of its own.
MIN_FILL = 0.5
# Tokenisation window: bounds the transient list of offset tuples the tokenizer returns.
WINDOW_CHARS = 65536
WINDOWS_PER_BATCH = 8
_ASCII_PUNCT = frozenset(string.punctuation)


@runtime_checkable
class OffsetTokenizer(Protocol):
    """What the chunker needs from a tokenizer (``HFTokenCounter`` provides it)."""

    def count_tokens(self, text: str) -> int: ...

    def token_offsets(self, text: str) -> list[tuple[int, int]]: ...


@dataclass(frozen=True)
class ChunkBudget:
    """How many of the embedder's tokens a chunk may hold, and how many overlap the previous one."""

    max_tokens: int = 256
    overlap_tokens: int = 32


@dataclass(frozen=True)
class _Segment:
    start: int
    end: int
    heading: str
    heading_only: bool


class StructuredChunker:
    """``Chunker`` that follows headings, paragraphs and sentences under a token budget."""

    def __init__(self, token_counter: OffsetTokenizer, max_tokens: int = 256, overlap_tokens: int = 32) -> None:
        if not isinstance(token_counter, OffsetTokenizer):
            raise ConfigError(
                "token_counter must provide count_tokens(text) and token_offsets(text) "
                f"(e.g. HFTokenCounter), got {type(token_counter).__name__}"
            )
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0:
            raise ConfigError(f"max_tokens must be an integer greater than 0, got {max_tokens!r}")
        if (
            isinstance(overlap_tokens, bool)
            or not isinstance(overlap_tokens, int)
            or not 0 <= overlap_tokens < max_tokens
        ):
            raise ConfigError(
                f"overlap_tokens must be an integer with 0 <= overlap_tokens < max_tokens={max_tokens}, "
                f"got {overlap_tokens!r}"
            )
        self.token_counter = token_counter
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens
        self._min_fill = max(1, int(max_tokens * MIN_FILL))

    def split(self, document: LoadedDocument) -> list[Chunk]:
        text = document.text
        if not text.strip():
            return []
        if not document.sections and len(text) <= WINDOW_CHARS:
            # Fast path, the common case for paragraph-sized records: the whole text is one chunk.
            count = len(self.token_counter.token_offsets(text))
            if 0 < count <= self.max_tokens:
                start, end = _strip(text, 0, len(text))
                return [Chunk(ordinal=0, text=text[start:end], start=start, end=end, tokens=count)]
        starts, ends = self._offsets(text)
        spans: list[tuple[int, int, int, str]] = []
        for segment in _segments(document):
            for start, end, tokens in self._split_segment(text, segment, starts, ends):
                spans.append((start, end, tokens, segment.heading))
        return [
            Chunk(ordinal=i, text=text[start:end], start=start, end=end, heading=heading, tokens=tokens)
            for i, (start, end, tokens, heading) in enumerate(spans)
        ]

    def _offsets(self, text: str) -> tuple[array[int], array[int]]:
        """Start and end offsets of every token of ``text``, tokenised window by window.

        Windows end at a line break or space, where a WordPiece tokenizer splits anyway, so the
        offsets equal those of the whole text; compact arrays and bounded windows keep a 25 MB
        document at tens of MB instead of a list of millions of tuples.
        """
        starts, ends = array("q"), array("q")
        batch = getattr(self.token_counter, "token_offsets_batch", None)
        windows = _windows(text)
        for i in range(0, len(windows), WINDOWS_PER_BATCH):
            group = windows[i : i + WINDOWS_PER_BATCH]
            pieces = [text[a:b] for a, b in group]
            if batch is not None and len(pieces) > 1:
                results = batch(pieces)
            else:
                results = [self.token_counter.token_offsets(piece) for piece in pieces]
            for (a, _), offsets in zip(group, results, strict=True):
                starts.extend(s + a for s, _ in offsets)
                ends.extend(e + a for _, e in offsets)
        _make_monotonic(starts, ends)
        return starts, ends

    def _split_segment(
        self, text: str, segment: _Segment, starts: array[int], ends: array[int]
    ) -> list[tuple[int, int, int]]:
        """(start, end, tokens) of the chunks of one section."""
        cs, ce = _strip(text, segment.start, segment.end)
        first, stop = bisect_left(starts, cs), bisect_left(starts, ce)
        count = stop - first
        if count == 0:  # only characters the tokenizer drops: nothing to embed
            return []
        if count <= self.max_tokens:
            return [(cs, ce, count)]
        strength = _boundaries(text, cs, ce, first, stop, starts, ends)
        out: list[tuple[int, int, int]] = []
        a, previous_end = first, first
        while True:
            limit = min(a + self.max_tokens, stop)
            b = stop if limit == stop else self._cut(strength, first, max(a, previous_end) + 1, a, limit)
            start, end, tokens, b = self._span(text, strength, (cs, ce), (first, stop), a, b, starts)
            out.append((start, end, tokens))
            if b == stop:
                return out
            a, previous_end = self._overlap_start(strength, first, a, b), b

    def _cut(self, strength: bytearray, base: int, low: int, a: int, limit: int) -> int:
        """Token index to end a chunk at in ``[low, limit]``: the strongest boundary, latest first."""
        fill = max(low, a + self._min_fill)
        best_filled = [-1] * _LEVELS  # latest boundary of each strength, chunk at least MIN_FILL full
        best_any = [-1] * _LEVELS
        for k in range(limit, low - 1, -1):
            level = strength[k - base]
            if best_any[level] < 0:
                best_any[level] = k
                if k >= fill:
                    best_filled[level] = k
        for candidates in (best_filled, best_any):
            for level in (_PARAGRAPH, _SENTENCE, _WORD, _PUNCT):
                if candidates[level] >= 0:
                    return candidates[level]
        return limit

    def _overlap_start(self, strength: bytearray, base: int, a: int, b: int) -> int:
        """Start of the chunk after ``[a, b)``: up to ``overlap_tokens`` back, at a sentence if one fits."""
        if not self.overlap_tokens:
            return b
        low = max(a + 1, b - self.overlap_tokens)
        for level in (_SENTENCE, _WORD, _PUNCT):
            for k in range(low, b):
                if strength[k - base] >= level:
                    return k
        return low

    def _span(
        self,
        text: str,
        strength: bytearray,
        segment: tuple[int, int],
        tokens: tuple[int, int],
        a: int,
        b: int,
        starts: array[int],
    ) -> tuple[int, int, int, int]:
        """(start, end, tokens, b) of the chunk for tokens ``[a, b)``; ``b`` shrinks if a cut word overflows.

        The characters run to the next token, so characters the tokenizer skips stay in a chunk.
        """
        (cs, ce), (first, stop) = segment, tokens
        start, end = _strip(text, cs if a == first else starts[a], ce if b == stop else min(starts[b], ce))
        inside_word = (a != first and strength[a - first] == _ANY) or (b != stop and strength[b - first] == _ANY)
        if not inside_word:
            return start, end, b - a, b
        # A word was cut: its pieces may tokenise differently alone, so count them for real.
        count = self.token_counter.count_tokens(text[start:end])
        while count > self.max_tokens and b - 1 > a:
            b -= 1
            start, end = _strip(text, start, min(starts[b], ce))
            count = self.token_counter.count_tokens(text[start:end])
        return start, end, count, b


def _segments(document: LoadedDocument) -> list[_Segment]:
    """The text before the first heading, then one segment per section, with heading paths."""
    text = document.text
    sections = sorted((s for s in document.sections if 0 <= s.start < len(text)), key=lambda s: s.start)
    segments: list[_Segment] = []
    first_start = sections[0].start if sections else len(text)
    if first_start > 0:
        segments.append(_Segment(0, first_start, "", False))
    path: list[tuple[int, str]] = []  # (level, title) from the outermost heading in
    for i, section in enumerate(sections):
        end = sections[i + 1].start if i + 1 < len(sections) else len(text)
        while path and path[-1][0] >= section.level:
            path.pop()
        path.append((section.level, section.title))
        line_end = text.find("\n", section.start, end)
        heading_only = line_end < 0 or not text[line_end:end].strip()
        segments.append(_Segment(section.start, end, " > ".join(t for _, t in path), heading_only))
    if any(not s.heading_only and text[s.start : s.end].strip() for s in segments):
        segments = [s for s in segments if not s.heading_only]
    return segments


def _boundaries(text: str, cs: int, ce: int, first: int, stop: int, starts: array[int], ends: array[int]) -> bytearray:
    """Strength of the boundary before each token of ``[first, stop]`` (index relative to ``first``)."""
    strength = bytearray(stop - first + 1)
    for k in range(first + 1, stop):
        previous_end, start = ends[k - 1], starts[k]
        if start > previous_end:
            gap = text[previous_end:start]
            if gap == " " or any(map(_is_space, gap)):
                strength[k - first] = _WORD
                continue
        if _is_punct(text[start]) or (previous_end > 0 and _is_punct(text[previous_end - 1])):
            strength[k - first] = _PUNCT
    markers = {match.end() for match in _LIST_MARKER.finditer(text, cs, ce)}
    for pattern, level in ((_SENTENCE_BREAK, _SENTENCE), (_PARAGRAPH_BREAK, _PARAGRAPH)):
        for match in pattern.finditer(text, cs, ce):
            if level == _SENTENCE and match.end() in markers:
                continue
            k = bisect_left(starts, match.end(), first, stop)
            if first < k < stop:
                strength[k - first] = max(strength[k - first], level)
    return strength


def _is_space(char: str) -> bool:
    # BERT's notion of whitespace; other control characters are deleted, not separators.
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def _is_punct(char: str) -> bool:
    # BERT splits words on these: ASCII punctuation and every Unicode "P*" category.
    if char.isascii():
        return char in _ASCII_PUNCT
    return unicodedata.category(char).startswith("P")


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _windows(text: str) -> list[tuple[int, int]]:
    """``text`` cut into pieces of at most ``WINDOW_CHARS``, each ending after a newline or space."""
    windows: list[tuple[int, int]] = []
    start = 0
    while len(text) - start > WINDOW_CHARS:
        limit = start + WINDOW_CHARS
        cut = text.rfind("\n", start + WINDOW_CHARS // 2, limit)
        if cut < 0:
            cut = text.rfind(" ", start + WINDOW_CHARS // 2, limit)
        end = cut + 1 if cut >= 0 else limit  # no space in 32k characters: cut anyway
        windows.append((start, end))
        start = end
    windows.append((start, len(text)))
    return windows


def _make_monotonic(starts: array[int], ends: array[int]) -> None:
    """Make token starts non-decreasing and ends >= starts, in place (odd tokens can be (0, 0))."""
    if any(later < earlier for earlier, later in pairwise(starts)):
        for i in range(1, len(starts)):
            starts[i] = max(starts[i], starts[i - 1])
    for i in range(len(starts)):
        if ends[i] < starts[i]:
            ends[i] = starts[i]


class WholeDocumentChunker:
    """One chunk per document, for corpora whose documents already are the retrieval units
    (BEIR-style evaluation sets: a paragraph is judged relevant, not a piece of it).
    A text longer than the embedder's window is embedded from its beginning, as any
    sentence-transformers encode of it would be."""

    def __init__(self, token_counter: OffsetTokenizer) -> None:
        self.token_counter = token_counter

    def split(self, document: LoadedDocument) -> list[Chunk]:
        start, end = _strip(document.text, 0, len(document.text))
        if start >= end:
            return []
        text = document.text[start:end]
        return [Chunk(ordinal=0, text=text, start=start, end=end, heading="",
                      tokens=self.token_counter.count_tokens(text))]
