"""Images (PNG, JPEG, TIFF) as documents: their text, read with OCR (``ocr.py``, the ocr extra).

Each frame of the image (a multi-page TIFF has several; PNG and JPEG one) is a page: the pages'
OCR text is joined like a PDF's, with ``pages`` and ``page_starts`` in the metadata, so citations
work the same. A JPEG's EXIF orientation is applied first (a phone photo of a page is often
stored sideways).

Where OCR cannot run, an image is refused as binary, as before images had a loader, with the
message saying what to install. Limits: an image frame over ``ocr_max_pixels`` is refused before
its pixels are decoded (Pillow reads the size from the header), and at most ``ocr_max_pages``
frames are read, the rest a warning.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ragtune.errors import CorruptFileError, EmptyDocumentError, ExpansionLimitError, UnsupportedFormatError
from ragtune.ingest.loaders.base import LoaderOptions, base_metadata, read_checked
from ragtune.ingest.loaders.ocr import FILE_BUDGET_S, OcrFailedError, ocr_image, page_list, unavailable
from ragtune.ingest.loaders.pdf import _join_pages
from ragtune.models import LoadedDocument

log = logging.getLogger(__name__)

_FORMATS = ("PNG", "JPEG", "TIFF")  # what Pillow may decode here: nothing it would guess from other magic


class ImageLoader:
    def __init__(self, options: LoaderOptions | None = None) -> None:
        self.options = options or LoaderOptions()

    def load(self, source: Path) -> Iterator[LoadedDocument]:
        data = read_checked(source, self.options)
        name, lang = str(source), self.options.ocr_lang
        why = unavailable(lang)
        if why is not None:
            raise _binary(source, f"an image's text is read with OCR: {why}")
        from PIL import Image, UnidentifiedImageError

        try:
            image = Image.open(io.BytesIO(data), formats=_FORMATS)
        except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
            raise _binary(source, f"not a PNG, JPEG or TIFF image Pillow can open ({exc})") from None
        frames = getattr(image, "n_frames", 1)
        pages: list[str] = []
        failed: list[int] = []
        stopped = ""  # why the frames from len(pages) on were not read
        started = time.monotonic()
        for index in range(frames):
            if index >= self.options.ocr_max_pages:
                stopped = f"over ocr_max_pages={self.options.ocr_max_pages}, the most a file may have read"
                break
            if time.monotonic() - started > FILE_BUDGET_S:
                stopped = f"OCR of this file passed {FILE_BUDGET_S} s, the most one file may take"
                break
            try:
                image.seek(index)
                self._check_pixels(image, name, index)
                text = ocr_image(_upright(image), lang)
            except OcrFailedError as exc:
                log.warning("page %d: OCR failed: %s", index + 1, exc)
                text = ""
                failed.append(index + 1)
            except (OSError, ValueError, EOFError, SyntaxError) as exc:  # Pillow's ways of saying "truncated"
                raise CorruptFileError(name, f"unreadable image: {type(exc).__name__}: {exc}") from None
            pages.append(text)
        text, starts = _join_pages(pages)
        read = range(1, len(pages) + 1)
        if stopped:
            unread = f"{page_list(range(len(pages) + 1, frames + 1))} not read: {stopped}"
            if not text.strip():
                raise UnsupportedFormatError(name, f"no text: {unread}")
            log.warning("%s", unread)
        if not text.strip():
            raise EmptyDocumentError(name, f"no text: OCR ({lang}) found none in its {page_list(read)}")
        metadata = base_metadata(source, "image")
        metadata.update(pages=len(pages), page_starts=starts, ocr_pages=[n for n in read if n not in failed],
                        ocr_lang=lang)
        mime = Image.MIME.get(image.format or "", "application/octet-stream")
        yield LoadedDocument(uri=name, text=text, metadata=metadata, title=None, mime=mime)

    def _check_pixels(self, image: Any, source: str, index: int) -> None:
        width, height = image.size
        if width * height > self.options.ocr_max_pixels:
            frame = f" (frame {index + 1})" if index else ""
            raise ExpansionLimitError(source, f"a {width} x {height} image{frame} is {width * height:,} pixels, over "
                                              f"ocr_max_pixels={self.options.ocr_max_pixels:,}", "ocr_max_pixels")


def _upright(image: Any) -> Any:
    from PIL import ImageOps

    return ImageOps.exif_transpose(image) if image.getexif().get(0x0112, 1) != 1 else image


def _binary(source: Path, why: str) -> UnsupportedFormatError:
    """The refusal of an image that cannot be read: the one any binary file gets, and why."""
    shown = source.suffix.lower() or "no suffix"
    return UnsupportedFormatError(str(source), f"binary content ragtune has no loader for ({shown}); if it is text, "
                                               f"read it with --as text; {why}")
