"""Decompression bombs and oversized documents (issue 14, item 6): real DOCX and PDF files built
here, refused with their reason before they are expanded, while the other files of the same
ingest land."""

from __future__ import annotations

import io
import time
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any

import pytest

from ragtune.errors import ChunkLimitError, ConfigError, CorruptFileError, ExpansionLimitError
from ragtune.ingest.loaders import LoaderOptions, load_files, loader_for
from ragtune.ingest.loaders.containers import RATIO_FLOOR
from ragtune.models import LoadedDocument
from ragtune.settings import Settings
from ragtune.testing.files import (
    MB,
    SENTENCE,
    bomb_docx,
    docx_bytes,
    lie_about_size,
    pdf_bytes,
    rezip,
    text_page,
)


def load(path: Path, options: LoaderOptions | None = None) -> list[LoadedDocument]:
    return list(loader_for(path, options).load(path))


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- DOCX


def test_the_issue_bomb_is_refused_from_its_central_directory(tmp_path: Path) -> None:
    """Issue 14's file: ~450 KB expanding to ~100 MB of XML; it used to parse for minutes."""
    data = bomb_docx(99 * MB)
    assert len(data) < 600_000  # a realistic bomb: ~200x
    path = write(tmp_path, "bomb.docx", data)
    started = time.perf_counter()
    with pytest.raises(ExpansionLimitError) as refused:
        load(path)
    assert time.perf_counter() - started < 2.0  # measured: under a millisecond; parsing it took 153 s
    error = refused.value
    assert error.code == "expansion_limit" and error.limit == "max_expanded_bytes"
    assert error.source == str(path)
    expanded = sum(m.file_size for m in zipfile.ZipFile(path).infolist())
    assert expanded > 99 * MB
    # the sizes (expanded and compressed) and the limit's setting
    assert f"expands to {expanded / MB:.1f} MB ({expanded:,} bytes) from {len(data) / 1000:.1f} KB" in error.reason
    assert "max_expanded_bytes=67,108,864" in error.reason


def test_a_bomb_under_the_size_limit_is_refused_for_its_ratio(tmp_path: Path) -> None:
    data = bomb_docx(8 * MB)  # under 64 MiB, but 200x
    path = write(tmp_path, "small-bomb.docx", data)
    with pytest.raises(ExpansionLimitError) as refused:
        load(path)
    assert refused.value.limit == "max_expansion_ratio"
    assert "'word/document.xml' expands" in refused.value.reason
    assert "max_expansion_ratio=100" in refused.value.reason
    # the same file loads where the operator allows it
    (document,) = load(path, LoaderOptions(max_expansion_ratio=1000))
    assert document.text.startswith(SENTENCE)


def test_the_size_limit_counts_every_member(tmp_path: Path) -> None:
    path = write(tmp_path, "report.docx", docx_bytes(["Revenue grew."]))
    expanded = sum(m.file_size for m in zipfile.ZipFile(path).infolist())
    load(path, LoaderOptions(max_expanded_bytes=expanded))  # exactly at the limit is fine
    with pytest.raises(ExpansionLimitError, match=f"max_expanded_bytes={expanded - 1:,}"):
        load(path, LoaderOptions(max_expanded_bytes=expanded - 1))


def test_a_member_lying_about_its_size_is_refused_without_expanding_it(tmp_path: Path) -> None:
    """document.xml declares 200 bytes (with the right CRC for them) but inflates to 40 MB:
    zipfile's read() would inflate all 40 MB before cutting the output at 200 bytes."""
    real = bomb_docx(40 * MB)
    xml = zipfile.ZipFile(io.BytesIO(real)).read("word/document.xml")
    path = write(tmp_path, "liar.docx", lie_about_size(real, "word/document.xml", xml[:200]))
    assert zipfile.ZipFile(path).getinfo("word/document.xml").file_size == 200
    tracemalloc.start()
    try:
        with pytest.raises(ExpansionLimitError) as refused:
            load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "'word/document.xml' declares 0.2 KB (200 bytes) but expands to more" in refused.value.reason
    assert peak < 8 * MB, peak  # inflated in 1 MiB steps, stopped just past the declared size


def test_nested_archives_are_refused_outside_the_embeddings_folder(tmp_path: Path) -> None:
    inner = docx_bytes(["An embedded document."])
    nested = write(tmp_path, "nested.docx", rezip(docx_bytes(), add={"word/media/archive.bin": inner}))
    with pytest.raises(ExpansionLimitError, match=r"'word/media/archive\.bin' is itself a zip archive") as refused:
        load(nested)
    assert refused.value.limit == "nested_archive"
    # where Word keeps a chart's workbook: allowed, and never opened
    chart = write(tmp_path, "chart.docx", rezip(docx_bytes(["Sales by region."]),
                                                add={"word/embeddings/Microsoft_Excel_Worksheet.xlsx": inner}))
    (document,) = load(chart)
    assert document.text == "Sales by region."


