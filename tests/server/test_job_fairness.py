"""One key's ingest jobs cannot hold the worker against another's (issue 14, item 6): a key has at
most ``server.max_jobs_per_key`` unfinished jobs, the worker takes keys in turn, and a file over a
container limit fails alone inside its job. Against the real server and database."""

from __future__ import annotations

import io
import threading
import time
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from ragtune.errors import JobLimitError
from ragtune.models import Principal
from ragtune.server.jobs import JobStore
from ragtune.server.uploads import UploadedFile
from tests.server.conftest import running

UPLOAD = "/collections/handbook/documents"


@pytest.fixture(scope="module")
def tenants(engine: Any) -> dict[str, str]:
    from ragtune.server.auth import KeyStore

    store = KeyStore(engine.db)
    return {"a": store.create("tenant a", groups=["a"], scopes=["read", "ingest"]).key,
            "b": store.create("tenant b", groups=["b"], scopes=["read", "ingest"]).key}


def _queue(client: httpx.Client, name: str) -> int:
    r = client.post(UPLOAD, files={"files": (name, f"# {name}\n\nNotes kept in {name}.".encode())})
    assert r.status_code == 202 and r.json()["status"] == "queued", r.text
    return int(r.json()["id"])


def _finished(client: httpx.Client, job_id: int, seconds: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        job = client.get(f"/ingest-jobs/{job_id}", params={"wait": 5}).json()
        if job["status"] in ("succeeded", "failed"):
            return job
        assert time.monotonic() < deadline, job


def test_a_burst_of_one_key_does_not_delay_another_keys_job(engine: Any, server_settings: Any,
                                                            tenants: dict[str, str]) -> None:
    from ragtune.server.app import create_app

    assert server_settings.server.max_jobs_per_key == 4  # the default
    app = create_app(engine, server_settings, auth=True, start_worker=False)
    state = app.state.ragtune
    with running(app, server_settings) as url, \
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tenants['a']}"}, timeout=60) as a, \
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tenants['b']}"}, timeout=60) as b:
        # with the worker stopped: a queues three jobs, then b one, then a a fourth
        a_jobs = [_queue(a, f"a{i}.md") for i in range(3)]
        b_job = _queue(b, "b0.md")
        a_jobs.append(_queue(a, "a3.md"))
        # a's fifth unfinished job is refused before its upload is stored
        stored_before = sorted(Path(state.uploads).iterdir())
        refused = a.post(UPLOAD, files={"files": ("a4.md", b"# a4\n\nOne job too many.")})
        assert refused.status_code == 429, refused.text
        problem = refused.json()
        assert problem["code"] == "too_many_jobs" and problem["limit"] == "max_jobs_per_key"
        assert "4 unfinished ingest jobs" in problem["detail"] and "server.max_jobs_per_key=4" in problem["detail"]
        assert int(refused.headers["retry-after"]) >= 1
        assert sorted(Path(state.uploads).iterdir()) == stored_before
        # asked before the body is read at all: a body that is no upload gets 429, not 415
        not_multipart = a.post(UPLOAD, content=b"{}", headers={"Content-Type": "application/json"})
        assert not_multipart.status_code == 429, not_multipart.text
        assert len(a.get("/ingest-jobs", params={"status": "queued"}).json()) == 4
        state.worker.start()
        try:
            jobs = {job_id: _finished(a if job_id in a_jobs else b, job_id) for job_id in [*a_jobs, b_job]}
        finally:
            state.worker.stop(30)
        # the quota frees as jobs finish
        assert a.post(UPLOAD, files={"files": ("a5.md", b"# a5\n\nAfter the others.")}).status_code == 202
    assert all(job["status"] == "succeeded" for job in jobs.values()), jobs
    by_start = sorted(jobs, key=lambda job_id: datetime.fromisoformat(jobs[job_id]["started_at"]))
    # FIFO would run b's job fourth, after three of a's; in turn it runs second
    assert by_start == [a_jobs[0], b_job, *a_jobs[1:]]


def test_two_uploads_racing_for_the_last_slot_cannot_both_take_it(engine: Any, tmp_path: Path) -> None:
    """Six servers' uploads at once (a connection each, opened beforehand), two slots left."""
    from ragtune.store.database import Database

    store = JobStore(engine.db, tmp_path)
    principal = Principal("key:racer", frozenset({"a"}))
    created: list[int] = []
    refused: list[JobLimitError] = []
    databases = [Database(engine.db.url, max_connections=1) for _ in range(6)]
    for db in databases:
        with db.connection() as conn:
            conn.execute("SELECT 1")
    barrier = threading.Barrier(len(databases))

    def create(i: int) -> None:
        racer = JobStore(databases[i], tmp_path)
        barrier.wait()
        try:
            job = racer.create(collection="handbook", principal=principal, acl=None, metadata=None,
                               folder=tmp_path / f"gone-{i}", files=[UploadedFile("x.md", "0000-x.md", 1)],
                               max_per_key=2)
            created.append(job.id)
        except JobLimitError as exc:
            refused.append(exc)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(len(databases))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for db in databases:
        db.close()
    try:
        assert len(created) == 2 and len(refused) == 4
        assert store.unfinished("key:racer") == 2
        assert all(e.limit == "max_jobs_per_key" and e.retry_after > 0 for e in refused)
        with pytest.raises(JobLimitError):
            store.check_quota("key:racer", 2)
        store.check_quota("key:racer", 3)  # below another limit
        store.check_quota("key:racer", 0)  # 0: no limit
    finally:
        for job_id in created:
            store.finish(job_id, "failed", error="test job")
    assert store.unfinished("key:racer") == 0


def test_a_bomb_in_a_job_fails_alone_with_its_reason(live: Any) -> None:
    from tests.ingest.test_container_limits import bomb_docx

    bomb = bomb_docx(99 * 1_000_000)
    expanded = sum(m.file_size for m in zipfile.ZipFile(io.BytesIO(bomb)).infolist())
    files = [("files", ("report.docx", bomb)),
             ("files", ("lunch.md", b"# Lunch\n\nThe canteen serves soup on Fridays."))]
    with live.client("a_ingest") as client:
        r = client.post(UPLOAD, files=files, data={"acl": "a"})
        assert r.status_code == 202, r.text
        job = _finished(client, r.json()["id"])
    assert job["status"] == "succeeded", job
    by_name = {f["name"]: f for f in job["files"]}
    assert by_name["lunch.md"]["status"] == "ingested"
    (error,) = by_name["report.docx"]["errors"]
    assert by_name["report.docx"]["status"] == "failed" and error["code"] == "expansion_limit"
    assert error["source"] == "report.docx"
    assert f"({expanded:,} bytes)" in error["reason"] and "max_expanded_bytes=67,108,864" in error["reason"]
    assert job["report"]["added"] == 1 and job["report"]["failed"] == 1
