"""PDF (.pdf) through pypdf.

The text of each page (pypdf's plain extraction, newlines normalised) is joined with a blank
line, so a page break is also a paragraph break for the chunker. Metadata records ``pages`` and
``page_starts`` (the character offset where each page's text begins), which is enough to turn a
chunk's offsets back into page numbers for citations. A page without a text layer (a scan) is
read with OCR when the ocr extra and tesseract are installed (``ocr.py``): ``ocr_pages`` lists
the pages read that way, and a scanned page that could not be read is a warning, never a silent
gap. PDF outlines are not turned into sections: they point at pages, not at offsets in the
extracted text.

Compressed streams are bounded by ``PdfBudget`` (``containers.py``): while the file is read,
pypdf's per-stream output limits are lowered to ``max_expanded_bytes``, each page's content
streams and forms are added to the file's decoded total before its text is extracted, and the
extracted text is counted too; a file over a limit is an ``ExpansionLimitError`` (so is a stream
pypdf stops at its own limit).

A file pypdf cannot parse, or an encrypted file that does not open with the empty password, is
a ``CorruptFileError`` carrying pypdf's reason. pypdf raises many unrelated exception types on
malformed input (its own, but also ``KeyError``, ``ValueError``, ``struct.error``...), hence the
broad ``except Exception`` around parsing: a damaged upload must fail this file, not the batch.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ragtune.errors import CorruptFileError, ExpansionLimitError
from ragtune.ingest.loaders.base import LoaderOptions, base_metadata, read_checked, require_text
from ragtune.ingest.loaders.containers import PdfBudget
from ragtune.ingest.loaders.ocr import has_images, nearly_empty, ocr_pdf_pages
from ragtune.ingest.loaders.pdf_chrome import strip_page_chrome
from ragtune.models import LoadedDocument

_NEWLINES = re.compile(r"\r\n?")
PAGE_SEPARATOR = "\n\n"


class PdfLoader:
    def __init__(self, options: LoaderOptions | None = None) -> None:
        self.options = options or LoaderOptions()

    def load(self, source: Path) -> Iterator[LoadedDocument]:
        data = read_checked(source, self.options)
        pages, title, scanned = _extract(data, str(source), self.options)
        read = ocr_pdf_pages(data, pages, scanned, str(source), self.options)
        if self.options.strip_boilerplate:  # running heads, page numbers, contents lines
            pages, _ = strip_page_chrome(pages)
        text, starts = _join_pages(pages)
        require_text(text, str(source))
        metadata = base_metadata(source, "pdf")
        metadata.update(pages=len(pages), page_starts=starts)
        if read:  # only then: a PDF's metadata (and content hash) stays what it was before OCR existed
            metadata.update(ocr_pages=read, ocr_lang=self.options.ocr_lang)
        yield LoadedDocument(uri=str(source), text=text, metadata=metadata, title=title, mime="application/pdf")


def _extract(data: bytes, source: str, options: LoaderOptions) -> tuple[list[str], str | None, list[int]]:
    """Each page's text, the title, and the indices of the pages that look scanned (``ocr.py``)."""
    from pypdf import PdfReader
    from pypdf.errors import LimitReachedError

    budget = PdfBudget(source, options)
    pages: list[str] = []
    scanned: list[int] = []
    try:
        with budget.limits():
            reader = PdfReader(io.BytesIO(data), strict=False)
            if reader.is_encrypted and not reader.decrypt(""):
                raise CorruptFileError(source, "encrypted PDF: it does not open without a password")
            for page in reader.pages:
                budget.add_page(page)
                text = _NEWLINES.sub("\n", page.extract_text() or "").replace("\x00", "")
                budget.add_text(text)
                pages.append(text)
                if nearly_empty(text) and has_images(page):
                    scanned.append(len(pages) - 1)
            title = _title(reader)
    except (CorruptFileError, ExpansionLimitError):
        raise
    except LimitReachedError as exc:  # one stream over pypdf's (lowered) per-stream limit
        raise ExpansionLimitError(source, f"a stream decodes to more than {budget.stream_limit:,} bytes, the most one "
                                          f"may (max_expanded_bytes={options.max_expanded_bytes:,}, at most pypdf's "
                                          f"own limit); pypdf: {exc}", "max_expanded_bytes") from exc
    except Exception as exc:  # see the module docstring
        raise CorruptFileError(source, f"unreadable PDF: {type(exc).__name__}: {exc}") from exc
    return pages, title, scanned


def _title(reader: Any) -> str | None:
    info = reader.metadata
    title = info.title if info is not None else None
    return " ".join(str(title).split()) or None if title else None


def _join_pages(pages: list[str]) -> tuple[str, list[int]]:
    parts: list[str] = []
    starts: list[int] = []
    offset = 0
    for index, page in enumerate(pages):
        if index:
            parts.append(PAGE_SEPARATOR)
            offset += len(PAGE_SEPARATOR)
        starts.append(offset)
        parts.append(page)
        offset += len(page)
    return "".join(parts), starts
