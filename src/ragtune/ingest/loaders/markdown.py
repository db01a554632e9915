"""Markdown (.md, .markdown): the text is kept as written; ATX headings become sections.

Only ATX headings (``# Title`` .. ``###### Title``, up to three leading spaces, optional closing
``#``s) are recognised, and never inside fenced code blocks (``` or ~~~, closed by a fence of the
same character at least as long). Setext headings (a line underlined with ``===``/``---``) are
not: ``---`` is as often a rule or front matter, and the concession keeps the parser one regex.
The title is the first level-1 heading.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from ragtune.ingest.encoding import decode_bytes
from ragtune.ingest.loaders.base import LoaderOptions, file_document, read_checked, require_text
from ragtune.models import LoadedDocument, Section

_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def parse_sections(text: str) -> tuple[Section, ...]:
    """ATX headings of ``text`` outside fenced code, with the offset of each heading line."""
    sections: list[Section] = []
    fence: str | None = None
    offset = 0
    for body in text.split("\n"):  # not splitlines(): only \n ends a line in decoded text
        fence_match = _FENCE.match(body)
        if fence is not None:
            # A closing fence: same character, at least as long, nothing after it but spaces.
            if fence_match and _closes(fence, fence_match.group(1), body[fence_match.end() :]):
                fence = None
        elif fence_match and not (fence_match.group(1)[0] == "`" and "`" in body[fence_match.end() :]):
            fence = fence_match.group(1)
        else:
            heading = _ATX.match(body)
            if heading:
                title = (heading.group(2) or "").strip()
                if title:
                    sections.append(Section(start=offset, level=len(heading.group(1)), title=title))
        offset += len(body) + 1
    return tuple(sections)


def _closes(opening: str, candidate: str, rest: str) -> bool:
    return candidate[0] == opening[0] and len(candidate) >= len(opening) and not rest.strip()


class MarkdownLoader:
    def __init__(self, options: LoaderOptions | None = None) -> None:
        self.options = options or LoaderOptions()

    def load(self, source: Path) -> Iterator[LoadedDocument]:
        text = require_text(decode_bytes(read_checked(source, self.options), str(source)), str(source))
        sections = parse_sections(text)
        title = next((s.title for s in sections if s.level == 1), None)
        yield file_document(source, text, "markdown", mime="text/markdown", title=title, sections=sections)
