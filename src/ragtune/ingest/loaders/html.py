"""HTML (.html, .htm) through selectolax's lexbor parser.

What a reader of the page would call its text: ``script``, ``style``, ``noscript``,
``template``, ``nav`` and ``footer`` subtrees are dropped (navigation and boilerplate repeat on
every page of a site and would dominate retrieval). Block elements (paragraphs, list items,
table rows, headings, ...) become blocks separated by a blank line, so the chunker sees HTML
paragraphs as paragraphs; whitespace inside a block is collapsed as a browser would, except in
``pre``. ``h1``-``h6`` become ``Section``s whose offsets point into the emitted text.
The title is ``<title>``, else the first ``h1``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ragtune.ingest.encoding import decode_bytes
from ragtune.ingest.loaders.base import LoaderOptions, file_document, read_checked, require_text
from ragtune.models import LoadedDocument, Section

_DROPPED = frozenset({"script", "style", "noscript", "template", "nav", "footer", "head", "-comment"})
_HEADINGS = {f"h{level}": level for level in range(1, 7)}
_BLOCKS = frozenset(
    {
        "html", "body", "p", "div", "section", "article", "main", "header", "aside", "blockquote",
        "pre", "ul", "ol", "li", "dl", "dt", "dd", "table", "thead", "tbody", "tfoot", "tr",
        "caption", "figure", "figcaption", "form", "fieldset", "address", "hr", "details",
        "summary", *_HEADINGS,
    }
)  # fmt: skip
_CELLS = frozenset({"td", "th"})
_ASCII_SPACE = re.compile(r"[ \t\n\r\f]+")  # HTML collapses ASCII whitespace only (not &nbsp;)
_SPACE_AROUND_BREAK = re.compile(r" *\n *")


class _TextBuilder:
    """Accumulates inline text into blocks; a block ends where a block element starts or ends."""

    def __init__(self) -> None:
        self.text = ""
        self.sections: list[Section] = []
        self._pieces: list[str] = []
        self._pre_depth = 0

    def inline(self, piece: str) -> None:
        self._pieces.append(piece if self._pre_depth else _ASCII_SPACE.sub(" ", piece))

    def line_break(self) -> None:
        self._pieces.append("\n")

    def cell(self) -> None:
        if "".join(self._pieces).strip():
            self._pieces.append(" | ")

    def enter_pre(self) -> None:
        self._pre_depth += 1

    def leave_pre(self) -> None:
        self._pre_depth -= 1

    def flush(self, heading_level: int | None = None) -> None:
        raw = "".join(self._pieces)
        self._pieces = []
        # Inside <pre> whitespace is content; elsewhere spaces around a <br> are not.
        block = raw.strip("\n").rstrip() if self._pre_depth else _SPACE_AROUND_BREAK.sub("\n", raw).strip()
        if not block.strip():
            return
        if self.text:
            self.text += "\n\n"
        if heading_level is not None:
            title = " ".join(block.split())
            self.sections.append(Section(start=len(self.text), level=heading_level, title=title))
        self.text += block


def html_to_text(html: str) -> tuple[str, tuple[Section, ...], str | None]:
    """(text, sections, title) of an HTML document."""
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(html)
    title_node = tree.css_first("title")
    title = " ".join(title_node.text().split()) if title_node is not None else ""
    builder = _TextBuilder()
    root = tree.body if tree.body is not None else tree.root
    if root is not None:
        _walk(root, builder)
    builder.flush()
    if not title:
        title = next((s.title for s in builder.sections if s.level == 1), "")
    return builder.text, tuple(builder.sections), title or None


def _walk(root: Any, builder: _TextBuilder) -> None:
    # An explicit stack, not recursion: real pages nest deeper than Python's recursion limit.
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        tag = node.tag
        if leaving:
            if tag == "pre":
                builder.flush()
                builder.leave_pre()
            else:
                builder.flush(_HEADINGS.get(tag))
            continue
        if tag == "-text":
            builder.inline(node.text(deep=False) or "")
            continue
        if tag in _DROPPED:
            continue
        if tag == "br":
            builder.line_break()
            continue
        if tag in _CELLS:
            builder.cell()
        if tag in _BLOCKS:
            builder.flush()
            if tag == "pre":
                builder.enter_pre()
            stack.append((node, True))
        children = list(node.iter(include_text=True))
        stack.extend((child, False) for child in reversed(children))


class HtmlLoader:
    def __init__(self, options: LoaderOptions | None = None) -> None:
        self.options = options or LoaderOptions()

    def load(self, source: Path) -> Iterator[LoadedDocument]:
        html = decode_bytes(read_checked(source, self.options), str(source))
        text, sections, title = html_to_text(html)
        require_text(text, str(source))
        yield file_document(source, text, "html", mime="text/html", title=title, sections=sections)
