"""The ingest report a person reads (issue 16, item 4): counts that add up, failures with their
kind, library warnings kept with the file they are about, and progress that never runs past its
total. Real files, the real database and the real embedder."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

from ragtune.ingest.loaders import load_files
from ragtune.models import FileWarning
from tests.helpers import ProgressRecorder
from tests.ingest.test_loaders import make_pdf


def truncated_pdf(text: str, *, readable: bool) -> bytes:
    """A PDF cut at its end: "EOF marker seems truncated" (pypdf still reads it) or, without the
    marker at all, "EOF marker not found" (pypdf gives up: a corrupt file)."""
    whole = make_pdf([text])
    return whole.replace(b"%%EOF\n", b"%%EO" if readable else b"\n")


def make_folder(root: Path) -> tuple[Path, dict[str, int]]:
    """Good files, broken files of several kinds, and a JSON Lines file with one bad record;
    returns the folder and the failures expected per kind."""
    folder = root / "mixed"
    folder.mkdir()
    (folder / "cats.md").write_text("# Cats\n\nCats purr when content and sleep sixteen hours a day.\n")
    (folder / "tea.txt").write_text("Green tea is steamed, black tea is fully oxidised before drying.\n")
    (folder / "moon.pdf").write_bytes(make_pdf(["The moon has no atmosphere and a thin exosphere."]))
    (folder / "cut.pdf").write_bytes(truncated_pdf("Tides follow the moon around the planet.", readable=True))
    (folder / "records.jsonl").write_text('{"text": "Owls hunt at night."}\n{not json\n{"text": "Bats echolocate."}\n')
    (folder / "broken1.pdf").write_bytes(b"%PDF-1.4\nthis is not a pdf body at all")
    (folder / "broken2.pdf").write_bytes(truncated_pdf("Nothing readable here.", readable=False))
    (folder / "broken3.docx").write_bytes(b"PK\x03\x04 not really a zip archive")
    (folder / "broken4.pdf").write_bytes(b"%PDF-1.7\n\x00\x01\x02 garbage")
    (folder / "empty.txt").write_text("")
    (folder / "blank.md").write_text("   \n\n  \n")
    (folder / "blob.bin").write_bytes(bytes(range(256)) * 8)
    return folder, {"corrupt_file": 4, "empty_document": 2, "unsupported_format": 1}


def test_counts_add_up_and_failures_keep_their_kind(rt, tmp_path: Path) -> None:
    folder, expected = make_folder(tmp_path)
    files = len(list(folder.iterdir()))
    report = rt.ingest([folder])
    kinds: dict[str, int] = {}
    for failure in report.failed:
        kinds[failure.error] = kinds.get(failure.error, 0) + 1
    assert kinds == {**expected, "corrupt_file": expected["corrupt_file"] + 1}  # + the bad JSON Lines record
    assert sum(f.source.startswith(str(folder.resolve() / "records.jsonl:")) for f in report.failed) == 1
    assert report.files == files
    assert report.added == 6  # cats, tea, moon, cut, and two records
    # each document or record counted once: the JSON Lines file's 3 lines are 3, the others 1 each
    assert report.total == report.added + report.updated + report.unchanged + report.removed + len(report.failed)
    assert report.total == files + 2
    again = rt.ingest([folder])
    assert (again.added, again.unchanged, len(again.failed), again.total) == (0, 6, 8, report.total)


def test_sync_counts_removed_documents_in_the_total(rt, tmp_path: Path) -> None:
    folder, _ = make_folder(tmp_path)
    rt.sync(folder)
    (folder / "tea.txt").unlink()
    report = rt.sync(folder)
    assert (report.removed, report.unchanged, len(report.failed)) == (1, 5, 8)
    assert report.total == report.unchanged + report.removed + len(report.failed) == 14


def test_a_truncated_pdf_warning_is_kept_with_its_file(rt, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "pdfs"
    folder.mkdir()
    readable = folder / "cut.pdf"
    readable.write_bytes(truncated_pdf("Tides follow the moon around the planet.", readable=True))
    unreadable = folder / "gone.pdf"
    unreadable.write_bytes(truncated_pdf("Nothing readable here.", readable=False))
    report = rt.ingest([folder])
    assert report.added == 1 and [f.source for f in report.failed] == [str(unreadable.resolve())]
    by_file: dict[str, list[str]] = {}
    for warning in report.warnings:
        assert warning.origin.startswith("pypdf")
        by_file.setdefault(warning.source, []).append(warning.message)
    assert by_file[str(readable.resolve())] == ["EOF marker seems truncated"]
    assert "EOF marker not found" in by_file[str(unreadable.resolve())]
    assert "EOF marker" not in capfd.readouterr().err


def test_captured_warnings_name_the_file_and_leave_the_rest_alone(tmp_path: Path) -> None:
    path = tmp_path / "cut.pdf"
    path.write_bytes(truncated_pdf("Tides follow the moon.", readable=True))
    sink: list[FileWarning] = []
    docs = list(load_files([path], warnings_to=sink))
    assert len(docs) == 1 and sink == [FileWarning(str(path), "pypdf._reader", "EOF marker seems truncated")]
    # after the load, the loggers and the warnings filters are as they were
    assert logging.getLogger("pypdf").propagate and not logging.getLogger("pypdf").handlers
    with pytest.warns(UserWarning, match="outside"):
        warnings.warn("outside a load", UserWarning, stacklevel=1)


def test_progress_never_passes_its_totals(rt, tmp_path: Path) -> None:
    folder, _ = make_folder(tmp_path)
    for i in range(12):  # enough chunks for several embedding batches
        (folder / f"note{i:02}.md").write_text(f"# Note {i}\n\n" + f"Paragraph {i} about a distinct topic. " * 200)
    events = ProgressRecorder()
    report = rt.ingest([folder], progress=events)
    events.assert_monotone()
    documents = events.of("documents")
    assert all(e.total is not None and e.done <= e.total for e in documents)
    assert documents[-1].done == documents[-1].total == report.total
    embedded = events.of("embedded")
    assert all(e.total is not None and e.done <= e.total for e in embedded)
    assert embedded[-1].done == embedded[-1].total == report.embedded > 0
    assert events.last("files").done == events.last("files").total == report.files
