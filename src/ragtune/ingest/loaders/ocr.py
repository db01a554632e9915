"""Text from pictures of text: scanned PDF pages and image files, through Debian's ``tesseract-ocr``
(run by ``pytesseract``) and, for PDF pages, ``pypdfium2`` to render them (the ocr extra).

OCR is found at run time, never assumed: ``unavailable(lang)`` says why it cannot run here (the
extra is not installed, the ``tesseract`` binary is not on PATH or does not run, the language's
data is missing) together with the commands that fix it, or None. The answer is cached per
tesseract command and language (a probe runs ``tesseract --version`` and ``--list-langs``, 25-30 ms
each): a process notices an OCR installed after its first probe only when restarted.

A PDF page is "scanned" when pypdf extracts fewer than ``NEARLY_EMPTY`` non-space characters from
it while it draws an image (a text stamp such as "Page 3" or a Bates number over a scan is not a
text layer). Such pages are rendered at ``DPI`` (lower when a page is so large that it would pass
``ocr_max_pixels``) and read by tesseract, and their OCR text replaces what pypdf found. At most
``ocr_max_pages`` pages of a file are read, in at most ``FILE_BUDGET_S``: measured on 2 busy
cores, 0.7 s for an A4 page of two lines and 3-4.4 s for a full one, so a hostile PDF of 10,000
pages costs minutes, not hours; the pages past a limit are a warning naming it. Concession: a
page whose text is drawn as vector outlines, without an image, is not detected (rare, and
rendering every empty page of a blank-page PDF would cost up to a second each).

When OCR cannot run, a scanned page is never a silent gap: a PDF with text on other pages loads
with a warning naming the pages and what to install; one with no text at all is refused
(``UnsupportedFormatError``) with the same words. Warnings are logged on this module's logger,
which ``discover.captured_warnings`` keeps as ``FileWarning`` values naming the file.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import re
import shutil
import threading
import time
from collections.abc import Sequence
from typing import Any

from ragtune.errors import UnsupportedFormatError
from ragtune.extras import install_command
from ragtune.ingest.loaders.base import LoaderOptions

log = logging.getLogger(__name__)

NEARLY_EMPTY = 20  # non-space characters under which a page with an image counts as scanned
DPI = 300  # tesseract's documentation: it "works best on images which have a DPI of at least 300"
LOW_DPI = 150  # under this a page is still read, with a warning that small print may be lost
# Seconds tesseract may spend on one page or image before it is stopped (1-5 s is usual); a page that
# takes longer is a warning, and the rest of the file is still read.
PAGE_TIMEOUT_S = 60
# Seconds of OCR one file may take: the pages after are a warning. With ``ocr_max_pages`` this bounds
# a hostile file whose pages are each slow (huge, noisy) as well as one with very many pages.
FILE_BUDGET_S = 600
# pdfium is not thread-safe (pypdfium2's docs): one rendering at a time across the process.
_PDFIUM = threading.Lock()


class OcrFailedError(Exception):
    """Tesseract failed on one page (an error, a timeout): a warning for that page, not the file."""


def install_hint(lang: str) -> str:
    """The commands that make OCR in ``lang`` work: the extra, then Debian's packages."""
    packages = " ".join(f"tesseract-ocr-{code.lower().replace('_', '-')}" for code in lang.split("+"))
    return f"{install_command('ocr')} and apt-get install tesseract-ocr {packages}"


def unavailable(lang: str, *, render_pdf: bool = False) -> str | None:
    """Why OCR in ``lang`` cannot run here, ending with what to install; None when it can.
    ``render_pdf``: PDF pages are to be read, which needs pypdfium2 too."""
    modules = ["pytesseract", "PIL"] + (["pypdfium2"] if render_pdf else [])
    absent = [name for name in modules if importlib.util.find_spec(name) is None]
    if absent:
        why = f"{', '.join(absent)} not installed"
    else:
        import pytesseract

        why = _probe(str(pytesseract.pytesseract.tesseract_cmd), lang) or ""
    return f"OCR is unavailable here ({why}): {install_hint(lang)}" if why else None


@functools.lru_cache(maxsize=32)
def _probe(command: str, lang: str) -> str | None:
    """Why the tesseract ``command`` cannot read ``lang``, or None; cached (see the module docstring)."""
    import pytesseract

    found = shutil.which(command)
    if found is None:
        return f"the tesseract binary {command!r} was not found"
    try:
        pytesseract.get_tesseract_version()
        installed = set(pytesseract.get_languages())
    except (Exception, SystemExit) as exc:  # pytesseract exits on a version string it cannot parse
        return f"tesseract ({found}) does not run: {type(exc).__name__}: {exc}"
    missing = [code for code in lang.split("+") if code not in installed]
    if missing:
        return f"tesseract has no language data for {', '.join(missing)}"
    return None


def ocr_image(image: Any, lang: str) -> str:
    """The text tesseract reads in a Pillow ``image``, newlines normalised, the form feed it ends
    pages with removed; ``OcrFailedError`` when it fails or passes ``PAGE_TIMEOUT_S``."""
    import pytesseract

    if image.mode not in ("1", "L", "RGB"):
        image = image.convert("RGB")  # 16-bit, CMYK, palette, alpha: tesseract wants plain pixels
    try:
        text = pytesseract.image_to_string(image, lang=lang, timeout=PAGE_TIMEOUT_S)
    except (RuntimeError, OSError) as exc:  # TesseractError, the timeout; OSError: the binary went away
        raise OcrFailedError(f"{type(exc).__name__}: {exc}") from exc
    return "\n".join(line.rstrip() for line in text.replace("\x0c", "").splitlines()).strip()


def nearly_empty(text: str) -> bool:
    return len("".join(text.split())) < NEARLY_EMPTY


