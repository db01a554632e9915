"""PDF (.pdf) through pypdf.

The text of each page (pypdf's plain extraction, newlines normalised) is joined with a blank
line, so a page break is also a paragraph break for the chunker. Metadata records ``pages`` and
``page_starts`` (the character offset where each page's text begins), which is enough to turn a
chunk's offsets back into page numbers for citations. PDF outlines are not turned into sections:
they point at pages, not at offsets in the extracted text.

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

from ragtune.errors import CorruptFileError
from ragtune.ingest.loaders.base import LoaderOptions, base_metadata, read_checked, require_text
from ragtune.models import LoadedDocument

_NEWLINES = re.compile(r"\r\n?")
PAGE_SEPARATOR = "\n\n"


class PdfLoader:
    def __init__(self, options: LoaderOptions | None = None) -> None:
        self.options = options or LoaderOptions()

    def load(self, source: Path) -> Iterator[LoadedDocument]:
        data = read_checked(source, self.options)
        pages, title = _extract(data, str(source))
        text, starts = _join_pages(pages)
        require_text(text, str(source))
        metadata = base_metadata(source, "pdf")
        metadata.update(pages=len(pages), page_starts=starts)
        yield LoadedDocument(uri=str(source), text=text, metadata=metadata, title=title, mime="application/pdf")


def _extract(data: bytes, source: str) -> tuple[list[str], str | None]:
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted and not reader.decrypt(""):
            raise CorruptFileError(source, "encrypted PDF: it does not open without a password")
        pages = [_NEWLINES.sub("\n", page.extract_text() or "").replace("\x00", "") for page in reader.pages]
        title = _title(reader)
    except CorruptFileError:
        raise
    except Exception as exc:  # see the module docstring
        raise CorruptFileError(source, f"unreadable PDF: {type(exc).__name__}: {exc}") from exc
    return pages, title


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
