"""``ragtune schedules add|list|rm``: thin commands over the engine's schedule rows."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.runner import invoke


def test_add_list_and_remove_a_schedule(env: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / "share"
    folder.mkdir()
    code, out, err = invoke("schedules", "add", str(folder), "--every", "600", "-c", "share", "--acl", "hr",
                            "--meta", "origin=share")
    assert code == 0, out + err
    assert f"sync {folder.resolve()} into 'share' every 600 s" in out
    code, out, err = invoke("schedules", "list", "--json")
    assert code == 0, out + err
    (listed,) = json.loads(out)
    assert listed["source"] == str(folder.resolve()) and listed["acl"] == ["hr"]
    assert listed["metadata"] == {"origin": "share"} and listed["interval_s"] == 600
    code, out, err = invoke("schedules", "rm", str(listed["id"]))
    assert code == 0 and "removed schedule" in out
    code, out, err = invoke("schedules", "rm", str(listed["id"]))
    assert code == 2 and f"no schedule {listed['id']}" in err
    code, out, err = invoke("schedules", "add", str(tmp_path / "missing"), "--every", "60")
    assert code == 2 and "no such folder" in err
    code, out, err = invoke("schedules", "add", str(folder), "--every", "0")
    assert code == 2