def test_a_zip_of_too_many_members_is_refused(tmp_path: Path) -> None:
    extra = {f"customXml/extra{i}.xml": b"<a/>" for i in range(10_001)}
    path = write(tmp_path, "many.docx", rezip(docx_bytes(), add=extra))
    with pytest.raises(ExpansionLimitError, match="10,018 members, over max_container_members=10,000") as refused:
        load(path)
    assert refused.value.limit == "max_container_members"
    assert load(path, LoaderOptions(max_container_members=20_000))  # the limit is the setting


def test_other_compression_methods_and_broken_zips_are_corrupt(tmp_path: Path) -> None:
    bzip = write(tmp_path, "bzip.docx", rezip(docx_bytes(), compress=zipfile.ZIP_BZIP2))
    with pytest.raises(CorruptFileError, match="compression method 12"):
        load(bzip)
    data = bytearray(docx_bytes())
    info = zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo("word/document.xml")
    data[info.header_offset:info.header_offset + 4] = b"XXXX"  # the local header's signature
    with pytest.raises(CorruptFileError, match="no local header"):
        load(write(tmp_path, "broken.docx", bytes(data)))


def test_a_normal_docx_with_tables_still_loads(tmp_path: Path) -> None:
    table = [["Region", "Sales"], ["North", "42"], ["South", "17"]]
    path = write(tmp_path, "sales.docx", docx_bytes(["Sales by region, first quarter."], table=table,
                                                    heading="Sales"))
    (document,) = load(path)
    assert document.text == "Sales\n\nSales by region, first quarter.\n\nRegion | Sales\nNorth | 42\nSouth | 17"
    assert document.title == "Sales" and [s.title for s in document.sections] == ["Sales"]


# ---------------------------------------------------------------- PDF


def test_a_pdf_stream_expanding_past_the_ratio_is_refused(tmp_path: Path) -> None:
    content = text_page("hello") + b" " * (RATIO_FLOOR + MB)  # 5 MB of spaces: ~1000x
    path = write(tmp_path, "spaces.pdf", pdf_bytes([content]))
    with pytest.raises(ExpansionLimitError) as refused:
        load(path)
    assert refused.value.limit == "max_expansion_ratio" and "a stream expands" in refused.value.reason


def test_a_pdf_stream_over_the_size_limit_stops_decoding(tmp_path: Path) -> None:
    """pypdf's own per-stream limit is lowered to max_expanded_bytes while the file is read."""
    path = write(tmp_path, "huge.pdf", pdf_bytes([text_page("hello") + b" " * (3 * MB)]))
    options = LoaderOptions(max_expanded_bytes=2 * MB, max_expansion_ratio=10_000)
    with pytest.raises(ExpansionLimitError, match="a stream decodes to more than 2,000,000 bytes") as refused:
        load(path, options)
    assert refused.value.limit == "max_expanded_bytes"
    # pypdf's limit is back to its default outside the load, and in other threads all along
    from pypdf import get_configuration

    assert get_configuration().zlib_maximum_output_length == 75_000_000


def test_pdf_streams_count_together(tmp_path: Path) -> None:
    pages = [text_page(f"part {i} of the text") + b" " * MB for i in range(5)]  # 1 MB each, 5 MB together
    path = write(tmp_path, "pages.pdf", pdf_bytes(pages))
    options = LoaderOptions(max_expanded_bytes=3 * MB, max_expansion_ratio=10_000)
    with pytest.raises(ExpansionLimitError, match=r"streams decode to more than 3\.0 MB") as refused:
        load(path, options)
    assert refused.value.limit == "max_expanded_bytes"
    (document,) = load(path, LoaderOptions(max_expanded_bytes=6 * MB, max_expansion_ratio=10_000))
    assert document.metadata["pages"] == 5


def test_pdf_text_counts_against_the_limit(tmp_path: Path) -> None:
    """A small form drawn 1,000 times: little to decode, a lot of text."""
    form = text_page("x" * 500)
    path = write(tmp_path, "forms.pdf", pdf_bytes([b"/Fm1 Do\n" * 1000], forms={"Fm1": form}))
    with pytest.raises(ExpansionLimitError, match="its text passes") as refused:
        load(path, LoaderOptions(max_expanded_bytes=200_000))
    assert refused.value.limit == "max_expanded_bytes"
    (document,) = load(path)
    assert len(document.text) >= 1000 * 500


# ---------------------------------------------------------------- options and settings


@pytest.mark.parametrize("kwargs", [{"max_expanded_bytes": 0}, {"max_expanded_bytes": 1.5},
                                    {"max_expansion_ratio": 0.5}, {"max_expansion_ratio": "10"},
                                    {"max_container_members": -1}, {"max_container_members": True}])
def test_bad_limits_are_refused_at_construction(kwargs: dict[str, Any]) -> None:
    name = next(iter(kwargs))
    with pytest.raises(ConfigError, match=name):
        LoaderOptions(**kwargs)


@pytest.mark.parametrize("kwargs", [{"max_expanded_bytes": 0}, {"max_expansion_ratio": 0.9},
                                    {"max_container_members": 0}, {"max_chunks_per_document": -1},
                                    {"max_jobs_per_key": -1}])
