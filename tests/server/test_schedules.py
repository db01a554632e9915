"""Scheduled syncs against the real server (issue 16, item 3): an admin schedules a folder, the job
worker runs it as ingest jobs (listed with progress and report), an edit is picked up by a later
run, a deleted schedule runs no more, and only an admin key may touch schedules."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from ragtune.engine import Ragtune
from ragtune.errors import PermissionDeniedError
from ragtune.models import Principal


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one folder under which the server may sync folders named over HTTP."""
    return tmp_path_factory.mktemp("shares")


@pytest.fixture(scope="module")
def server_settings(module_database_url: str, tmp_path_factory: pytest.TempPathFactory, cache_dir: Path,
                    roots: Path) -> Any:
    from ragtune.settings import Settings

    return Settings.of(data_dir=tmp_path_factory.mktemp("server") / "data", database_url=module_database_url,
                       cache_dir=cache_dir, generator="extractive",
                       server={"rate_limit": 0, "max_top_k": 50, "sync_roots": str(roots)})


def wait_for(what: Callable[[], Any], seconds: float = 60.0, every: float = 0.2) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        found = what()
        if found:
            return found
        assert time.monotonic() < deadline, f"not within {seconds} s"
        time.sleep(every)


def runs(client: httpx.Client, schedule_id: int) -> list[dict[str, Any]]:
    jobs = client.get("/ingest-jobs", params={"limit": 500}).json()
    return sorted((j for j in jobs if j["schedule_id"] == schedule_id), key=lambda j: j["id"])


def top_uri(client: httpx.Client, query: str) -> str | None:
    r = client.post("/collections/scheduled/search", json={"query": query, "top_k": 1, "mode": "bm25"})
    if r.status_code != 200 or not r.json()["hits"]:
        return None
    return str(r.json()["hits"][0]["uri"])


def test_a_schedule_syncs_its_folder_every_interval_until_deleted(live: Any, roots: Path) -> None:
    folder = roots / "kb"
    folder.mkdir()
    ferry = folder / "ferry.md"
    ferry.write_text("# Ferry\n\nThe ferry to the island leaves the harbour at seven fifteen.\n")
    with live.client("admin") as client:
        r = client.post("/schedules", json={"source": str(folder), "collection": "scheduled", "interval_s": 1,
                                            "acl": ["a"], "metadata": {"origin": "share"}})
        assert r.status_code == 201, r.text
        schedule = r.json()
        assert schedule["source"] == str(folder.resolve()) and schedule["interval_s"] == 1

        first = wait_for(lambda: [j for j in runs(client, schedule["id"]) if j["status"] == "succeeded"])[0]
        assert first["source"] == str(folder.resolve()) and first["collection"] == "scheduled"
        assert first["report"]["added"] == 1 and first["report"]["failed"] == 0
        assert first["progress"]["documents"] == 1 and first["progress"]["files"] == 1
        assert wait_for(lambda: top_uri(client, "ferry harbour")) == str(ferry.resolve())
        document = client.get("/collections/scheduled/documents").json()[0]
        assert document["acl"] == ["a"] and document["metadata"]["origin"] == "share"

        # later runs find nothing changed, then the edit
        wait_for(lambda: len([j for j in runs(client, schedule["id"]) if j["status"] == "succeeded"]) >= 2)
        ferry.write_text("# Ferry\n\nThe ferry now leaves from the north pier at eight thirty.\n")
        updated = wait_for(lambda: [j for j in runs(client, schedule["id"])
                                    if j["status"] == "succeeded" and j["report"]["updated"] == 1])[0]
        assert updated["report"]["unchanged"] == 0 and updated["report"]["total"] == 1
        assert top_uri(client, "north pier") == str(ferry.resolve())

        # never two runs at once, and each started after the one before ended
        done = [j for j in runs(client, schedule["id"]) if j["status"] == "succeeded"]
        for before, after in itertools.pairwise(done):
            assert datetime.fromisoformat(after["started_at"]) >= datetime.fromisoformat(before["finished_at"])

        listed = client.get("/schedules").json()
        assert [s["id"] for s in listed if s["id"] == schedule["id"]] == [schedule["id"]]

        assert client.delete(f"/schedules/{schedule['id']}").status_code == 204
        time.sleep(0.5)  # a run that was going when the schedule was deleted ends
        settled = wait_for(lambda: all(j["status"] in ("succeeded", "failed")
                                       for j in client.get("/ingest-jobs", params={"limit": 500}).json()))
        assert settled
        count = len(client.get("/ingest-jobs", params={"limit": 500}).json())
        time.sleep(3.0)  # three intervals: no more runs
        assert len(client.get("/ingest-jobs", params={"limit": 500}).json()) == count
        assert client.delete(f"/schedules/{schedule['id']}").status_code == 404
        assert all(s["id"] != schedule["id"] for s in client.get("/schedules").json())


def test_only_an_admin_key_may_use_schedules(live: Any, roots: Path) -> None:
    body = {"source": str(roots), "collection": "scheduled", "interval_s": 60}
    for key in ("a", "a_ingest"):
        with live.client(key) as client:
            assert client.post("/schedules", json=body).status_code == 403
            assert client.get("/schedules").status_code == 403
            assert client.delete("/schedules/1").status_code == 403
    with live.client() as anonymous:
        assert anonymous.get("/schedules").status_code == 401


def test_a_request_names_only_folders_under_the_sync_roots(live: Any, roots: Path, tmp_path: Path) -> None:
    outside = tmp_path / "private"
    outside.mkdir()
    (roots / "escape").symlink_to(outside)
    with live.client("admin") as client:
        for source, status in ((str(roots / "missing"), 422), ("gs://bucket/x", 400), ("relative", 400),
                               ("s3://Not_A_Bucket/x", 400), (str(outside), 403), ("/", 403),
                               (str(roots / "escape"), 403), (str(roots / ".." / outside.name), 403)):
            r = client.post("/schedules", json={"source": source, "collection": "scheduled", "interval_s": 60})
            assert r.status_code == status, (source, r.text)
            assert source in r.json()["detail"] or "Not_A_Bucket" in r.json()["detail"] or status == 403
        r = client.post("/schedules", json={"source": str(roots), "collection": "scheduled", "interval_s": 0})
        assert r.status_code == 422
        r = client.post("/schedules", content=rb'{"source": "/tmp/\ud800", "collection": "s", "interval_s": 60}',
                        headers={"Content-Type": "application/json"})
        assert r.status_code == 400
    assert all(s.source != str(outside) for s in live.engine.schedules())


def test_without_sync_roots_a_request_names_no_folder(roots: Path) -> None:
    from ragtune.server.routes.schedules import _check_folder

    with pytest.raises(PermissionDeniedError, match=r"server\.sync_roots is empty"):
        _check_folder(str(roots), [])
    _check_folder(str(roots / "kb"), [str(roots)])


def test_the_engine_and_the_cli_keep_the_same_schedules(engine: Ragtune, tmp_path: Path) -> None:
    made = engine.add_schedule(tmp_path, every_s=3600, collection="elsewhere", principal=Principal.system())
    try:
        assert made.source == str(tmp_path.resolve()) and made.next_run_at is not None
        assert any(s.id == made.id for s in engine.schedules())
    finally:
        engine.delete_schedule(made.id)
    assert all(s.id != made.id for s in engine.schedules())
