"""Loaders on real files made in tmp_path: every format, every refusal, the registry, discovery."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from ragtune.errors import (
    ConfigError,
    CorruptFileError,
    DecodeError,
    EmptyDocumentError,
    FileTooLargeError,
    IngestError,
    UnsupportedFormatError,
)
from ragtune.ingest.loaders import LoaderOptions, iter_files, load_files, loader_for
from ragtune.ingest.loaders.jsonl import BadRecordsError
from ragtune.models import LoadedDocument
from ragtune.protocols import Loader

# ---------------------------------------------------------------- file builders


def make_pdf(pages: list[str], title: str | None = None) -> bytes:
    """A minimal valid PDF, one Helvetica text object per page, with a correct xref table."""

    def escape(s: str) -> str:
        return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    page_ids = [4 + 2 * i for i in range(len(pages))]
    kids = " ".join(f"{p} 0 R" for p in page_ids)
    objects: dict[int, bytes] = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode(),
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    }
    for pid, text in zip(page_ids, pages, strict=True):
        shown = " T* ".join(f"({escape(line)}) Tj" for line in text.split("\n"))
        stream = f"BT /F1 12 Tf 14 TL 72 720 Td {shown} ET".encode()
        objects[pid] = (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {pid + 1} 0 R >>"
        ).encode()
        objects[pid + 1] = b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"
    info = None
    if title:
        info = max(objects) + 1
        objects[info] = f"<< /Title ({escape(title)}) >>".encode()
    out = bytearray(b"%PDF-1.4\n")
    offsets = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += b"%d 0 obj\n" % number + objects[number] + b"\nendobj\n"
    xref = len(out)
    size = max(objects) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    for number in range(1, size):
        out += b"%010d 00000 n \n" % offsets[number]
    trailer = f"<< /Size {size} /Root 1 0 R" + (f" /Info {info} 0 R" if info else "") + " >>"
    out += f"trailer\n{trailer}\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def encrypt_pdf(data: bytes, user_password: str) -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def make_docx() -> bytes:
    import docx

    document = docx.Document()
    document.add_heading("Quarterly Report", 0)  # the "Title" style
    document.add_paragraph("Opening words before any heading.")
    document.add_heading("Results", 1)
    document.add_paragraph("Revenue grew.\nA second line in the same paragraph.")
    document.add_heading("By region", 2)
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "Region", "Sales"
    table.cell(1, 0).text, table.cell(1, 1).text = "North", "42"
    document.add_heading("Outlook", 1)
    document.add_paragraph("Cautious.")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


MARKDOWN = """Preamble line.

# Guide

Intro text with a #hashtag.

## Install ##

```bash
# not a heading: a shell comment
pip install ragtune
```

    # not a heading: indented code

### Options
~~~
## also code
~~~
Text after code.
"""

HTML = """<!doctype html><html><head><title> The  Page </title><style>p {color: red}</style>
<script>var x = "<h1>no</h1>";</script></head><body>
<nav><a href="/">Home</a> | <a href="/about">About</a></nav>
<h1>Main <em>heading</em></h1>
<p>First   paragraph,
spread over lines.<br>After a break.</p>
<ul><li>one</li><li>two <a href="#">link</a></li></ul>
<h2>Details</h2><table><tr><th>k</th><th>v</th></tr><tr><td>a</td><td>1</td></tr></table>
<pre>code
  indented</pre>
