"""OCR of scanned PDFs and images (ingest/loaders/ocr.py, images.py): real scans made here (text drawn
with a TrueType font by Pillow, saved as an image-only PDF or an image), read by Debian's tesseract
through the normal loader path. Tests that run tesseract skip only where its binary is absent (CI
installs it: `make tesseract`); "OCR unavailable" is a real missing binary (a tesseract command that
does not exist), not a mock."""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ragtune.errors import ConfigError, EmptyDocumentError, ExpansionLimitError, IngestError, UnsupportedFormatError
from ragtune.extras import install_command
from ragtune.ingest.loaders.base import LoaderOptions
from ragtune.ingest.loaders.discover import load_files
from ragtune.ingest.loaders.ocr import page_list
from ragtune.models import FileWarning, LoadedDocument
from ragtune.testing.files import pdf_bytes, text_page

Image = pytest.importorskip("PIL.Image")
ImageDraw = pytest.importorskip("PIL.ImageDraw")
ImageFont = pytest.importorskip("PIL.ImageFont")

needs_tesseract = pytest.mark.skipif(shutil.which("tesseract") is None,
                                     reason="Debian's tesseract-ocr is not installed (make tesseract)")
APT = "apt-get install tesseract-ocr tesseract-ocr-eng"
LINES = ["Quarterly report of the Zorblatt cooperative", "The flumquist harvest doubled this spring"]
DPI = 150  # the scans' resolution: an A4 page is 1240 x 1754 pixels, rendered back at 300 dpi for OCR


def font(size: int) -> Any:
    found = sorted(Path("/usr/share/fonts").rglob("DejaVuSans.ttf")) if Path("/usr/share/fonts").exists() else []
    if found:
        return ImageFont.truetype(str(found[0]), size)
    return ImageFont.load_default(size=size)  # Pillow's own TrueType font (FreeType builds)


def scan(lines: list[str], size: tuple[int, int] = (1240, 1754), mode: str = "L") -> Any:
    """A page image: black text on white, big enough for reliable OCR."""
    image = Image.new(mode, size, "white")
    draw = ImageDraw.Draw(image)
    for n, line in enumerate(lines):
        draw.text((80, 80 + n * 70), line, fill="black", font=font(40))
    return image


def scanned_pdf(pages: list[Any]) -> bytes:
    out = io.BytesIO()
    pages[0].save(out, "PDF", resolution=DPI, save_all=True, append_images=pages[1:])
    return out.getvalue()


def image_bytes(pages: list[Any], fmt: str) -> bytes:
    out = io.BytesIO()
    pages[0].save(out, fmt, save_all=len(pages) > 1, append_images=pages[1:])
    return out.getvalue()