def test_bad_limit_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        Settings.of(**kwargs)


def test_loader_options_come_from_the_settings() -> None:
    settings = Settings.of(max_file_bytes=1000, max_expanded_bytes=2000, max_expansion_ratio=7,
                        max_container_members=9)
    options = LoaderOptions.from_settings(settings, text_field="body")
    assert (options.max_file_bytes, options.max_expanded_bytes, options.max_expansion_ratio,
            options.max_container_members, options.text_field) == (1000, 2000, 7, 9, "body")


# ---------------------------------------------------------------- a whole ingest


def test_load_files_reports_each_refusal_and_goes_on(tmp_path: Path) -> None:
    files = [write(tmp_path, "bomb.docx", bomb_docx(8 * MB)),
             write(tmp_path, "good.docx", docx_bytes(["Parking is free."])),
             write(tmp_path, "bomb.pdf", pdf_bytes([text_page("x") + b" " * (RATIO_FLOOR + MB)])),
             write(tmp_path, "good.pdf", pdf_bytes([text_page("The lift is out of order.")]))]
    results = list(load_files(files, LoaderOptions()))
    assert [type(r).__name__ for r in results] == ["ExpansionLimitError", "LoadedDocument",
                                                   "ExpansionLimitError", "LoadedDocument"]


@pytest.fixture
def limited(settings: Settings, embedder: Any) -> Any:
    from ragtune.engine import Ragtune

    engine = Ragtune(settings.replace(max_chunks_per_document=3), embedder=embedder)
    try:
        yield engine
    finally:
        engine.close()


def test_an_ingest_refuses_each_bomb_with_its_reason_and_the_rest_lands(limited: Any, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    real = bomb_docx(40 * MB)
    xml = zipfile.ZipFile(io.BytesIO(real)).read("word/document.xml")
    long_text = "\n\n".join(f"Paragraph {i}. " + SENTENCE * 3 for i in range(40))  # far more than 3 chunks
    write(folder, "issue-bomb.docx", bomb_docx(99 * MB))
    write(folder, "liar.docx", lie_about_size(real, "word/document.xml", xml[:200]))
    write(folder, "stream-bomb.pdf", pdf_bytes([text_page("x") + b" " * (RATIO_FLOOR + MB)]))
    write(folder, "long.txt", long_text.encode())
    write(folder, "sales.docx", docx_bytes(["Sales rose in the north."], table=[["Region", "Sales"], ["North", "42"]]))
    write(folder, "notice.pdf", pdf_bytes([text_page("The lift is out of order until Friday.")]))
    write(folder, "canteen.txt", b"The canteen serves lunch from noon.")

    report = limited.ingest([folder], collection="limits")

    failed = {Path(f.source).name: (f.error, f.reason) for f in report.failed}
    assert sorted(failed) == ["issue-bomb.docx", "liar.docx", "long.txt", "stream-bomb.pdf"]
    assert failed["issue-bomb.docx"][0] == "expansion_limit" and "max_expanded_bytes" in failed["issue-bomb.docx"][1]
    assert failed["liar.docx"][0] == "expansion_limit" and "declares" in failed["liar.docx"][1]
    assert failed["stream-bomb.pdf"][0] == "expansion_limit" and "max_expansion_ratio" in failed["stream-bomb.pdf"][1]
    code, reason = failed["long.txt"]
    assert code == "chunk_limit" and "over max_chunks_per_document=3" in reason
    assert int(reason.split(" chunks")[0].replace(",", "")) > 3  # the count is named
    assert report.added == 3
    stored = {Path(d.uri).name for d in limited.documents(collection="limits")}
    assert stored == {"sales.docx", "notice.pdf", "canteen.txt"}
    hits = limited.search("north sales", collection="limits", mode="bm25").hits
    assert hits and Path(hits[0].uri).name == "sales.docx"


def test_the_chunk_limit_is_checked_before_anything_is_embedded(limited: Any) -> None:
    """Ingesting loaded documents (the server's path): the refused one embeds nothing."""
    long_doc = LoadedDocument(uri="long.md", text="\n\n".join(f"Section {i}. " + SENTENCE * 3 for i in range(40)))
    short_doc = LoadedDocument(uri="short.md", text="The library closes at six.")
    report = limited.ingest_documents([long_doc, short_doc], collection="limits-docs")
    assert [(f.source, f.error) for f in report.failed] == [("long.md", "chunk_limit")]
    assert report.added == 1 and report.chunks == 1
    assert report.embedded == 1  # only the short document's chunk (a fresh database: nothing cached)


def test_a_pipeline_refuses_a_bad_chunk_limit() -> None:
    from ragtune.ingest.pipeline import IngestPipeline

    with pytest.raises(ConfigError, match="max_chunks"):
        IngestPipeline(None, None, None, None, max_chunks=-1)  # type: ignore[arg-type]


def test_chunk_limit_error_is_an_ingest_error() -> None:
    error = ChunkLimitError("a.txt", "too many")
    assert error.code == "chunk_limit" and error.limit == "max_chunks_per_document"
