"""Spreadsheets (``.xlsx``, with ``openpyxl``) and slide decks (``.pptx``, with ``python-pptx``), both
from the ``formats`` extra; and e-books (``.epub``: a zip of XHTML, read with the HTML loader's
extraction, no extra needed).

Each is a zip checked whole by ``containers.check_zip`` before its library opens it (the same
limits as DOCX). One document per file, with a section per sheet, slide or chapter:

- a sheet is its name as a heading, then one line per row with values joined by `` | `` (formulas as
  their last computed value, empty trailing cells dropped, empty rows skipped);
- a slide is "Slide N: TITLE" as a heading, then the text of its shapes in order, its tables' rows
  joined like a sheet's, and its speaker notes;
- a chapter is the text of one spine item of the book, in reading order; the book's title (from
  its package document) is the title.
"""

from __future__ import annotations

import io
import posixpath
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ragtune.errors import CorruptFileError, EmptyDocumentError
from ragtune.extras import needs
from ragtune.ingest.loaders.base import LoaderOptions, file_document, read_checked, require_text
from ragtune.ingest.loaders.containers import check_zip
from ragtune.ingest.loaders.html import html_to_text
from ragtune.models import LoadedDocument, Section

XLSX_MIME = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


class _SectionedText:
    """Text built section by section, with the offsets of their headings."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.sections: list[Section] = []
        self.length = 0

    def section(self, title: str, lines: Iterable[str]) -> None:
        body = "\n".join(line for line in lines if line.strip())
        if not body:
            return
        if self.parts:
            self._add("\n\n")
        self.sections.append(Section(start=self.length, level=1, title=title))
        self._add(f"{title}\n{body}")

    def _add(self, piece: str) -> None:
        self.parts.append(piece)
        self.length += len(piece)

    @property
    def text(self) -> str:
        return "".join(self.parts)


def row_line(values: Iterable[Any]) -> str:
    cells = ["" if v is None else " ".join(str(v).split()) for v in values]
    while cells and not cells[-1]:
        cells.pop()
    return " | ".join(cells)


class XlsxLoader:
    def __init__(self, options: LoaderOptions | None = None) -> None:
        self.options = options or LoaderOptions()

    def load(self, source: Path) -> Iterator[LoadedDocument]:
        data = read_checked(source, self.options)
        check_zip(data, str(source), self.options, kind="xlsx")
        with needs("formats", "reading .xlsx files"):
            import openpyxl
        try:
            book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
        except Exception as exc:  # a broken workbook fails in many library-specific ways
            raise CorruptFileError(str(source), f"unreadable xlsx: {type(exc).__name__}: {exc}") from None
        built = _SectionedText()
        try:
            for sheet in book.worksheets:
                built.section(sheet.title, (row_line(row) for row in sheet.iter_rows(values_only=True)))
        finally:
            book.close()
        text = require_text(built.text, str(source))
        yield file_document(source, text, "xlsx", mime=XLSX_MIME, title=book.properties.title or None,
                            sections=tuple(built.sections))


class PptxLoader:
    def __init__(self, options: LoaderOptions | None = None) -> None:
        self.options = options or LoaderOptions()

    def load(self, source: Path) -> Iterator[LoadedDocument]:
        data = read_checked(source, self.options)
        check_zip(data, str(source), self.options, kind="pptx")
        with needs("formats", "reading .pptx files"):
            import pptx
        try:
            deck = pptx.Presentation(io.BytesIO(data))
        except Exception as exc:  # a broken deck fails in many library-specific ways
            raise CorruptFileError(str(source), f"unreadable pptx: {type(exc).__name__}: {exc}") from None
        built = _SectionedText()
        for number, slide in enumerate(deck.slides, start=1):
            title_shape = slide.shapes.title
            title = " ".join(title_shape.text_frame.text.split()) if title_shape is not None else ""
            lines: list[str] = []
            for shape in slide.shapes:
                if shape is title_shape:
                    continue
                if shape.has_text_frame:
                    lines.extend(p.text for p in shape.text_frame.paragraphs)
                if getattr(shape, "has_table", False) and shape.has_table:
                    lines.extend(row_line(cell.text for cell in row.cells) for row in shape.table.rows)
            if slide.has_notes_slide:
                lines.append(slide.notes_slide.notes_text_frame.text)
            built.section(f"Slide {number}: {title}" if title else f"Slide {number}", lines or [title])
        text = require_text(built.text, str(source))
        yield file_document(source, text, "pptx",
                            mime="application/vnd.openxmlformats-officedocument.presentationml.presentation",
                            title=deck.core_properties.title or None, sections=tuple(built.sections))


class EpubLoader:
    def __init__(self, options: LoaderOptions | None = None) -> None:
        self.options = options or LoaderOptions()

    def load(self, source: Path) -> Iterator[LoadedDocument]:
        data = read_checked(source, self.options)
        check_zip(data, str(source), self.options, kind="epub")
        with zipfile.ZipFile(io.BytesIO(data)) as book:
            title, chapters = _spine(book, str(source))
            built = _SectionedText()
            for number, name in enumerate(chapters, start=1):
                text, sections, heading = html_to_text(book.read(name).decode("utf-8", "replace"))
                built.section(heading or (sections[0].title if sections else f"Chapter {number}"), [text])
        if not built.sections:
            raise EmptyDocumentError(str(source), "an e-book with no text")
        yield file_document(source, built.text, "epub", mime="application/epub+zip", title=title,
                            sections=tuple(built.sections))


def _spine(book: zipfile.ZipFile, source: str) -> tuple[str | None, list[str]]:
    """The book's title and its XHTML files in reading order (container.xml -> package -> spine)."""
    from selectolax.lexbor import LexborHTMLParser

    try:
        container = LexborHTMLParser(book.read("META-INF/container.xml").decode("utf-8", "replace"))
        rootfile = container.css_first("rootfile")
        package_name = rootfile.attributes.get("full-path") if rootfile is not None else None
        if not package_name:
            raise KeyError("rootfile")
        package = LexborHTMLParser(book.read(package_name).decode("utf-8", "replace"))
    except KeyError as exc:
        raise CorruptFileError(source, f"unreadable epub: no {exc.args[0]} (META-INF/container.xml names the "
                                       "package document)") from None
    base = posixpath.dirname(package_name)
    items = {node.attributes.get("id"): node.attributes.get("href") for node in package.css("item")}
    names = set(book.namelist())
    chapters = []
    for ref in package.css("itemref"):
        href = items.get(ref.attributes.get("idref"))
        name = posixpath.normpath(posixpath.join(base, href)) if href else None
        if name in names:
            chapters.append(name)
    title_node = package.css_first("title") or package.css_first("dc\\:title")
    title = " ".join(title_node.text().split()) if title_node is not None else None
    return title or None, chapters