def mixed_pdf(text: str, scanned: Any) -> bytes:
    """Page 1 a text page (a real text layer), page 2 a scan: merged with pypdf's writer."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    for data in (pdf_bytes([text_page(text)]), scanned_pdf([scanned])):
        for page in PdfReader(io.BytesIO(data)).pages:
            writer.add_page(page)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def load(path: Path, options: LoaderOptions | None = None) -> tuple[list[LoadedDocument | IngestError],
                                                                    list[FileWarning]]:
    warnings: list[FileWarning] = []
    return list(load_files([path], options, warnings_to=warnings)), warnings


def words(text: str) -> set[str]:
    return {w.strip(".,").lower() for w in text.split()}


@pytest.fixture
def no_tesseract(tmp_path: Path) -> Iterator[str]:
    """A tesseract command that does not exist: OCR really is unavailable (pytesseract's own setting)."""
    pytesseract = pytest.importorskip("pytesseract")
    command = str(tmp_path / "no-such-tesseract")
    saved = pytesseract.pytesseract.tesseract_cmd
    pytesseract.pytesseract.tesseract_cmd = command
    try:
        yield command
    finally:
        pytesseract.pytesseract.tesseract_cmd = saved


# ---------------------------------------------------------------- OCR at work


@needs_tesseract
def test_a_scanned_pdf_is_read_and_searchable(rt: Any, tmp_path: Path) -> None:
    path = tmp_path / "scan.pdf"
    path.write_bytes(scanned_pdf([scan(LINES)]))
    report = rt.ingest([path], collection="scans")
    assert (report.added, report.failed) == (1, []), report
    assert not [w for w in report.warnings if "OCR" in w.message]
    hits = rt.search("flumquist harvest", collection="scans", mode="bm25").hits
    assert hits and hits[0].uri == str(path)
    assert {"zorblatt", "flumquist", "harvest"} <= words(hits[0].chunk.text)
    assert hits[0].metadata["ocr_pages"] == [1] and hits[0].metadata["ocr_lang"] == "eng"


IMAGES = [("page.png", "PNG", "image/png", "L"), ("photo.jpg", "JPEG", "image/jpeg", "RGB"),
          ("fax.tiff", "TIFF", "image/tiff", "1")]


@needs_tesseract
@pytest.mark.parametrize(("name", "fmt", "mime", "mode"), IMAGES, ids=[c[0] for c in IMAGES])
def test_images_are_read_as_documents(tmp_path: Path, name: str, fmt: str, mime: str, mode: str) -> None:
    path = tmp_path / name
    path.write_bytes(image_bytes([scan(LINES, (1400, 300)).convert(mode)], fmt))
    (doc,), warnings = load(path)
    assert isinstance(doc, LoadedDocument), doc
    assert {"zorblatt", "flumquist"} <= words(doc.text)
    assert doc.mime == mime and doc.metadata["format"] == "image" and doc.metadata["ocr_pages"] == [1]
    assert warnings == []


@needs_tesseract
def test_a_png_is_searchable_and_a_multipage_tiff_has_pages(rt: Any, tmp_path: Path) -> None:
    (tmp_path / "note.png").write_bytes(image_bytes([scan(["Bring the quindlewort samples"], (1200, 200))], "PNG"))
    tiff = tmp_path / "fax.tif"
    tiff.write_bytes(image_bytes([scan([line], (1400, 200)) for line in LINES], "TIFF"))
    report = rt.ingest([tmp_path], collection="images")
    assert (report.added, report.failed) == (2, []), report
    (hit,) = rt.search("quindlewort", collection="images", mode="bm25").hits[:1]
    assert hit.uri == str(tmp_path / "note.png")
    (doc,), _ = load(tiff)
    assert isinstance(doc, LoadedDocument) and doc.metadata["pages"] == 2 and doc.metadata["ocr_pages"] == [1, 2]
    second = doc.text[doc.metadata["page_starts"][1]:]
    assert "flumquist" in words(second) and "zorblatt" not in words(second)


@needs_tesseract
def test_a_mixed_pdf_keeps_its_text_pages_and_reads_the_scanned_one(tmp_path: Path) -> None:
    text = "Minutes of the annual meeting of shareholders"
    path = tmp_path / "mixed.pdf"
    path.write_bytes(mixed_pdf(text, scan(LINES)))
    plain = tmp_path / "plain.pdf"
    plain.write_bytes(pdf_bytes([text_page(text)]))
    (doc,), warnings = load(path)
    (reference,), _ = load(plain)
    assert isinstance(doc, LoadedDocument) and isinstance(reference, LoadedDocument)
    starts = doc.metadata["page_starts"]
    assert doc.text[:starts[1]].rstrip() == reference.text.rstrip()  # the text page is what pypdf gives
    assert {"zorblatt", "flumquist"} <= words(doc.text[starts[1]:])
    assert doc.metadata["pages"] == 2 and doc.metadata["ocr_pages"] == [2]
    assert warnings == []
    assert "ocr_pages" not in reference.metadata  # a text PDF's metadata (and hash) is as it was


@needs_tesseract
def test_a_text_pdf_with_a_blank_page_runs_no_ocr(tmp_path: Path) -> None:
    path = tmp_path / "blank.pdf"
    path.write_bytes(pdf_bytes([text_page("A page with words on it."), b""]))
    (doc,), warnings = load(path)
    assert isinstance(doc, LoadedDocument) and "ocr_pages" not in doc.metadata and warnings == []


# ---------------------------------------------------------------- OCR unavailable


def test_a_scanned_pdf_without_ocr_fails_naming_the_file_and_what_to_install(tmp_path: Path,
                                                                              no_tesseract: str) -> None:
    path = tmp_path / "scan.pdf"
    path.write_bytes(scanned_pdf([scan(LINES)]))
    (failure,), _ = load(path)
    assert isinstance(failure, UnsupportedFormatError) and failure.source == str(path)
    message = str(failure)
    assert str(path) in message and "page 1" in message and no_tesseract in message
    assert install_command("ocr") in message and APT in message


def test_a_mixed_pdf_without_ocr_loads_its_text_with_a_warning(tmp_path: Path, no_tesseract: str) -> None:
    path = tmp_path / "mixed.pdf"
    path.write_bytes(mixed_pdf("Minutes of the annual meeting of shareholders", scan(LINES)))
    (doc,), warnings = load(path)
    assert isinstance(doc, LoadedDocument) and "shareholders" in doc.text and "ocr_pages" not in doc.metadata
    (warning,) = warnings
    assert warning.source == str(path) and warning.origin == "ragtune.ingest.loaders.ocr"
    assert "page 2" in warning.message and install_command("ocr") in warning.message and APT in warning.message


def test_an_image_without_ocr_is_refused_as_binary_naming_the_extra(tmp_path: Path, no_tesseract: str) -> None:
    path = tmp_path / "page.png"
    path.write_bytes(image_bytes([scan(LINES, (600, 200))], "PNG"))
    (failure,), _ = load(path)
    assert isinstance(failure, UnsupportedFormatError) and failure.source == str(path)
    assert "binary content" in str(failure) and install_command("ocr") in str(failure) and APT in str(failure)


def test_a_language_without_data_names_its_debian_package(tmp_path: Path) -> None:
    pytest.importorskip("pytesseract")
    if shutil.which("tesseract") is None:
        pytest.skip("Debian's tesseract-ocr is not installed (make tesseract)")
    path = tmp_path / "page.png"
    path.write_bytes(image_bytes([scan(LINES, (600, 200))], "PNG"))
    (failure,), _ = load(path, LoaderOptions(ocr_lang="eng+zzz_qq"))
    assert isinstance(failure, UnsupportedFormatError)
    assert "no language data for zzz_qq" in str(failure)
    assert "apt-get install tesseract-ocr tesseract-ocr-eng tesseract-ocr-zzz-qq" in str(failure)


# ---------------------------------------------------------------- limits


@needs_tesseract
def test_pages_past_ocr_max_pages_are_a_warning_and_hostile_pdfs_end_quickly(tmp_path: Path) -> None:
    # 300 pages each drawing a tiny image: without the limit, minutes of tesseract
    pages = [scan(LINES, (1400, 200))] + [Image.new("L", (8, 8), "white") for _ in range(299)]
    path = tmp_path / "hostile.pdf"
    path.write_bytes(scanned_pdf(pages))
    started = time.perf_counter()
    (doc,), warnings = load(path, LoaderOptions(ocr_max_pages=2))
    assert time.perf_counter() - started < 60
    assert isinstance(doc, LoadedDocument) and doc.metadata["ocr_pages"] == [1, 2]
    assert "zorblatt" in words(doc.text)
    (warning,) = [w for w in warnings if "ocr_max_pages" in w.message]
    assert warning.source == str(path) and "pages 3-300" in warning.message


def test_a_scanned_pdf_over_ocr_max_pages_zero_is_not_an_empty_document(tmp_path: Path) -> None:
    path = tmp_path / "scan.pdf"
    path.write_bytes(scanned_pdf([scan(LINES, (1400, 200))] * 2))
    (failure,), _ = load(path, LoaderOptions(ocr_max_pages=0))
    if shutil.which("tesseract") is None:  # without tesseract it is refused for that reason instead
        assert isinstance(failure, UnsupportedFormatError) and APT in str(failure)
        return
    assert isinstance(failure, UnsupportedFormatError) and "pages 1-2" in str(failure)
    assert "ocr_max_pages=0" in str(failure)


@needs_tesseract
def test_an_image_over_ocr_max_pixels_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    path.write_bytes(image_bytes([scan(LINES, (1400, 300))], "PNG"))
    (failure,), _ = load(path, LoaderOptions(ocr_max_pixels=100_000))
    assert isinstance(failure, ExpansionLimitError) and failure.limit == "ocr_max_pixels"
    assert "1400 x 300" in str(failure)


@needs_tesseract
def test_a_large_pdf_page_is_rendered_under_ocr_max_pixels_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "scan.pdf"
    path.write_bytes(scanned_pdf([scan(LINES, (1400, 300))]))
    (doc,), warnings = load(path, LoaderOptions(ocr_max_pixels=1_000_000))  # 9.3 x 2 in: ~ 220 dpi, no warning
    assert isinstance(doc, LoadedDocument) and "zorblatt" in words(doc.text) and warnings == []
    (doc,), warnings = load(path, LoaderOptions(ocr_max_pixels=200_000))  # ~ 100 dpi
    assert isinstance(doc, LoadedDocument)
    assert [w.source for w in warnings] == [str(path)] and "ocr_max_pixels=200000" in warnings[0].message


@needs_tesseract
def test_image_frames_past_ocr_max_pages_are_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "fax.tiff"
    path.write_bytes(image_bytes([scan([line], (1400, 200)) for line in [*LINES, "third page"]], "TIFF"))
    (doc,), warnings = load(path, LoaderOptions(ocr_max_pages=1))
    assert isinstance(doc, LoadedDocument) and doc.metadata["ocr_pages"] == [1] and "zorblatt" in words(doc.text)
    assert [(w.source, w.message) for w in warnings] == [
        (str(path), "pages 2-3 not read: over ocr_max_pages=1, the most a file may have read")]


@needs_tesseract
def test_ocr_stops_when_the_file_takes_too_long(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ragtune.ingest.loaders import ocr

    monkeypatch.setattr(ocr, "FILE_BUDGET_S", -1)  # every page comes after the budget
    path = tmp_path / "mixed.pdf"
    path.write_bytes(mixed_pdf("Minutes of the annual meeting of shareholders", scan(LINES)))
    (doc,), warnings = load(path)
    assert isinstance(doc, LoadedDocument) and "ocr_pages" not in doc.metadata
    assert [w.source for w in warnings] == [str(path)] and "page 2" in warnings[0].message
    assert "OCR of this file passed" in warnings[0].message


@needs_tesseract
def test_a_blank_image_is_an_empty_document(tmp_path: Path) -> None:
    path = tmp_path / "blank.png"
    path.write_bytes(image_bytes([Image.new("L", (600, 200), "white")], "PNG"))
    (failure,), _ = load(path)
    assert isinstance(failure, EmptyDocumentError) and "OCR (eng) found none" in str(failure)


@needs_tesseract
def test_a_photo_stored_sideways_is_turned_by_its_exif_orientation(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to show": the pixels are stored turned the other way
    path = tmp_path / "phone.jpg"
    scan(LINES, (1400, 300)).convert("RGB").rotate(90, expand=True).save(path, "JPEG", exif=exif, quality=95)
    (doc,), _ = load(path)
    assert isinstance(doc, LoadedDocument) and {"zorblatt", "flumquist"} <= words(doc.text)


# ---------------------------------------------------------------- choosing the loader, options


@needs_tesseract
def test_an_image_without_a_suffix_is_sniffed(tmp_path: Path) -> None:
    path = tmp_path / "SCAN0001"
    path.write_bytes(image_bytes([scan(LINES, (1400, 200))], "PNG"))
    (doc,), _ = load(path)
    assert isinstance(doc, LoadedDocument) and "zorblatt" in words(doc.text)


def test_a_broken_image_is_refused_as_binary(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n")
    (failure,), _ = load(path)
    assert isinstance(failure, UnsupportedFormatError)
    assert "binary content ragtune has no loader for (.png); if it is text, read it with --as text" in str(failure)


@pytest.mark.parametrize("options", [{"ocr_lang": "eng; rm -rf /"}, {"ocr_lang": ""}, {"ocr_max_pages": -1},
                                     {"ocr_max_pixels": 0}, {"ocr_max_pages": True}])
def test_bad_ocr_options_are_refused_naming_the_value(options: dict[str, Any]) -> None:
    name, value = next(iter(options.items()))
    with pytest.raises(ConfigError, match=name) as caught:
        LoaderOptions(**options)
    assert repr(value) in str(caught.value)


@pytest.mark.parametrize(("numbers", "shown"), [([3], "page 3"), ([2, 3, 4, 7], "pages 2-4, 7"),
                                                ([1, 3], "pages 1, 3")])
def test_page_list(numbers: list[int], shown: str) -> None:
    assert page_list(numbers) == shown
