"""Ingestion into the real PostgreSQL with the real embedder: incremental updates, sync,
per-file failures, and the invariants of the lexical index."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragtune.engine import Ragtune
from ragtune.errors import EmbedderMismatchError, NotFoundError
from ragtune.models import Principal
from tests.helpers import CountingEmbedder, ProgressRecorder, check_index_consistency


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    write(folder, "cats.md", "# Cats\n\nCats purr when content and sleep sixteen hours a day.\n")
    write(folder, "dogs.md", "# Dogs\n\nDogs bark at strangers and love long walks in the park.\n")
    write(folder, "sub/tea.txt", "Green tea is steamed, black tea is fully oxidised before drying.\n")
    write(folder, "skip.log", "this file type is excluded by the include glob\n")
    return folder


def test_reingest_unchanged_files_does_no_embedding(settings, embedder, docs: Path) -> None:
    counting = CountingEmbedder(embedder)
    with Ragtune(settings, embedder=counting) as rt:
        first = rt.ingest([docs], include=["*.md", "*.txt"])
        assert (first.added, first.unchanged, len(first.failed)) == (3, 0, 0)
        assert counting.texts == first.embedded > 0
        before = counting.texts
        second = rt.ingest([docs], include=["*.md", "*.txt"])
        assert (second.added, second.updated, second.unchanged) == (0, 0, 3)
        assert counting.texts == before, "unchanged files must not reach the embedder"
        assert second.embedded == 0
        check_index_consistency(rt)


def test_changed_file_replaces_its_chunks_and_is_visible_to_the_next_query(rt: Ragtune, docs: Path) -> None:
    rt.ingest([docs])
    hits = rt.search("how long do cats sleep", top_k=1).hits
    assert hits and hits[0].uri.endswith("cats.md")
    write(docs, "cats.md", "# Cats\n\nCats were domesticated in the Near East around 7500 BC.\n")
    report = rt.ingest([docs])
    assert (report.updated, report.unchanged) == (1, 3)
    doc, text, chunks = rt.document(str(docs / "cats.md"))
    assert doc.version == 2
    assert "domesticated" in text and all("sixteen" not in c.text for c in chunks)
    top = rt.search("where were cats domesticated", top_k=1, mode="bm25").hits[0]
    assert top.uri.endswith("cats.md") and "Near East" in top.chunk.text
    assert rt.search("sixteen hours", mode="bm25").hits == [] or all(
        "sixteen" not in h.chunk.text for h in rt.search("sixteen hours", mode="bm25").hits
    )
    check_index_consistency(rt)


def test_metadata_or_acl_change_updates_without_embedding(settings, embedder, docs: Path) -> None:
    counting = CountingEmbedder(embedder)
    with Ragtune(settings, embedder=counting) as rt:
        rt.ingest([docs / "dogs.md"])
        embedded = counting.texts
        refused = rt.ingest([docs / "dogs.md"], metadata={"team": "k9"}, acl=["trainers"])
        assert refused.updated == 0 and [f.error for f in refused.failed] == ["acl_change"]
        assert rt.documents()[0].acl == () and "team" not in rt.documents()[0].metadata  # nothing half-applied
        report = rt.ingest([docs / "dogs.md"], metadata={"team": "k9"}, acl=["trainers"], change_acl=True)
        assert report.updated == 1 and report.acl_changed == 1 and counting.texts == embedded
        doc = rt.documents()[0]
        assert doc.metadata["team"] == "k9" and doc.acl == ("trainers",) and doc.version == 2
        assert rt.search("dogs bark", mode="bm25", principal=Principal("visitor")).hits == []  # trainers only
        assert rt.search(
            "dogs bark",
            mode="bm25",
            filters={"team": "k9"},
            principal=__import__("ragtune").Principal("t", frozenset({"trainers"})),
        ).hits


def test_sync_removes_documents_whose_files_are_gone(rt: Ragtune, docs: Path) -> None:
    rt.sync(docs)
    assert len(rt.documents()) == 4  # .log is plain text too
    (docs / "dogs.md").unlink()
    report = rt.sync(docs)
    assert report.removed == 1 and report.unchanged == 3
    assert not any(d.uri.endswith("dogs.md") for d in rt.documents())
    assert all(not h.uri.endswith("dogs.md") for h in rt.search("dogs bark at strangers").hits)
    check_index_consistency(rt)


def test_delete_and_not_found(rt: Ragtune, docs: Path) -> None:
    rt.ingest([docs])
    assert rt.delete(str(docs / "cats.md")) == 1
    assert rt.delete(str(docs / "cats.md")) == 0
    with pytest.raises(NotFoundError):
        rt.document(str(docs / "cats.md"))
    with pytest.raises(NotFoundError):
        rt.search("x", collection="no-such-collection")
    check_index_consistency(rt)


def test_querying_with_another_embedder_is_a_clear_error(settings, embedder, docs: Path) -> None:
    with Ragtune(settings, embedder=embedder) as rt:
        rt.ingest([docs / "cats.md"], collection="kb")
    other = CountingEmbedder(embedder, name="some-other-model")
    with Ragtune(settings, embedder=other) as rt:
        with pytest.raises(EmbedderMismatchError, match="some-other-model"):
            rt.search("cats", collection="kb")
        with pytest.raises(EmbedderMismatchError):
            rt.ingest([docs / "dogs.md"], collection="kb")
        assert rt.search("cats", collection="kb", mode="bm25").hits  # BM25 needs no embedder


def test_chunks_keep_offsets_and_heading_paths(rt: Ragtune, tmp_path: Path) -> None:
    body = (
        "# Guide\n\n## Install\n\n"
        + " ".join(f"Step {i} installs part {i}." for i in range(80))
        + ("\n\n## Use\n\nRun the tool with care.\n")
    )
    path = write(tmp_path, "guide.md", body)
    rt.ingest([path])
    _doc, text, chunks = rt.document(str(path))
    assert len(chunks) > 2
    for c in chunks:
        assert text[c.start : c.end] == c.text
        assert c.tokens <= rt.settings.ingest.chunk_max_tokens
    assert {c.heading for c in chunks} == {"Guide > Install", "Guide > Use"}


BAD_FILES = {
    "corrupt.pdf": b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\ntrailer <<",
    "binary.txt": bytes(range(256)) * 64,
    "empty.md": b"",
    "undecodable.txt": b"\x81\x8d\x8f\x90\x9d" * 200 + b"\xff\xfe\xfa" * 100,
}


def test_bad_files_fail_one_by_one_and_the_rest_lands(rt: Ragtune, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    for name, data in BAD_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    with open(folder / "huge.txt", "wb") as fh:  # sparse: 50 MB that costs no disk
        fh.truncate(50 * 1024 * 1024)
    write(folder, "good.md", "# Good\n\nThis one is fine and must be searchable.\n")
    write(folder, "latin1.txt", "")
    (folder / "latin1.txt").write_bytes("Café crème à la française, déjà vu.".encode("latin-1"))
    report = rt.ingest([folder])
    failed = {Path(f.source).name: f for f in report.failed}
    assert set(failed) == {*BAD_FILES, "huge.txt"}, failed
    for name, failure in failed.items():
        assert name in failure.source and failure.reason
    assert failed["huge.txt"].error == "file_too_large" and "max_file_bytes" in failed["huge.txt"].reason
    assert failed["corrupt.pdf"].error == "corrupt_file" and failed["empty.md"].error == "empty_document"
    assert report.added == 2
    assert rt.search("fine searchable", mode="bm25").hits[0].uri.endswith("good.md")
    assert rt.search("crème française", mode="bm25").hits[0].uri.endswith("latin1.txt")
    check_index_consistency(rt)


def test_jsonl_records_with_metadata_fields(rt: Ragtune, tmp_path: Path) -> None:
    path = tmp_path / "faq.jsonl"
    path.write_text(
        '{"id": "q1", "text": "Refunds take five business days.", "team": "billing", "year": 2023}\n'
        "{not json}\n"
        '{"id": "q2", "text": "Passwords reset from the login page.", "team": "it", "year": 2024}\n',
        encoding="utf-8",
    )
    from ragtune.ingest.loaders import LoaderOptions

    report = rt.ingest([path], loader_options=LoaderOptions(id_field="id", metadata_fields=("team", "year")))
    assert report.added == 2
    assert len(report.failed) == 1 and report.failed[0].source == f"{path}:2"
    assert "malformed JSON" in report.failed[0].reason
    hits = rt.search("refund", mode="bm25", filters=["year<2024"]).hits
    assert [h.uri for h in hits] == [f"{path}#q1"] and hits[0].metadata["team"] == "billing"


def test_a_document_the_database_refuses_fails_alone_and_the_batch_lands(rt: Ragtune) -> None:
    """Documents are written a batch per transaction; one the database refuses (a NUL character,
    which the file loaders strip but the Python API passes on, is not PostgreSQL text) is retried
    alone and reported by URI, and the others land."""
    from ragtune.models import LoadedDocument

    docs = [LoadedDocument(uri=f"r{i}", text=f"Record {i} is about harbour {i} and its cranes.",
                           metadata={"team": f"t{i}"}) for i in range(6)]
    docs[3] = LoadedDocument(uri="r3", text="Harbour three.", metadata={"team": "a\x00b"})
    report = rt.ingest_documents(docs)
    assert report.added == 5
    assert [f.source for f in report.failed] == ["r3"]
    assert "refused" in report.failed[0].reason
    assert {d.uri for d in rt.documents()} == {"r0", "r1", "r2", "r4", "r5"}
    check_index_consistency(rt)
    again = rt.ingest_documents(docs)
    assert again.unchanged == 5 and len(again.failed) == 1


def test_ingest_reports_progress_events_that_end_at_the_report(rt: Ragtune, docs: Path) -> None:
    """One event protocol: "files" knows its total from the start, "documents", "chunks" and
    "embedded" count up (from the writer thread too) and end at the report's numbers."""
    (docs / "broken.md").write_bytes(b"   \n")  # fails: empty
    write(docs, "faq.jsonl", '{"text": "Refunds take five business days."}\nnot json\n'
                             '{"text": "Passwords reset from the login page."}\n')
    files = sorted(p for p in docs.rglob("*") if p.is_file())
    progress = ProgressRecorder()
    report = rt.ingest([docs], progress=progress)
    assert report.added == 6 and len(report.failed) == 2  # 3 files, 2 records; empty file, bad line
    progress.assert_monotone()
    assert {e.total for e in progress.of("files")} == {len(files)}
    assert progress.last("files").done == len(files)
    assert {e.detail for e in progress.of("files")} >= {p.name for p in files}
    assert progress.last("documents").done == report.total == 8
    assert progress.last("chunks").done == report.chunks > 0
    assert progress.last("embedded").done == report.embedded > 0
    # Again: nothing to embed, every document counted as unchanged (or failed).
    again = ProgressRecorder()
    report = rt.sync(docs, progress=again)
    assert report.unchanged == 6 and again.of("embedded") == [] and again.of("chunks") == []
    assert again.last("documents").done == report.total and again.last("files").done == len(files)


def test_a_list_of_documents_reports_its_total(rt: Ragtune) -> None:
    """Documents given as a list have a known total; several batches are embedded while the writer
    thread writes the earlier ones, and one document the database refuses still counts once."""
    from ragtune.models import LoadedDocument

    docs = [LoadedDocument(uri=f"r{i}", text=f"Record {i} is about harbour {i} and its {i % 7} cranes.")
            for i in range(150)]
    docs[3] = LoadedDocument(uri="r3", text="Harbour three.", metadata={"team": "a\x00b"})
    progress = ProgressRecorder()
    report = rt.ingest_documents(docs, progress=progress)
    assert report.added == 149 and len(report.failed) == 1
    progress.assert_monotone()
    assert {e.total for e in progress.of("documents")} == {150}
    assert [e.done for e in progress.of("documents")] == list(range(151))  # one event per document, from 0
    assert progress.last("chunks").done == report.chunks == 149
    assert progress.last("embedded").done == report.embedded
    assert progress.of("files") == []
