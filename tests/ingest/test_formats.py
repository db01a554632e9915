"""Files read by what they are, not only by their suffix (issue 16): Debian-style files without a
known suffix, gzip files read through to what they hold, binary formats recognised by their magic
bytes, ``--as`` to force a format, and clear refusals for binary content, bombs and corrupt gzip.
Real files written here, the real loaders."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from ragtune.errors import ConfigError, CorruptFileError, ExpansionLimitError, UnsupportedFormatError
from ragtune.ingest.loaders import LoaderOptions, load_files, loader_for
from ragtune.ingest.loaders.sniff import sniff
from ragtune.models import LoadedDocument
from ragtune.testing.files import docx_bytes, pdf_bytes, text_page
from tests.cli.runner import invoke

CHANGELOG = """libffi (3.4.4-1) unstable; urgency=medium

  * New upstream release.
  * Build with the closure trampolines enabled on arm64.

 -- Maintainer <maint@example.org>  Mon, 02 Jan 2023 10:00:00 +0100
"""
HTML = ("<!DOCTYPE html><html><head><title>libffi manual</title></head><body><h1>Using libffi</h1>"
        "<p>The closure API creates functions at run time.</p></body></html>")


def load(path: Path, **options: object) -> list[LoadedDocument]:
    out = list(load_files([path], LoaderOptions(**options)))  # type: ignore[arg-type]
    errors = [item for item in out if not isinstance(item, LoadedDocument)]
    if errors:
        raise errors[0]
    return out  # type: ignore[return-value]


def test_a_file_without_a_known_suffix_is_read_as_the_text_it_is(tmp_path: Path) -> None:
    for name in ("changelog.Debian", "README", "NEWS.old"):
        path = tmp_path / name
        path.write_text(CHANGELOG, encoding="utf-8")
        (doc,) = load(path)
        assert doc.text.startswith("libffi (3.4.4-1)") and doc.metadata["format"] == "text", name
    latin = tmp_path / "copyright"
    latin.write_bytes("Copyright © 2023 Jürgen Müller\n".encode("latin-1"))
    assert "Jürgen" in load(latin)[0].text


def test_html_without_a_suffix_is_read_as_html(tmp_path: Path) -> None:
    path = tmp_path / "index"
    path.write_text("<!-- generated -->\n" + HTML)
    (doc,) = load(path)
    assert doc.metadata["format"] == "html" and "<p>" not in doc.text and "closure API" in doc.text


def test_gzip_files_are_read_as_what_they_hold(tmp_path: Path) -> None:
    changelog = tmp_path / "changelog.Debian.gz"
    changelog.write_bytes(gzip.compress(CHANGELOG.encode()))
    (doc,) = load(changelog)
    assert doc.uri == str(changelog) and doc.text.startswith("libffi (3.4.4-1)")
    assert doc.metadata["container"] == str(changelog) and doc.metadata["source_path"] == str(changelog)

    manual = tmp_path / "manual.html.gz"
    manual.write_bytes(gzip.compress(HTML.encode()))
    (page,) = load(manual)
    assert page.metadata["format"] == "html" and page.title == "libffi manual" and "<h1>" not in page.text

    records = tmp_path / "faq.jsonl.gz"
    lines = [json.dumps({"id": f"q{i}", "text": f"Answer number {i}."}) for i in range(3)]
    records.write_bytes(gzip.compress("\n".join(lines).encode()))
    docs = load(records, id_field="id")
    assert [d.uri for d in docs] == [f"{records}#q{i}" for i in range(3)]


def test_magic_bytes_win_over_a_lying_suffix_and_find_a_docx_without_one(tmp_path: Path) -> None:
    pdf = tmp_path / "spec.txt"
    pdf.write_bytes(pdf_bytes([text_page("Section one of the specification")]))
    (doc,) = load(pdf)
    assert doc.metadata["format"] == "pdf" and "specification" in doc.text
    word = tmp_path / "report"
    word.write_bytes(docx_bytes(["Quarterly numbers are up."]))
    assert load(word)[0].metadata["format"] == "docx"


def test_as_forces_a_format_and_an_unknown_one_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("# Leave\n\nParental leave lasts sixteen weeks.\n")
    (plain,) = load(path)
    (marked,) = load(path, as_format="markdown")
    assert plain.metadata["format"] == "text" and marked.metadata["format"] == "markdown"
    assert [s.title for s in marked.sections] == ["Leave"]
    with pytest.raises(ConfigError, match="unknown format 'klingon'"):
        loader_for(path, LoaderOptions(as_format="klingon"))


def test_binary_content_is_refused_in_one_line_with_the_way_out(tmp_path: Path) -> None:
    blob = tmp_path / "firmware.bin"
    blob.write_bytes(os.urandom(4096) + b"\x00")
    with pytest.raises(UnsupportedFormatError) as caught:
        load(blob)
    message = str(caught.value)
    assert message.startswith(str(blob)) and "--as text" in message
    assert "\n" not in message and "supported" not in message and len(message) < 200 + len(str(blob))
    assert sniff(b"\x7fELF\x02\x01\x01\x00" + bytes(100)) is None


def test_gzip_bombs_corrupt_and_nested_gzip_are_refused(tmp_path: Path) -> None:
    big = tmp_path / "zeros.txt.gz"
    big.write_bytes(gzip.compress(b"0" * (3 * 1024 * 1024)))
    with pytest.raises(ExpansionLimitError, match="over max_expanded_bytes"):
        load(big, max_expanded_bytes=1024 * 1024)
    ratio = tmp_path / "ratio.txt.gz"
    ratio.write_bytes(gzip.compress(b"a" * (6 * 1024 * 1024)))  # ~6 KB: ~1000x
    with pytest.raises(ExpansionLimitError, match="over max_expansion_ratio"):
        load(ratio)
    broken = tmp_path / "broken.txt.gz"
    broken.write_bytes(gzip.compress(CHANGELOG.encode() * 50)[:-40])
    with pytest.raises(CorruptFileError, match=f"{broken}: corrupt gzip file"):
        load(broken)
    nested = tmp_path / "twice.gz"
    nested.write_bytes(gzip.compress(gzip.compress(CHANGELOG.encode())))
    with pytest.raises(ExpansionLimitError, match="an archive inside an archive is not read"):
        load(nested)


def test_zip_and_tar_archives_are_read_member_by_member(tmp_path: Path) -> None:
    import io
    import tarfile
    import zipfile

    members = {"guide/intro.md": b"# Intro\n\nThe closure API creates functions.\n",
               "guide/changelog.Debian": CHANGELOG.encode(), "img/logo.bin": os.urandom(512) + b"\x00",
               "faq.jsonl": b'{"id": "q1", "text": "First answer."}\n{"id": "q2"}\n'}
    bundle = tmp_path / "docs.zip"
    with zipfile.ZipFile(bundle, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    tarball = tmp_path / "docs.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("escape")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)  # a link is skipped, never followed
    for path in (bundle, tarball):
        out = list(load_files([path]))
        docs = {d.uri: d for d in out if isinstance(d, LoadedDocument)}
        failures = {e.source: e for e in out if not isinstance(e, LoadedDocument)}
        assert set(docs) == {f"{path}!/guide/intro.md", f"{path}!/guide/changelog.Debian", f"{path}!/faq.jsonl#1"}
        assert docs[f"{path}!/guide/intro.md"].metadata["format"] == "markdown"
        assert docs[f"{path}!/guide/changelog.Debian"].text.startswith("libffi (3.4.4-1)")
        assert set(failures) == {f"{path}!/img/logo.bin", f"{path}!/faq.jsonl:2"}, failures
        assert "--as text" in failures[f"{path}!/img/logo.bin"].reason
    nested = tmp_path / "nested.zip"
    with zipfile.ZipFile(nested, "w") as archive:
        archive.writestr("inner.tar", tarball.read_bytes())
        archive.writestr("ok.txt", b"fine")
    out = list(load_files([nested]))
    assert [d.uri for d in out if isinstance(d, LoadedDocument)] == [f"{nested}!/ok.txt"]
    assert any("archive inside an archive" in e.reason for e in out if not isinstance(e, LoadedDocument))


def _message(subject: str, body: str, attachments: dict[str, bytes]) -> bytes:
    from email.message import EmailMessage

    message = EmailMessage()
    message["From"] = "Anna Berg <anna@example.org>"
    message["To"] = "hr@example.org"
    message["Date"] = "Mon, 02 Jan 2023 10:00:00 +0100"
    message["Subject"] = subject
    message.set_content(body)
    for name, data in attachments.items():
        message.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return message.as_bytes()


def test_email_and_mailboxes_with_attachments_as_child_documents(tmp_path: Path) -> None:
    eml = tmp_path / "leave.eml"
    eml.write_bytes(_message("Parental leave — question", "How long is parental leave? Grüße, Anna",
                             {"policy.md": b"# Leave\n\nSixteen weeks at full pay.\n",
                              "scan.bin": os.urandom(300) + b"\x00"}))
    out = list(load_files([eml]))
    docs = [d for d in out if isinstance(d, LoadedDocument)]
    failures = [e for e in out if not isinstance(e, LoadedDocument)]
    message, attachment = docs
    assert message.uri == str(eml) and message.title == "Parental leave — question"
    assert message.text.startswith("From: Anna Berg <anna@example.org>\nTo: hr@example.org\n")
    assert "Grüße" in message.text and message.metadata["from"] == "Anna Berg <anna@example.org>"
    assert attachment.uri == f"{eml}#attachment/1/policy.md" and attachment.metadata["container"] == str(eml)
    assert attachment.metadata["format"] == "markdown" and "Sixteen weeks" in attachment.text
    assert [f.source for f in failures] == [f"{eml}#attachment/2/scan.bin"]

    box = tmp_path / "hr.mbox"
    box.write_bytes(b"".join(b"From anna@example.org Mon Jan  2 10:00:00 2023\n"
                             + _message(f"Question {i}", f"Body number {i}.", {}) + b"\n" for i in (1, 2)))
    mails = load(box)
    assert [m.uri for m in mails] == [f"{box}#1", f"{box}#2"] and [m.title for m in mails] == ["Question 1",
                                                                                                "Question 2"]
    assert "Body number 2." in mails[1].text


def test_spreadsheets_slides_and_books_are_read_with_a_section_each(tmp_path: Path) -> None:
    import zipfile

    import openpyxl
    import pptx
    from pptx.util import Inches

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "Leave"
    for row in (["type", "weeks", "paid"], ["parental", 16, "full"], ["study", 2, None]):
        sheet.append(row)
    book.create_sheet("Empty")
    book.create_sheet("Costs").append(["total", "=1+2"])
    workbook = tmp_path / "leave.xlsx"
    book.save(workbook)
    (doc,) = load(workbook)
    assert doc.metadata["format"] == "xlsx" and [s.title for s in doc.sections] == ["Leave", "Costs"]
    assert "parental | 16 | full" in doc.text and "study | 2\n" in doc.text

    deck = pptx.Presentation()
    slide = deck.slides.add_slide(deck.slide_layouts[1])
    slide.shapes.title.text = "Leave policy"
    slide.placeholders[1].text_frame.text = "Parental leave lasts sixteen weeks."
    table = slide.shapes.add_table(2, 2, Inches(1), Inches(4), Inches(4), Inches(1)).table
    for (r, c), value in {(0, 0): "type", (0, 1): "weeks", (1, 0): "study", (1, 1): "2"}.items():
        table.cell(r, c).text = value
    slide.notes_slide.notes_text_frame.text = "Mention the sabbatical."
    deck.slides.add_slide(deck.slide_layouts[6])  # blank: no text, no section
    slides = tmp_path / "leave.pptx"
    deck.save(slides)
    (talk,) = load(slides)
    assert [s.title for s in talk.sections] == ["Slide 1: Leave policy"]
    assert "sixteen weeks" in talk.text and "study | 2" in talk.text and "sabbatical" in talk.text

    epub = tmp_path / "handbook.epub"
    with zipfile.ZipFile(epub, "w") as archive:
        archive.writestr("mimetype", "application/epub+zip")
        archive.writestr("META-INF/container.xml", '<?xml version="1.0"?><container><rootfiles>'
                         '<rootfile full-path="OEBPS/content.opf"/></rootfiles></container>')
        archive.writestr("OEBPS/content.opf", '<package><metadata><dc:title>Staff handbook</dc:title></metadata>'
                         '<manifest><item id="c2" href="two.xhtml"/><item id="c1" href="one.xhtml"/></manifest>'
                         '<spine><itemref idref="c1"/><itemref idref="c2"/></spine></package>')
        for name, heading, text in (("one", "Leave", "Sixteen weeks."), ("two", "Travel", "Book by Friday.")):
            archive.writestr(f"OEBPS/{name}.xhtml", f"<html><body><h1>{heading}</h1><p>{text}</p></body></html>")
    (handbook,) = load(epub)
    assert handbook.title == "Staff handbook" and [s.title for s in handbook.sections] == ["Leave", "Travel"]
    assert handbook.text.index("Sixteen weeks.") < handbook.text.index("Book by Friday.")
    # without a telling suffix each is still known by what its zip holds
    for path, fmt in ((workbook, "xlsx"), (slides, "pptx"), (epub, "epub")):
        bare = tmp_path / f"bare-{fmt}"
        bare.write_bytes(path.read_bytes())
        assert load(bare)[0].metadata["format"] == fmt
    broken = tmp_path / "broken.xlsx"
    broken.write_bytes(workbook.read_bytes()[:400])
    with pytest.raises(CorruptFileError, match=r"broken\.xlsx"):
        load(broken)


def test_ingest_reads_a_debian_style_folder_without_rejecting_a_file(database_url: str, cache_dir: Path,
                                                                     tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGTUNE_DATABASE_URL", database_url)
    monkeypatch.setenv("RAGTUNE_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "doc" / "libffi8"
    folder.mkdir(parents=True)
    (folder / "changelog.Debian.gz").write_bytes(gzip.compress(CHANGELOG.encode()))
    (folder / "copyright").write_text("Files: *\nCopyright: 1996-2022 Anthony Green\nLicense: MIT\n")
    (folder / "README.Debian").write_text("The closure trampolines are enabled on arm64.\n")
    (folder / "manual.html.gz").write_bytes(gzip.compress(HTML.encode()))
    code, out, err = invoke("ingest", str(tmp_path / "doc"), "--collection", "debian")
    assert code == 0, out + err
    assert "failed" not in err
    code, out, err = invoke("search", "closure trampolines arm64", "--collection", "debian", "--mode", "bm25",
                            "--json")
    assert code == 0, out + err
    assert {h["uri"] for h in json.loads(out)["hits"]} >= {str(folder / "changelog.Debian.gz"),
                                                           str(folder / "README.Debian")}
    code, out, err = invoke("ingest", str(folder), "--collection", "debian", "--as", "klingon")
    assert code != 0 and "unknown format 'klingon'" in out + err