def has_images(page: Any) -> bool:
    """Whether a pypdf ``page`` draws an image: an image XObject of its resources or of a form it
    uses, or an inline image (``BI``) in its content."""
    if _resources_have_image(page.get("/Resources"), depth=0, seen=set()):
        return True
    try:
        contents = page.get_contents()
        data = contents.get_data() if contents is not None else b""
    except Exception:  # content pypdf cannot decode has no inline image we could find either
        return False
    return re.search(rb"(?:^|\s)BI\s", data) is not None


def _resources_have_image(resources: Any, depth: int, seen: set[int]) -> bool:
    if resources is None or depth > 8:  # forms inside forms: real files nest one or two deep
        return False
    xobjects = resources.get_object().get("/XObject")
    if xobjects is None:
        return False
    for ref in xobjects.get_object().values():
        xobject = ref.get_object()
        if id(xobject) in seen:
            continue
        seen.add(id(xobject))
        subtype = xobject.get("/Subtype")
        if subtype == "/Image" or (subtype == "/Form" and _resources_have_image(xobject.get("/Resources"),
                                                                                  depth + 1, seen)):
            return True
    return False


def page_list(numbers: Sequence[int]) -> str:
    """1-based page numbers as ranges: ``page 3`` / ``pages 2-4, 7``."""
    runs: list[list[int]] = []
    for number in numbers:
        if runs and number == runs[-1][-1] + 1:
            runs[-1].append(number)
        else:
            runs.append([number])
    ranges = [str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs]
    return ("page " if len(numbers) == 1 else "pages ") + ", ".join(ranges)


def ocr_pdf_pages(data: bytes, pages: list[str], scanned: Sequence[int], source: str,
                  options: LoaderOptions) -> list[int]:
    """OCR the ``scanned`` pages (0-based indices into ``pages``) of the PDF ``data``, replacing
    their text in ``pages``; the 1-based numbers of the pages read. Pages OCR cannot read are
    warnings, or an ``UnsupportedFormatError`` when no text would be left (module docstring)."""
    if not scanned:
        return []
    lang = options.ocr_lang
    why = unavailable(lang, render_pdf=True)
    if why is not None:
        _not_read(pages, scanned, source, why)
        return []
    todo, over = list(scanned[:options.ocr_max_pages]), list(scanned[options.ocr_max_pages:])
    done, late = _render_and_read(data, pages, todo, options) if todo else ([], [])
    if late:
        _not_read(pages, late, source, f"OCR of this file passed {FILE_BUDGET_S} s, the most one file may take")
    if over:
        _not_read(pages, over, source, f"over ocr_max_pages={options.ocr_max_pages}, the most a file may have read")
    return done


def _not_read(pages: list[str], indices: Sequence[int], source: str, why: str) -> None:
    """A warning that the pages at ``indices`` were not read, or the file's failure when no other
    page has text (a scanned PDF must not load as a document of page stamps)."""
    message = f"{page_list([i + 1 for i in indices])} without a text layer (scanned?) not read: {why}"
    unread = set(indices)
    if not any(text.strip() for i, text in enumerate(pages) if i not in unread):
        raise UnsupportedFormatError(source, f"no text: {message}")
    log.warning("%s", message)


def _render_and_read(data: bytes, pages: list[str], indices: list[int],
                     options: LoaderOptions) -> tuple[list[int], list[int]]:
    """Render and OCR the pages at ``indices``: the 1-based numbers of those read, and the indices
    left when the file's ``FILE_BUDGET_S`` ran out. pdfium runs under the lock, tesseract (the
    slow part, in its own process) outside it, so threads reading other files OCR side by side."""
    import pypdfium2

    done: list[int] = []
    with _PDFIUM:
        try:
            document = pypdfium2.PdfDocument(data)
        except Exception as exc:  # pypdf read the file; pdfium may still refuse a damaged one
            numbers = page_list([i + 1 for i in indices])
            log.warning("%s not read: pdfium cannot open the file to render them: %s", numbers, exc)
            return done, []
    started = time.monotonic()
    try:
        for n, index in enumerate(indices):
            if time.monotonic() - started > FILE_BUDGET_S:
                return done, indices[n:]
            with _PDFIUM:
                image = _render(document, index, options)
            if image is None:
                continue
            try:
                text = ocr_image(image, options.ocr_lang)
            except OcrFailedError as exc:
                log.warning("page %d: OCR failed: %s", index + 1, exc)
                continue
            pages[index] = text
            done.append(index + 1)
    finally:
        with _PDFIUM:
            document.close()
    return done, []


def _render(document: Any, index: int, options: LoaderOptions) -> Any:
    """Page ``index`` as a grayscale Pillow image at ``DPI``, or fewer dots when the page would pass
    ``ocr_max_pixels``; None (and a warning) when pdfium cannot render it."""
    try:
        page = document[index]
        try:
            width, height = page.get_size()  # points, 72 a inch
            area = max(width * height, 1.0)
            scale = min(DPI / 72, math.sqrt(options.ocr_max_pixels / area))
            if scale * 72 < LOW_DPI:
                log.warning("page %d is %.0f x %.0f in: rendered at %.0f dpi to stay under ocr_max_pixels=%d, "
                            "OCR may miss small print", index + 1, width / 72, height / 72, scale * 72,
                            options.ocr_max_pixels)
            bitmap = page.render(scale=scale, grayscale=True)
            try:
                return bitmap.to_pil().copy()  # the copy owns its pixels once the bitmap is closed
            finally:
                bitmap.close()
        finally:
            page.close()
    except Exception as exc:  # a page pdfium cannot draw is that page's problem, not the file's
        log.warning("page %d: not read: pdfium cannot render it: %s", index + 1, exc)
        return None
