"""Near-duplicate documents at ingest (issue 16): a copy of a document already in the collection,
with the same ACL, is stored linked to it and without chunks, so search finds the text once; a
copy under another ACL is indexed; when the original changes or goes, the copy is indexed again by
its next sync; ``near_duplicates = "index"`` indexes every copy. Real files, the real database and
embedder."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ragtune.engine import Ragtune
from ragtune.ingest.duplicates import signature, similarity

MANUAL = " ".join(
    f"Section {n}: the {word} daemon rotates its {thing} every {n} hours unless told otherwise."
    for n, (word, thing) in enumerate(zip(
        ["backup", "mail", "print", "cron", "audit", "index", "cache", "sync", "proxy", "queue"] * 3,
        ["logs", "spools", "journals", "archives", "tables", "snapshots"] * 5, strict=False), start=1))


def chunks_of(rt: Ragtune, collection: str) -> dict[str, int]:
    return {Path(d.uri).name: d.chunk_count for d in rt.documents(collection=collection)}


def test_signatures_estimate_similarity() -> None:
    edited = MANUAL.replace("Section 7:", "Section seven:")
    assert similarity(signature(MANUAL), signature(MANUAL)) == 1.0
    assert similarity(signature(MANUAL), signature(edited)) >= 0.8
    assert similarity(signature(MANUAL), signature("An unrelated text about parking and visitors " * 20)) < 0.2


def test_a_copy_is_linked_and_searched_once(rt: Ragtune, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "manual.txt").write_text(MANUAL)
    (folder / "manual-copy.txt").write_text(MANUAL + "\nPrinted from the intranet.")
    (folder / "other.txt").write_text("Visitors park on level two of the garage beside the lobby.")
    report = rt.ingest([folder], collection="kb")
    assert (report.added, report.linked, report.total) == (3, 1, 3)
    counts = chunks_of(rt, "kb")
    assert counts["other.txt"] > 0 and sorted([counts["manual.txt"], counts["manual-copy.txt"]])[0] == 0
    copy = next(d for d in rt.documents(collection="kb") if d.chunk_count == 0)
    original = next(d for d in rt.documents(collection="kb") if d.uri != copy.uri and "manual" in d.uri)
    assert copy.metadata["duplicate_of"] == original.uri
    hits = rt.search("how often does the backup daemon rotate its logs", collection="kb", top_k=5, mode="bm25").hits
    assert {h.uri for h in hits} <= {original.uri, str(folder / "other.txt")}  # never the copy
    assert hits[0].uri == original.uri

    # the original goes: its copy is indexed by the next sync, and found
    Path(original.uri).unlink()
    first = rt.sync(folder, collection="kb")
    assert first.removed == 1
    second = rt.sync(folder, collection="kb")
    assert (second.updated, second.linked) == (1, 0)
    assert chunks_of(rt, "kb")[Path(copy.uri).name] > 0
    hits = rt.search("how often does the backup daemon rotate its logs", collection="kb", top_k=5, mode="bm25").hits
    assert hits[0].uri == copy.uri


def test_a_changed_original_gets_its_copy_indexed_again(rt: Ragtune, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text(MANUAL)
    (folder / "b.txt").write_text(MANUAL)
    rt.ingest([folder], collection="kb")
    assert sorted(chunks_of(rt, "kb").values())[0] == 0
    original = next(d.uri for d in rt.documents(collection="kb") if d.chunk_count > 0)
    Path(original).write_text("The handbook moved to the wiki; this page is kept for its link.")
    report = rt.sync(folder, collection="kb")
    assert report.updated == 1
    report = rt.sync(folder, collection="kb")  # the copy, marked stale by that update
    assert report.updated == 1 and all(n > 0 for n in chunks_of(rt, "kb").values())


def test_a_copy_under_another_acl_is_indexed(rt: Ragtune, tmp_path: Path) -> None:
    (tmp_path / "public").mkdir()
    (tmp_path / "hr").mkdir()
    (tmp_path / "public" / "manual.txt").write_text(MANUAL)
    (tmp_path / "hr" / "manual.txt").write_text(MANUAL)
    rt.ingest([tmp_path / "public"], collection="kb")
    report = rt.ingest([tmp_path / "hr"], collection="kb", acl=["hr"])
    assert (report.added, report.linked) == (1, 0)
    assert all(n > 0 for n in chunks_of(rt, "kb").values())


def test_index_setting_indexes_every_copy(settings, embedder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text(MANUAL)
    (folder / "b.txt").write_text(MANUAL)
    indexing = dataclasses.replace(settings, ingest=dataclasses.replace(settings.ingest, near_duplicates="index"))
    with Ragtune(indexing, embedder=embedder) as rt:
        report = rt.ingest([folder], collection="kb")
        assert (report.added, report.linked) == (2, 0)
        assert all(n > 0 for n in chunks_of(rt, "kb").values())
