"""What a file is, from its first bytes: the format a loader is chosen by when the suffix says
nothing (``changelog.Debian``, ``README``, ``NEWS.old``) or says something false (a PDF saved as
``.txt``).

Binary formats are known by their magic bytes: ``%PDF-`` (PDF) and gzip (``1f 8b``) win over any
suffix; PNG, JPEG and TIFF are known by theirs when no suffix decides (read with OCR); a zip is
a DOCX only if it holds ``word/document.xml`` (the registry looks, when no suffix decides: XLSX and
PPTX are zips of the same kind). Text is text when the head has no NUL byte and decodes (UTF-8,
or the encodings ``ingest.encoding`` accepts); HTML when it opens with a doctype or an
``<html>``/``<head>``/``<body>`` tag (after whitespace and comments). Anything else is binary and no loader reads it.

The answer is a key of the loader registry (a suffix: ``.pdf``, ``.docx``, ``.gz``, ``.html``,
``.txt``), so a plugin that replaces a built-in loader also serves the files sniffed as its format.
"""

from __future__ import annotations

import re
from pathlib import Path

HEAD_BYTES = 8192  # what is read to decide: enough for a doctype after a long comment

PDF, DOCX, GZIP, HTML, TEXT, ZIP, TAR = ".pdf", ".docx", ".gz", ".html", ".txt", ".zip", ".tar"
# Images (read with OCR): known by magic when no suffix decides, but not DEFINITE: a PNG named .txt
# stays the text loader's binary refusal, as before images had a loader.
IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"))
# Suffixes of formats that are text: a certain binary magic overrides them (a PDF named .txt).
TEXT_FORMATS = frozenset({".txt", ".text", ".rst", ".log", ".csv", ".tsv", ".md", ".markdown", ".html", ".htm",
                          ".json", ".jsonl", ".ndjson"})
# Binary formats whose magic is certain: they win over the suffix.
DEFINITE = (PDF, GZIP)
_HTML_START = re.compile(rb"^(?:\s|<!--.*?-->|<\?xml[^>]*>)*<(?:!doctype\s+html|html[\s>]|head[\s>]|body[\s>])",
                         re.IGNORECASE | re.DOTALL)


def read_head(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(HEAD_BYTES)


def sniff(head: bytes) -> str | None:
    """The registry key of the format ``head`` (a file's first bytes) shows, or None (binary)."""
    if head.startswith(b"%PDF-"):
        return PDF
    if head.startswith(b"\x1f\x8b"):
        return GZIP
    if len(head) >= 262 and head[257:262] == b"ustar":
        return TAR
    for magic, image in IMAGE_MAGIC:
        if head.startswith(magic):
            return image
    if not _looks_like_text(head):
        return None
    return HTML if _HTML_START.match(head) else TEXT


def _looks_like_text(head: bytes) -> bool:
    if head.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):  # a byte order mark (UTF-16 has NULs)
        return True
    if not head or b"\x00" in head:
        return False
    try:
        # the head may end inside a multi-byte character: ignore a cut-off tail of up to 3 bytes
        head[:-3].decode("utf-8") if len(head) == HEAD_BYTES else head.decode("utf-8")
        return True
    except UnicodeDecodeError:
        pass
    # Latin-1 and friends: text if nearly every byte is printable or whitespace
    controls = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13))
    return controls <= len(head) // 100
