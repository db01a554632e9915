"""``ragtune ingest|sync`` reports (issue 16, item 4): counts that add up, failures grouped by kind
with a few paths each, ``--report FILE`` with every failure, and no library noise on stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.runner import invoke
from tests.engine.test_ingest_report import make_folder


def test_ingest_groups_failures_and_writes_the_report_file(env: dict[str, str], tmp_path: Path) -> None:
    folder, expected = make_folder(tmp_path)
    out = tmp_path / "report.json"
    code, stdout, stderr = invoke("ingest", str(folder), "--report", str(out))
    assert code == 0, stderr
    assert f"{len(list(folder.iterdir()))} file(s), 14 document(s)" in stdout
    # one line per kind with its count, at most 3 sources under it, the rest counted
    assert "failed corrupt_file: 5" in stderr
    assert "failed empty_document: 2" in stderr
    assert "failed unsupported_format: 1" in stderr
    assert "… and 2 more" in stderr
    source_lines = [line for line in stderr.splitlines() if line.startswith(f"  {folder.resolve()}")]
    # corrupt (3 of 5), empty, unsupported; pypdf's warnings (3 of 5: one per broken PDF, two
    # about broken2.pdf, and cut.pdf's)
    assert len(source_lines) == 3 + 2 + 1 + 3
    assert "warning pypdf._reader: 5" in stderr

    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["added"] + report["failed"] == report["total"] == 14
    assert len(report["failures"]) == report["failed"] == 8
    codes = [f["code"] for f in report["failures"]]
    assert {code: codes.count(code) for code in codes} == {**expected, "corrupt_file": 5}
    assert all(set(f) == {"source", "code", "reason"} and f["reason"] for f in report["failures"])
    cut = [w["message"] for w in report["warnings"] if w["source"] == str(folder.resolve() / "cut.pdf")]
    assert cut == ["EOF marker seems truncated"] and len(report["warnings"]) == 5


def test_sync_writes_the_report_file_too(env: dict[str, str], tmp_path: Path) -> None:
    folder, _ = make_folder(tmp_path)
    assert invoke("sync", str(folder))[0] == 0
    (folder / "tea.txt").unlink()
    out = tmp_path / "sync.json"
    code, _, stderr = invoke("sync", str(folder), "--report", str(out))
    assert code == 0, stderr
    report = json.loads(out.read_text(encoding="utf-8"))
    assert (report["removed"], report["unchanged"], report["failed"], report["total"]) == (1, 5, 8, 14)


def test_report_into_a_missing_folder_is_refused_before_the_run(env: dict[str, str], tmp_path: Path) -> None:
    folder, _ = make_folder(tmp_path)
    code, _, stderr = invoke("ingest", str(folder), "--report", str(tmp_path / "nowhere" / "r.json"))
    assert code == 2 and "--report" in stderr


@pytest.mark.slow
def test_a_real_ingest_prints_no_library_noise(env: dict[str, str], tmp_path: Path) -> None:
    """In a process of its own (as a user runs it: no test logging handlers), stderr holds the
    bars and the grouped report only: no "Loading weights" bar, no pypdf line without a file."""
    folder, _ = make_folder(tmp_path)
    command = [str(Path(sys.executable).parent / "ragtune"), "ingest", str(folder)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env, "COLUMNS": "300"},
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "Loading weights" not in done.stderr and "it/s" not in done.stderr
    for line in done.stderr.splitlines():
        if "EOF marker" in line:  # only in the report, under the file it is about
            assert line.startswith(f"  {folder.resolve()}/"), line
    assert "warning pypdf._reader: 5" in done.stderr