<footer>Copyright boilerplate</footer></body></html>"""


# ---------------------------------------------------------------- one case per format


def _load_one(path: Path, options: LoaderOptions | None = None) -> LoadedDocument:
    documents = list(loader_for(path, options).load(path))
    assert len(documents) == 1
    return documents[0]


def _assert_sections_point_at_titles(document: LoadedDocument) -> None:
    for section in document.sections:
        assert document.text[section.start :].startswith(section.title) or document.text[section.start :].lstrip(
            "# "
        ).startswith(section.title), section


def test_text_latin1(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    text = "Résumé of the café meeting: naïve ideas, façade, über-cool.\r\nSecond line. " * 3
    path.write_bytes(text.encode("latin-1"))
    document = _load_one(path)
    assert document.text == text.replace("\r\n", "\n")
    assert document.uri == str(path)
    assert document.metadata == {"source_path": str(path), "format": "text"}
    assert document.sections == () and document.title is None


def test_text_utf16_and_no_suffix(tmp_path: Path) -> None:
    path = tmp_path / "README"
    path.write_bytes("Ünïcode in UTF-16 ✓\n".encode("utf-16"))
    assert _load_one(path).text == "Ünïcode in UTF-16 ✓\n"


def test_markdown_sections_skip_code(tmp_path: Path) -> None:
    path = tmp_path / "guide.md"
    path.write_text(MARKDOWN, encoding="utf-8")
    document = _load_one(path)
    assert document.text == MARKDOWN  # kept as is
    assert [(s.level, s.title) for s in document.sections] == [(1, "Guide"), (2, "Install"), (3, "Options")]
    for section in document.sections:
        line = document.text[section.start :].split("\n", 1)[0]
        assert line.startswith("#") and section.title in line
    assert document.title == "Guide"
    assert document.mime == "text/markdown"
    assert document.metadata["format"] == "markdown"


def test_html_text_sections_and_title(tmp_path: Path) -> None:
    path = tmp_path / "page.html"
    path.write_text(HTML, encoding="utf-8")
    document = _load_one(path)
    assert document.text == (
        "Main heading\n\nFirst paragraph, spread over lines.\nAfter a break.\n\none\n\ntwo link"
        "\n\nDetails\n\nk | v\n\na | 1\n\ncode\n  indented"
    )
    for dropped in ("Home", "Copyright", "color", "var x"):
        assert dropped not in document.text
    assert [(s.level, s.title) for s in document.sections] == [(1, "Main heading"), (2, "Details")]
    _assert_sections_point_at_titles(document)
    assert document.title == "The Page"


def test_html_title_falls_back_to_h1(tmp_path: Path) -> None:
    path = tmp_path / "page.htm"
    path.write_text("<h1>Only heading</h1><p>Body.</p>", encoding="utf-8")
    assert _load_one(path).title == "Only heading"


def test_pdf_pages(tmp_path: Path) -> None:
    path = tmp_path / "report.pdf"
    path.write_bytes(make_pdf(["Hello PDF world.\nSecond line (with parens).", "Page two text."], "My Doc"))
    document = _load_one(path)
    assert document.text == "Hello PDF world.\nSecond line (with parens).\n\nPage two text."
    assert document.metadata["pages"] == 2
    starts = document.metadata["page_starts"]
    assert starts == [0, document.text.index("Page two")]
    assert document.title == "My Doc"
    assert document.mime == "application/pdf"


def test_pdf_encrypted_with_empty_user_password_opens(tmp_path: Path) -> None:
    path = tmp_path / "open.pdf"
    path.write_bytes(encrypt_pdf(make_pdf(["Readable anyway."]), user_password=""))
    assert _load_one(path).text == "Readable anyway."


def test_docx_headings_title_tables(tmp_path: Path) -> None:
    path = tmp_path / "report.docx"
    path.write_bytes(make_docx())
    document = _load_one(path)
    assert document.text == (
        "Quarterly Report\n\nOpening words before any heading.\n\nResults\n\n"
        "Revenue grew.\nA second line in the same paragraph.\n\nBy region\n\n"
        "Region | Sales\nNorth | 42\n\nOutlook\n\nCautious."
    )
    assert [(s.level, s.title) for s in document.sections] == [(1, "Results"), (2, "By region"), (1, "Outlook")]
    _assert_sections_point_at_titles(document)
    assert document.title == "Quarterly Report"
    assert document.metadata == {"source_path": str(path), "format": "docx"}


def test_loading_twice_gives_equal_documents(tmp_path: Path) -> None:
    """No timestamps or other run-dependent values: equal content, equal document."""
    path = tmp_path / "report.docx"
    path.write_bytes(make_docx())
    assert _load_one(path) == _load_one(path)


# ---------------------------------------------------------------- refusals

SAMPLES: dict[str, Callable[[], bytes]] = {
    ".txt": lambda: b"some text " * 10,
    ".md": lambda: MARKDOWN.encode(),
    ".html": lambda: HTML.encode(),
    ".pdf": lambda: make_pdf(["Some PDF text."]),
    ".docx": make_docx,
    ".jsonl": lambda: b'{"text": "a record"}\n' * 3,
    ".json": lambda: b'[{"text": "a record"}]',
}


@pytest.mark.parametrize("suffix", sorted(SAMPLES))
def test_over_size_limit(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"file{suffix}"
    data = SAMPLES[suffix]()
    path.write_bytes(data)
    with pytest.raises(FileTooLargeError, match=f"{len(data)} bytes") as info:
        list(loader_for(path, LoaderOptions(max_file_bytes=len(data) - 1)).load(path))
    assert info.value.source == str(path)
    _load_all(path, LoaderOptions(max_file_bytes=len(data)))  # exactly at the limit is fine


@pytest.mark.parametrize("suffix", sorted(SAMPLES))
def test_sparse_50mb_refused_without_reading(tmp_path: Path, suffix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / f"huge{suffix}"
    with path.open("wb") as handle:
        handle.truncate(50 * 1024 * 1024)  # sparse: no data written, no disk used

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the file was opened")

    monkeypatch.setattr(Path, "open", no_reading)
    monkeypatch.setattr(Path, "read_bytes", no_reading)
    monkeypatch.setattr("builtins.open", no_reading)
    with pytest.raises(FileTooLargeError, match="52428800 bytes"):
        list(loader_for(path).load(path))


def _load_all(path: Path, options: LoaderOptions | None = None) -> list[LoadedDocument]:
    return list(loader_for(path, options).load(path))


@pytest.mark.parametrize("suffix", sorted(SAMPLES))
def test_empty_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    with pytest.raises(EmptyDocumentError, match="empty file"):
        _load_all(path)


NO_TEXT = [
    ("blank.txt", b"  \n\t\n  "),
    ("blank.md", b"\n\n   \n"),
    ("blank.html", b"<html><head><title>t</title></head><body> <script>x()</script> <p> </p></body></html>"),
    ("blank.pdf", make_pdf([" "])),
    ("blank.jsonl", b"\n\n  \n"),
]


@pytest.mark.parametrize(("name", "data"), NO_TEXT, ids=[n for n, _ in NO_TEXT])
def test_whitespace_only_is_empty(tmp_path: Path, name: str, data: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(EmptyDocumentError):
        _load_all(path)


def _zip_without_document() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("hello.txt", "not a word document")
    return out.getvalue()


CORRUPT = [
    ("truncated.pdf", lambda: make_pdf(["Some text on a page."])[:120], CorruptFileError, "unreadable PDF"),
    ("garbage.pdf", lambda: b"%PDF-1.4\nthis is not really a pdf at all", CorruptFileError, "unreadable PDF"),
    (
        "locked.pdf",
        lambda: encrypt_pdf(make_pdf(["Secret."]), user_password="secret"),
        CorruptFileError,
        "encrypted PDF",
    ),
    ("truncated.docx", lambda: make_docx()[:500], CorruptFileError, "unreadable DOCX"),
    ("not-word.docx", _zip_without_document, CorruptFileError, "unreadable DOCX"),
    ("image.txt", lambda: b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(100), UnsupportedFormatError, "binary"),
    ("image.md", lambda: bytes(range(256)) * 4, UnsupportedFormatError, "binary"),
    (
        "undecodable.txt",
        lambda: bytes((i * 37 + 11) % 128 + 128 for i in range(400)),
        DecodeError,
        "encoding",
    ),
    ("broken.json", lambda: b'[{"text": "a"},', CorruptFileError, r"malformed JSON: .* \(line 1, column"),
    ("scalar.json", lambda: b"42", CorruptFileError, "expected an array of objects or one object"),
    ("photo.png", lambda: b"\x89PNG\r\n\x1a\n", UnsupportedFormatError,
     r"binary content ragtune has no loader for \(\.png\); if it is text, read it with --as text"),
]


@pytest.mark.parametrize(("name", "make", "error", "reason"), CORRUPT, ids=[c[0] for c in CORRUPT])
def test_bad_files_raise_with_reason(
    tmp_path: Path, name: str, make: Callable[[], bytes], error: type[IngestError], reason: str
) -> None:
    path = tmp_path / name
    path.write_bytes(make())
    with pytest.raises(error, match=reason) as info:
        _load_all(path)
    assert info.value.source == str(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="no such file"):
        _load_all(tmp_path / "gone.txt")


# ---------------------------------------------------------------- JSON Lines and JSON

JSONL_LINES = [
    '{"id": "a", "text": "First record.", "title": "A", "lang": "en", "score": 1.5, "tags": ["x"]}',
    "",
    '{"id": "b", "text": "Second\\r\\nrecord."}',
    '{"id": "c", "text": "broken',
    "[1, 2, 3]",
    '{"id": "d", "body": "no text field"}',
    '{"id": "e", "text": 42}',
    '{"id": "f", "text": "   "}',
    '{"id": "a", "text": "duplicate id"}',
    '{"text": "no id here"}',
    '{"id": "g", "text": "Last good record."}',
]


def _write_jsonl(tmp_path: Path, lines: Sequence[str | bytes]) -> Path:
    path = tmp_path / "records.jsonl"
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return path


def test_jsonl_yields_good_records_then_reports_each_bad_line(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path, [*JSONL_LINES, b'{"id": "h", "text": "bad \xff byte"}'])
    loader = loader_for(path, LoaderOptions(id_field="id", title_field="title"))
    documents: list[LoadedDocument] = []
    with pytest.raises(BadRecordsError) as info:
        documents.extend(loader.load(path))
    assert [d.uri for d in documents] == [f"{path}#a", f"{path}#b", f"{path}#g"]
    assert [d.text for d in documents] == ["First record.", "Second\nrecord.", "Last good record."]
    assert documents[0].title == "A"
    failures = {f.source.removeprefix(str(path)): (type(f).__name__, f.reason) for f in info.value.failures}
    assert failures == {
        ":4": ("CorruptFileError", "malformed JSON: Unterminated string starting at (column 21)"),
        ":5": ("CorruptFileError", "expected a JSON object, got an array"),
        ":6": ("EmptyDocumentError", "no 'text' field (fields: body, id)"),
        ":7": ("CorruptFileError", "field 'text' is a number, not a string"),
        ":8": ("EmptyDocumentError", "field 'text' has no text"),
        ":9": ("CorruptFileError", f"duplicate id: uri {path}#a already used by {path}:1"),
        ":10": ("CorruptFileError", "no id field 'id'"),
        ":12": ("DecodeError", "not UTF-8: invalid start byte at byte 25"),
    }
    assert info.value.total == 11
    assert info.value.source == str(path)
    assert "8 of 11 records failed (line 4: malformed JSON" in str(info.value)


def test_jsonl_metadata_defaults_to_other_scalars(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path, JSONL_LINES[:3])
    first, second = _load_all(path)
    assert first.uri == f"{path}#1" and second.uri == f"{path}#3"  # line numbers, blank line counted
    assert first.metadata == {
        "id": "a",
        "title": "A",
        "lang": "en",
        "score": 1.5,
        "source_path": str(path),
        "format": "jsonl",
    }
    assert first.title is None  # no title_field given


def test_jsonl_explicit_metadata_fields(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path, [JSONL_LINES[0]])
    (document,) = _load_all(path, LoaderOptions(metadata_fields=["tags", "missing"], text_field="text"))
    assert document.metadata == {"tags": ["x"], "source_path": str(path), "format": "jsonl"}


def test_jsonl_refuses_nan_and_drops_nul(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path, ['{"text": "a\\u0000b", "k": "v\\u0000"}', '{"text": "x", "score": NaN}'])
    documents: list[LoadedDocument] = []
    with pytest.raises(BadRecordsError) as info:
        documents.extend(loader_for(path).load(path))
    assert documents[0].text == "ab" and documents[0].metadata["k"] == "v"  # PostgreSQL cannot store NUL
    assert [f.reason for f in info.value.failures] == ["malformed JSON: NaN is not a JSON value"]


def test_json_array_and_object(tmp_path: Path) -> None:
    array = tmp_path / "array.json"
    array.write_text(json.dumps([{"text": "one"}, {"text": ""}, {"text": "three", "n": 3}]))
    documents: list[LoadedDocument] = []
    with pytest.raises(BadRecordsError) as info:
        documents.extend(loader_for(array).load(array))
    assert [(d.uri, d.text) for d in documents] == [(f"{array}#0", "one"), (f"{array}#2", "three")]
    assert documents[1].metadata == {"n": 3, "source_path": str(array), "format": "json"}
    assert [f.source for f in info.value.failures] == [f"{array}[1]"]
    assert "record [1]: field 'text' has no text" in str(info.value)

    single = tmp_path / "single.json"
    single.write_text(json.dumps({"content": "just one", "id": 7}))
    (document,) = _load_all(single, LoaderOptions(text_field="content", id_field="id"))
    assert document.uri == f"{single}#7"


# ---------------------------------------------------------------- options and registry

BAD_OPTIONS = [
    ({"max_file_bytes": 0}, "max_file_bytes"),
    ({"max_file_bytes": -5}, "-5"),
    ({"max_file_bytes": 1.5}, "1.5"),
    ({"text_field": ""}, "text_field"),
    ({"metadata_fields": "title"}, "'title'"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_OPTIONS)
def test_loader_options_validated(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LoaderOptions(**kwargs)  # type: ignore[arg-type]


def test_loader_options_store_fields_as_tuple() -> None:
    options = LoaderOptions(metadata_fields=["a", "b"])
    assert options.metadata_fields == ("a", "b")
    assert hash(options) == hash(LoaderOptions(metadata_fields=("a", "b")))


@pytest.mark.parametrize(
    ("name", "loader_class"),
    [
        ("a.TXT", "TextLoader"),
        ("a.Markdown", "MarkdownLoader"),
        ("a.HTM", "HtmlLoader"),
        ("REPORT.PDF", "PdfLoader"),
        ("a.docx", "DocxLoader"),
        ("a.ndjson", "JsonRecordsLoader"),
        ("LICENSE", "TextLoader"),
        ("archive.v2.txt", "TextLoader"),
    ],
)
def test_loader_for_by_suffix(name: str, loader_class: str) -> None:
    loader = loader_for(Path(name))
    assert type(loader).__name__ == loader_class
    assert isinstance(loader, Loader)


class _ShoutLoader:
    def __init__(self, options: LoaderOptions) -> None:
        self.options = options

    def load(self, source: Path) -> Iterator[LoadedDocument]:
        yield LoadedDocument(uri=str(source), text=source.read_text().upper())


def test_a_plugin_registers_a_loader(tmp_path: Path) -> None:
    from ragtune.plugins import Plugins

    plugins = Plugins.load(entry_points=False)

    def shout(p: Plugins) -> None:
        for suffix in ("shout", ".YELL"):
            p.loaders.register(suffix, _ShoutLoader)

    plugins.add("shout-plugin", shout)
    path = tmp_path / "x.yell"
    path.write_text("hi")
    options = LoaderOptions(max_file_bytes=99)
    loader = loader_for(path, options, plugins)
    assert isinstance(loader, _ShoutLoader) and loader.options is options
    assert [d.text for d in loader.load(path)] == ["HI"]
    assert ".shout" in plugins.loaders and plugins.loaders.source(".yell") == "shout-plugin"

    with pytest.raises(ConfigError, match=r"registers the loader '\.txt', which plugin ragtune\.ingest\.plugin"):
        plugins.add("rival", lambda p: p.loaders.register(".txt", _ShoutLoader))
    plugins.add("override", lambda p: p.loaders.register(".txt", _ShoutLoader, replace=True))
    assert isinstance(loader_for("a.txt", plugins=plugins), _ShoutLoader)
    assert type(loader_for("a.txt")).__name__ == "TextLoader"  # the default plugins are untouched
    with pytest.raises(ConfigError, match="'a/b'"):
        plugins.add("bad", lambda p: p.loaders.register("a/b", _ShoutLoader))
    with pytest.raises(ConfigError, match="callable"):
        plugins.add("bad", lambda p: p.loaders.register(".z", "not a factory"))


# ---------------------------------------------------------------- discovery


def _tree(root: Path, names: list[str]) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)


TREE = [
    "b.md",
    "a.txt",
    "docs/guide.md",
    "docs/api/ref.md",
    "docs/img/logo.png",
    "build/out.txt",
    ".git/config",
    ".hidden.md",
    "docs/.cache/x.md",
]
DISCOVERY = [
    ([], [], ["a.txt", "b.md", "build/out.txt", "docs/api/ref.md", "docs/guide.md", "docs/img/logo.png"]),
    (["*.md"], [], ["b.md", "docs/api/ref.md", "docs/guide.md"]),
    (["docs/*"], ["*.png"], ["docs/api/ref.md", "docs/guide.md"]),
    ([], ["build", "img"], ["a.txt", "b.md", "docs/api/ref.md", "docs/guide.md"]),
    (["*.md", "*.txt"], ["docs/api/*"], ["a.txt", "b.md", "build/out.txt", "docs/guide.md"]),
]


@pytest.mark.parametrize(("include", "exclude", "expected"), DISCOVERY)
def test_iter_files(tmp_path: Path, include: list[str], exclude: list[str], expected: list[str]) -> None:
    _tree(tmp_path, TREE)
    found = [p.relative_to(tmp_path).as_posix() for p in iter_files([tmp_path], include, exclude)]
    assert found == expected


def test_iter_files_explicit_files_first_and_deduplicated(tmp_path: Path) -> None:
    _tree(tmp_path, TREE)
    found = list(iter_files([tmp_path / ".hidden.md", tmp_path / "docs", tmp_path / "docs/guide.md"], ["*.md"]))
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [".hidden.md", "docs/api/ref.md", "docs/guide.md"]


def test_iter_files_accepts_one_path(tmp_path: Path) -> None:
    _tree(tmp_path, ["a.txt"])
    assert list(iter_files(str(tmp_path))) == [tmp_path / "a.txt"]


def test_iter_files_missing_path(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="no such file or folder") as info:
        list(iter_files([tmp_path / "nope"]))
    assert info.value.source == str(tmp_path / "nope")


def test_load_files_yields_documents_and_failures_in_order(tmp_path: Path) -> None:
    _tree(tmp_path, ["a.txt", "b.md"])
    (tmp_path / "c.jsonl").write_text('{"text": "good"}\nnot json\n{"text": "also good"}\n')
    (tmp_path / "d.pdf").write_bytes(b"%PDF-1.4 broken")
    (tmp_path / "e.bin").write_bytes(b"\x00\x01")
    (tmp_path / "f.txt").write_bytes(b"")
    items = list(load_files(iter_files([tmp_path])))
    summary = [(type(i).__name__, Path(i.uri if isinstance(i, LoadedDocument) else i.source).name) for i in items]
    assert summary == [
        ("LoadedDocument", "a.txt"),
        ("LoadedDocument", "b.md"),
        ("LoadedDocument", "c.jsonl#1"),
        ("LoadedDocument", "c.jsonl#3"),
        ("CorruptFileError", "c.jsonl:2"),
        ("CorruptFileError", "d.pdf"),
        ("UnsupportedFormatError", "e.bin"),
        ("EmptyDocumentError", "f.txt"),
    ]
