"""HTML (.html, .htm) through selectolax's lexbor parser.

What a reader of the page would call its text: ``script``, ``style``, ``noscript``,
``template``, ``nav`` and ``footer`` subtrees are dropped (navigation and boilerplate repeat on
every page of a site and would dominate retrieval). Block elements (paragraphs, list items,
table rows, headings, ...) become blocks separated by a blank line, so the chunker sees HTML
paragraphs as paragraphs; whitespace inside a block is collapsed as a browser would, except in
``pre``. ``h1``-``h6`` become ``Section``s whose offsets point into the emitted text.
The title is ``<title>``, else the first ``h1``.

With ``strip_chrome`` (the default; ``[ingest] strip_boilerplate``) the page's chrome is left out
too, measured on Debian's manuals (benchmarks/boilerplate.py, README). A page that marks its main
content (one ``main`` or ``role=main``) is read from there. Left out: elements whose ``role``,
``class`` or ``id`` names navigation, headers, footers, sidebars, breadcrumbs or a table of
contents (texinfo's "Next: ..., Previous: ..., Up: ..." bar, DocBook's navheader, Sphinx's
related bar), a heading's "#" permalink, and blocks and small containers that are mostly link
text (a menu, a list of links to other pages): at least 60% of the characters inside
``<a href>`` and under 40 words, or four fifths at any length; then a heading left with nothing
under it. Headings and ``pre`` are otherwise kept. A page that would keep no text at all (an
index of links) is read whole instead: it is what the user gave.
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
# role, class and id tokens of page chrome in the documentation generators users ingest (texinfo,
# DocBook, Sphinx, gtk-doc, Doxygen, javadoc) and in common site themes
_CHROME_ROLES = frozenset({"navigation", "banner", "contentinfo", "search", "menu", "menubar", "toolbar"})
_CHROME_TOKENS = frozenset(
    {
        "nav", "navbar", "navigation", "nav-panel", "navheader", "navfooter", "navbox", "navlinks",
        "breadcrumb", "breadcrumbs", "sidebar", "sphinxsidebar", "related", "menu", "topnav",
        "header", "footer", "site-header", "site-footer", "toc", "skip-link", "skiplink",
        "mw-navigation", "bottomnav", "navigationbar", "headerlink",
    }
)  # fmt: skip
_LINK_SHARE = 0.6  # a block at least this much link text, and short, is navigation
_LINK_SHARE_LONG = 0.8  # ... at any length
_SHORT_WORDS = 40
# elements whose whole text is judged by the link rule, up to this many characters
_LINK_CONTAINERS = frozenset({"div", "td", "table", "ul", "ol", "dl", "aside", "section", "header", "center"})
_CONTAINER_CHARS = 4000
_CONTENT_MARKS = "h1, h2, h3, main, article, [role=main]"
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

    def __init__(self, strip_chrome: bool = False) -> None:
        self.text = ""
        self.sections: list[Section] = []
        self.strip_chrome = strip_chrome
        self.dropped_blocks = 0
        self._pieces: list[str] = []
        self._link_chars = 0
        self._pre_depth = 0
        self.link_depth = 0
        # (text length before it, index in sections, level) of a heading nothing but chrome follows yet
        self._open_heading: tuple[int, int, int] | None = None
        self._chrome_after_heading = False

    def _drop_empty_heading(self, next_level: int) -> None:
        """A heading whose section held only chrome ("API Menu" over a menu) is chrome too: it goes
        when the next heading of its level or higher, or the end, shows nothing else came."""
        if self._open_heading is None or not self._chrome_after_heading:
            return
        length, index, level = self._open_heading
        if next_level <= level:
            self.text = self.text[:length]
            del self.sections[index:]
            self._open_heading = None

    def finish(self) -> None:
        self.flush()
        self._drop_empty_heading(0)

    def inline(self, piece: str) -> None:
        piece = piece if self._pre_depth else _ASCII_SPACE.sub(" ", piece)
        self._pieces.append(piece)
        if self.link_depth:
            self._link_chars += len(piece.strip())

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
        link_chars, self._pieces, self._link_chars = self._link_chars, [], 0
        # Inside <pre> whitespace is content; elsewhere spaces around a <br> are not.
        block = raw.strip("\n").rstrip() if self._pre_depth else _SPACE_AROUND_BREAK.sub("\n", raw).strip()
        if not block.strip():
            return
        if self.strip_chrome and heading_level is None and not self._pre_depth and _mostly_links(block, link_chars):
            self.dropped_blocks += 1
            self._chrome_after_heading = self._open_heading is not None
            return
        if heading_level is not None:
            self._drop_empty_heading(heading_level)
            self._open_heading = (len(self.text), len(self.sections), heading_level)
            self._chrome_after_heading = False
        else:
            self._open_heading = None  # content: the heading stays
        if self.text:
            self.text += "\n\n"
        if heading_level is not None:
            title = " ".join(block.split())
            self.sections.append(Section(start=len(self.text), level=heading_level, title=title))
        self.text += block


def _mostly_links(block: str, link_chars: int) -> bool:
    visible = len(block) - block.count(" ")
    share = link_chars / visible if visible else 0.0
    return share >= _LINK_SHARE_LONG or (share >= _LINK_SHARE and len(block.split()) < _SHORT_WORDS)


def _links_only(node: Any) -> bool:
    """A container (a menu column, a list of links) mostly link text by the block rule."""
    text = node.text(deep=True, separator=" ")
    if len(text) > _CONTAINER_CHARS:  # the page's main column, not a menu; and bounds the cost
        return False
    if node.css_first(_CONTENT_MARKS) is not None:  # a short page's body under a long menu
        return False
    links = sum(len(a.text(deep=True).replace(" ", "").strip()) for a in node.css("a[href]"))
    return links > 0 and _mostly_links(" ".join(text.split()), links)


def _is_permalink(node: Any) -> bool:
    """The "#" or "¶" after a heading that links to itself."""
    text = node.text(deep=True).strip()
    return len(text) <= 1 and not text.isalnum() and (node.attributes.get("href") or "").startswith("#")


def _is_chrome(node: Any) -> bool:
    attributes = node.attributes
    if not attributes:
        return False
    role = attributes.get("role")
    if role and role.lower() in _CHROME_ROLES:
        return True
    tokens = f"{attributes.get('class') or ''} {attributes.get('id') or ''}".lower().split()
    return any(token in _CHROME_TOKENS for token in tokens)


def html_to_text(html: str, *, strip_chrome: bool = False) -> tuple[str, tuple[Section, ...], str | None]:
    """(text, sections, title) of an HTML document; with ``strip_chrome``, without its navigation,
    headers, footers and link lists (module docstring)."""
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(html)
    title_node = tree.css_first("title")
    title = " ".join(title_node.text().split()) if title_node is not None else ""
    root = tree.body if tree.body is not None else tree.root
    builder = _TextBuilder(strip_chrome)
    if strip_chrome:  # a page that marks its main content says where the rest is chrome
        main = tree.css("main, [role=main]")
        if len(main) == 1:
            _walk(main[0], builder)
            builder.finish()
    if not builder.text.strip() and root is not None:
        builder = _TextBuilder(strip_chrome)
        _walk(root, builder)
        builder.finish()
    if strip_chrome and not builder.text.strip() and root is not None:
        builder = _TextBuilder()  # nothing but chrome: an index page, read whole
        _walk(root, builder)
        builder.finish()
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
            if tag == "a":
                builder.link_depth -= 1
            elif tag == "pre":
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
        if builder.strip_chrome and tag not in _HEADINGS and (
                _is_chrome(node) or (tag in _LINK_CONTAINERS and _links_only(node))):
            continue
        if tag == "a" and node.attributes.get("href"):
            if builder.strip_chrome and _is_permalink(node):
                continue
            builder.link_depth += 1
            stack.append((node, True))
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
        text, sections, title = html_to_text(html, strip_chrome=self.options.strip_boilerplate)
        require_text(text, str(source))
        yield file_document(source, text, "html", mime="text/html", title=title, sections=sections)
