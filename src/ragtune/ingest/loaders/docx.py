"""Word documents (.docx) through python-docx.

Body paragraphs and tables are read in document order; each becomes a block separated by a
blank line. Paragraphs styled ``Heading N`` become sections of level N; the ``Title`` style gives
the title (else the first level-1 heading, else the core properties' title). A table becomes one
block, one line per row, cells joined by `` | `` (a merged cell is written once). Headers,
footers, footnotes, comments and tables nested in cells are not read: a concession to keep the
loader small, they rarely hold the text people search for.

Before python-docx sees the file, ``check_zip`` refuses a zip that declares or yields more than
the container limits allow (``ExpansionLimitError``): a 433 KB file expanding to 99 MB of XML is
refused from its central directory in milliseconds instead of parsed for minutes.

A file python-docx cannot open (not a zip, no document part, broken XML) is a
``CorruptFileError`` with the reason; the ``except Exception`` is broad because those failures
surface as zipfile, KeyError and lxml errors alike.

A paragraph's style name is looked up once per style id: python-docx resolves ``paragraph.style``
by scanning every style of the document for the default one, which was 95 % of the time spent
loading a document of many paragraphs (17 s for 29k paragraphs).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ragtune.errors import CorruptFileError
from ragtune.ingest.loaders.base import LoaderOptions, file_document, read_checked, require_text
from ragtune.ingest.loaders.containers import check_zip
from ragtune.models import LoadedDocument, Section

DOCX_MIME = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
_HEADING_STYLE = re.compile(r"^heading ([1-9])$", re.IGNORECASE)
_NEWLINES = re.compile(r"\r\n?")


class DocxLoader:
    def __init__(self, options: LoaderOptions | None = None) -> None:
        self.options = options or LoaderOptions()

    def load(self, source: Path) -> Iterator[LoadedDocument]:
        data = read_checked(source, self.options)
        check_zip(data, str(source), self.options, kind="DOCX")
        try:
            text, sections, title = _read(data)
        except Exception as exc:  # see the module docstring
            raise CorruptFileError(str(source), f"unreadable DOCX: {type(exc).__name__}: {exc}") from exc
        require_text(text, str(source))
        yield file_document(source, text, "docx", mime=DOCX_MIME, title=title, sections=sections)


def _read(data: bytes) -> tuple[str, tuple[Section, ...], str | None]:
    import docx
    from docx.table import Table

    document = docx.Document(io.BytesIO(data))
    blocks: list[str] = []
    sections: list[Section] = []
    title: str | None = None
    offset = 0
    styles: dict[str | None, str] = {}
    for item in document.iter_inner_content():
        level: int | None = None
        if isinstance(item, Table):
            block = _table_text(item)
        else:
            block = _NEWLINES.sub("\n", item.text).strip()
            style = _style_name(item, styles)
            heading = _HEADING_STYLE.match(style)
            if heading:
                level = int(heading.group(1))
            elif style.lower() == "title" and title is None and block:
                title = " ".join(block.split())
        if not block:
            continue
        if blocks:
            offset += 2  # the "\n\n" the blocks are joined with
        if level is not None:
            sections.append(Section(start=offset, level=level, title=" ".join(block.split())))
        blocks.append(block)
        offset += len(block)
    if title is None:
        title = next((s.title for s in sections if s.level == 1), None)
    if title is None:
        title = (document.core_properties.title or "").strip() or None
    return "\n\n".join(blocks), tuple(sections), title


def _style_name(paragraph: Any, cache: dict[str | None, str]) -> str:
    style_id = paragraph._p.style  # the w:pStyle value, None for the default paragraph style
    if style_id not in cache:
        style = paragraph.style
        cache[style_id] = str(style.name) if style is not None and style.name else ""
    return cache[style_id]


def _table_text(table: Any) -> str:
    rows: list[str] = []
    for row in table.rows:
        cells: list[str] = []
        previous = None
        for cell in row.cells:
            if cell._tc is previous:  # a merged cell is repeated once per grid column it spans
                continue
            previous = cell._tc
            cells.append(" ".join(cell.text.split()))
        if any(cells):
            rows.append(" | ".join(cells))
    return "\n".join(rows)
