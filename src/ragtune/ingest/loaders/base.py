"""What every loader shares: its options and the checks made before and after parsing.

Loaders are plain classes with a ``load(source)`` method (the ``Loader`` protocol); they do not
inherit from anything. They call these helpers so that every format refuses oversized, missing
and empty inputs the same way, with the same error types.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragtune.errors import ConfigError, EmptyDocumentError, FileTooLargeError, IngestError
from ragtune.models import LoadedDocument, Section

if TYPE_CHECKING:
    from ragtune.settings import Settings

DEFAULT_MAX_FILE_BYTES = 25 * 1024 * 1024
# Container limits (DOCX is a zip, PDF streams are Flate-compressed); why these values: settings/sections.py.
DEFAULT_MAX_EXPANDED_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_EXPANSION_RATIO = 100.0
DEFAULT_MAX_CONTAINER_MEMBERS = 10_000
# OCR of scanned PDF pages and images (ocr.py): 1-4.5 s a page on 2 cores, so 100 pages is 2-7 min;
# 40 MP holds an A3 page at 300 dpi (17 MP) and a 24 MP photo, and bounds one page's OCR time.
DEFAULT_OCR_MAX_PAGES = 100
DEFAULT_OCR_MAX_PIXELS = 40_000_000
_OCR_LANG = re.compile(r"^[A-Za-z0-9_]+(?:\+[A-Za-z0-9_]+)*$")  # tesseract's -l: eng, deu+eng, chi_sim


@dataclass(frozen=True)
class LoaderOptions:
    """Options understood by the built-in loaders (each reads only the ones it needs).

    ``metadata_fields`` / ``text_field`` / ``id_field`` / ``title_field`` are for JSON and JSON
    Lines records; ``metadata_fields=None`` means "every other scalar field".

    ``max_expanded_bytes`` / ``max_expansion_ratio`` / ``max_container_members`` bound what a
    compressed file may expand to (``containers.py``, ``compressed.py``): a DOCX's zip members
    together, a PDF's decoded streams together, a gzip file, and the text extracted from any.
    """

    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    max_expanded_bytes: int = DEFAULT_MAX_EXPANDED_BYTES
    max_expansion_ratio: float = DEFAULT_MAX_EXPANSION_RATIO
    max_container_members: int = DEFAULT_MAX_CONTAINER_MEMBERS
    text_field: str = "text"
    metadata_fields: Sequence[str] | None = None  # stored as a tuple
    id_field: str | None = None
    title_field: str | None = None
    # Read every file as this format (``--as``: text, markdown, html, ... or a registered suffix)
    # instead of choosing by suffix and content (``registry.loader_for``).
    as_format: str | None = None
    # Leave page chrome out: HTML navigation and link lists, PDF running heads, footers, page
    # numbers and table-of-contents lines (``[ingest] strip_boilerplate``; html.py, pdf_chrome.py).
    strip_boilerplate: bool = True
    # OCR (ocr.py, the ocr extra): tesseract's language(s) for scanned PDF pages and images, the most
    # pages (or image frames) of one file it reads (0: none), and the most pixels of one page image.
    ocr_lang: str = "eng"
    ocr_max_pages: int = DEFAULT_OCR_MAX_PAGES
    ocr_max_pixels: int = DEFAULT_OCR_MAX_PIXELS

    def __post_init__(self) -> None:
        if isinstance(self.max_file_bytes, bool) or not isinstance(self.max_file_bytes, int):
            raise ConfigError(f"max_file_bytes must be an integer, got {self.max_file_bytes!r}")
        if self.max_file_bytes <= 0:
            raise ConfigError(f"max_file_bytes must be greater than 0, got {self.max_file_bytes!r}")
        for name in ("max_expanded_bytes", "max_container_members"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be an integer greater than 0, got {value!r}")
        ratio = self.max_expansion_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not ratio >= 1:
            raise ConfigError(f"max_expansion_ratio must be a number of at least 1, got {ratio!r}")
        if not isinstance(self.ocr_lang, str) or not _OCR_LANG.match(self.ocr_lang):
            raise ConfigError(f"ocr_lang must be tesseract language codes joined by '+' (eng, deu+eng), "
                              f"got {self.ocr_lang!r}")
        for name, least in (("ocr_max_pages", 0), ("ocr_max_pixels", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"{name} must be an integer of at least {least}, got {value!r}")
        if not self.text_field:
            raise ConfigError(f"text_field must be a non-empty field name, got {self.text_field!r}")
        if self.metadata_fields is not None:
            if isinstance(self.metadata_fields, str):
                raise ConfigError(
                    f"metadata_fields must be a list of field names, got the string {self.metadata_fields!r}"
                )
            # Accept any iterable (a list from TOML); store a tuple so the options stay hashable.
            object.__setattr__(self, "metadata_fields", tuple(self.metadata_fields))

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> LoaderOptions:
        """The size and container limits from ``settings``, plus ``options`` (the record fields)."""
        return cls(max_file_bytes=settings.ingest.max_file_bytes, max_expanded_bytes=settings.ingest.max_expanded_bytes,
                   max_expansion_ratio=settings.ingest.max_expansion_ratio,
                   max_container_members=settings.ingest.max_container_members,
                   strip_boilerplate=settings.ingest.strip_boilerplate, ocr_lang=settings.ingest.ocr_lang,
                   ocr_max_pages=settings.ingest.ocr_max_pages, ocr_max_pixels=settings.ingest.ocr_max_pixels,
                   **options)


def check_size(path: Path, options: LoaderOptions) -> int:
    """Refuse a missing, oversized or empty file from its ``stat`` alone, before reading a byte."""
    source = str(path)
    try:
        stat = path.stat()
    except FileNotFoundError as exc:
        raise IngestError(source, "no such file") from exc
    except OSError as exc:
        raise IngestError(source, f"cannot stat file: {exc.strerror or exc}") from exc
    if not path.is_file():
        raise IngestError(source, "not a regular file")
    if stat.st_size > options.max_file_bytes:
        raise FileTooLargeError(source, f"{stat.st_size} bytes is over max_file_bytes={options.max_file_bytes}")
    if stat.st_size == 0:
        raise EmptyDocumentError(source, "empty file (0 bytes)")
    return stat.st_size


def read_checked(path: Path, options: LoaderOptions) -> bytes:
    """The file's bytes, after ``check_size``; the read is capped in case the file grew since."""
    size = check_size(path, options)
    try:
        with path.open("rb") as handle:
            # read(n) allocates n bytes up front: ask for the size stat gave (+1 to see growth), not
            # max_file_bytes, or every small file would cost a transient 25 MiB buffer
            data = handle.read(size + 1)
            if len(data) > size:
                data += handle.read(options.max_file_bytes + 1 - len(data))
    except OSError as exc:
        raise IngestError(str(path), f"cannot read file: {exc.strerror or exc}") from exc
    if len(data) > options.max_file_bytes:
        raise FileTooLargeError(str(path), f"over max_file_bytes={options.max_file_bytes} while reading")
    return data


def require_text(text: str, source: str) -> str:
    """Return ``text`` unless it has nothing but whitespace, which no chunk could come from."""
    if not text.strip():
        raise EmptyDocumentError(source, "no text (only whitespace)" if text else "no text")
    return text


def base_metadata(path: Path, fmt: str) -> dict[str, Any]:
    """Metadata every loader records. No timestamps: equal content must hash equal."""
    return {"source_path": str(path), "format": fmt}


def file_document(source: Path, text: str, fmt: str, *, mime: str, title: str | None = None,
                  sections: tuple[Section, ...] = ()) -> LoadedDocument:
    """The one-document-per-file result every file loader yields."""
    return LoadedDocument(uri=str(source), text=text, metadata=base_metadata(source, fmt), title=title,
                          sections=sections, mime=mime)
