"""Re-ingesting and syncing keep each document's ACL and given metadata (issue 14, the blocker):
the README's own sequence, ``ingest --acl hr --meta team=hr`` then ``sync``, once made the HR files
public. Real database, real model, real files, through the ``ragtune`` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.runner import invoke


def docs(collection: str) -> dict[str, dict]:
    code, out, err = invoke("docs", "list", "-c", collection, "--json")
    assert code == 0, err
    return {Path(d["uri"]).name: d for d in json.loads(out)}


def anonymous_hits(query: str, collection: str) -> set[str]:
    code, out, err = invoke("search", query, "-c", collection, "--json", "--mode", "bm25", "--as-user", "visitor")
    assert code == 0, err
    return {Path(h["uri"]).name for h in json.loads(out)["hits"]}


@pytest.fixture
def hr(tmp_path: Path) -> Path:
    folder = tmp_path / "hr"
    folder.mkdir()
    (folder / "compensation.md").write_text("# Compensation\n\nSalary bands for 2027 are confidential.\n")
    (folder / "reviews.md").write_text("# Reviews\n\nPerformance reviews happen in March; salary follows.\n")
    return folder


def test_sync_after_an_ingest_with_acl_keeps_the_acl_and_the_metadata(env: dict[str, str], hr: Path) -> None:
    code, _, err = invoke("ingest", str(hr), "-c", "docs", "--acl", "hr", "--meta", "team=hr")
    assert code == 0, err
    code, out, err = invoke("sync", str(hr), "-c", "docs")
    assert code == 0, err
    assert "│ 0 │" not in out or "unchanged" in out
    stored = docs("docs")
    assert {name: d["acl"] for name, d in stored.items()} == {"compensation.md": ["hr"], "reviews.md": ["hr"]}
    assert all(d["metadata"]["team"] == "hr" and d["version"] == 1 for d in stored.values())
    assert anonymous_hits("salary", "docs") == set()
    # an edited file keeps them too, and a new file in the folder inherits them
    (hr / "reviews.md").write_text("# Reviews\n\nPerformance reviews happen in April; salary follows.\n")
    (hr / "bonus.md").write_text("# Bonus\n\nThe salary bonus pool is two percent.\n")
    code, _, err = invoke("sync", str(hr), "-c", "docs")
    assert code == 0, err
    stored = docs("docs")
    assert {name: (d["acl"], d["metadata"]["team"]) for name, d in stored.items()} == {
        "compensation.md": (["hr"], "hr"), "reviews.md": (["hr"], "hr"), "bonus.md": (["hr"], "hr")}
    assert stored["reviews.md"]["version"] == 2
    assert anonymous_hits("salary", "docs") == set()


def test_a_sync_that_would_change_an_acl_says_so_and_needs_change_acl(env: dict[str, str], hr: Path) -> None:
    assert invoke("ingest", str(hr), "-c", "docs", "--acl", "hr")[0] == 0
    code, out, err = invoke("sync", str(hr), "-c", "docs", "--public")
    assert code == 1  # nothing could be written
    assert "would change its ACL from [hr] to public" in err and "--change-acl" in err
    assert {tuple(d["acl"]) for d in docs("docs").values()} == {("hr",)}
    assert anonymous_hits("salary", "docs") == set()
    code, out, err = invoke("sync", str(hr), "-c", "docs", "--public", "--change-acl")
    assert code == 0, err
    assert "ACL changed on 2 stored document(s)" in out
    assert anonymous_hits("salary", "docs") == {"compensation.md", "reviews.md"}


def test_a_new_file_in_a_folder_of_mixed_acls_needs_an_acl(env: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.md").write_text("# A\n\nAlpha holds the salary table.\n")
    (folder / "b.md").write_text("# B\n\nBeta holds the salary notes.\n")
    assert invoke("ingest", str(folder / "a.md"), "-c", "docs", "--acl", "hr")[0] == 0
    assert invoke("ingest", str(folder / "b.md"), "-c", "docs", "--acl", "eng")[0] == 0
    (folder / "c.md").write_text("# C\n\nGamma has the salary plan.\n")
    _code, _, err = invoke("sync", str(folder), "-c", "docs")
    assert "c.md" in err and "different ACLs ([eng], [hr])" in err and "--acl" in err
    assert set(docs("docs")) == {"a.md", "b.md"}  # refused, and the others kept as they were
    assert invoke("sync", str(folder), "-c", "docs", "--acl", "eng")[0] == 0  # a.md would change: refused
    stored = docs("docs")
    assert {n: d["acl"] for n, d in stored.items()} == {"a.md": ["hr"], "b.md": ["eng"], "c.md": ["eng"]}


def test_a_subfolder_inherits_from_the_nearest_folder_with_documents(env: dict[str, str], hr: Path) -> None:
    assert invoke("ingest", str(hr), "-c", "docs", "--acl", "hr", "--meta", "team=hr")[0] == 0
    (hr / "2027").mkdir()
    (hr / "2027" / "plan.md").write_text("# Plan\n\nThe 2027 salary plan.\n")
    assert invoke("sync", str(hr), "-c", "docs")[0] == 0
    plan = docs("docs")["plan.md"]
    assert plan["acl"] == ["hr"] and plan["metadata"]["team"] == "hr"
    # an unrelated new folder starts public, as before
    other = hr.parent / "handbook"
    other.mkdir()
    (other / "office.md").write_text("# Office\n\nThe office opens at nine.\n")
    assert invoke("ingest", str(other), "-c", "docs")[0] == 0
    assert docs("docs")["office.md"]["acl"] == []


def test_acl_and_public_together_are_refused(env: dict[str, str], hr: Path) -> None:
    code, _, err = invoke("ingest", str(hr), "-c", "docs", "--acl", "hr", "--public")
    assert code == 2 and "either --acl or --public" in err
