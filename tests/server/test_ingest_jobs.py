"""Uploads streamed to disk, asynchronous ingest jobs with per-file errors, jobs interrupted by a
restart, and graceful shutdown, against the real server."""

from __future__ import annotations

import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from ragtune.models import Principal
from ragtune.server.app import create_app
from ragtune.server.jobs import JobStore
from ragtune.server.uploads import UploadedFile
from tests.server.conftest import running

BOUNDARY = "ragtune-test-boundary"


def _multipart(name: str, size: int, block: int = 64 * 1024) -> Iterator[bytes]:
    """A one-file multipart body, generated on the fly (sent chunked, without Content-Length)."""
    yield (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
           "Content-Type: application/octet-stream\r\n\r\n").encode()
    chunk = bytes(range(256)) * (block // 256)
    sent = 0
    while sent < size:
        piece = chunk[: min(block, size - sent)]
        sent += len(piece)
        yield piece
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def test_an_upload_is_streamed_to_disk_and_each_file_gets_its_status(live: Any) -> None:
    size = 12 * 1024 * 1024
    with live.client("admin") as client:
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            r = client.post("/collections/handbook/documents", content=_multipart("blob.bin", size),
                            headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert r.status_code == 202, r.text
        # server and client together never held more than a small part of the 12 MiB file
        assert peak < 3 * 1024 * 1024, peak
        job = r.json()
        assert r.headers["location"] == f"/ingest-jobs/{job['id']}"
        assert job["status"] in ("queued", "running") and job["files"][0]["bytes"] == size
        done = client.get(f"/ingest-jobs/{job['id']}", params={"wait": 30}).json()
    assert done["status"] == "failed" and done["finished_at"]
    (entry,) = done["files"]
    assert entry["name"] == "blob.bin" and entry["status"] == "failed"
    assert entry["errors"][0]["code"] in ("unsupported_format", "decode_error")
    assert not any(Path(live.settings.data_dir, "uploads").glob("*/*"))  # upload folders are cleaned up
    with live.client("admin") as client:  # a failed job's trace says so
        traces = client.get("/traces", params={"kind": "job"}).json()
        (failed,) = [t for t in traces if client.get(f"/traces/{t['id']}").json()["spans"][0]["attributes"].get(
            "ragtune.job.id") == job["id"]]
        assert failed["error"] and "no file could be ingested" in failed["error"]


def test_an_async_job_reports_progress_and_per_file_errors(live: Any) -> None:
    files = [("files", ("guide.md", b"# Guide\n\nThe cafeteria serves lunch from noon until two.")),
             ("files", ("empty.txt", b"   \n")),
             ("files", ("records.jsonl", b'{"text": "Parking is free for visitors."}\nnot json\n')),
             ("files", ("photo.png", b"\x89PNG\r\n\x1a\n\x00\x00"))]
    with live.client("a_ingest") as client:
        r = client.post("/collections/handbook/documents", files=files, data={"acl": "a"})
        assert r.status_code == 202
        job_id = r.json()["id"]
        job = client.get(f"/ingest-jobs/{job_id}", params={"wait": 30}).json()
        assert job["status"] == "succeeded", job
        by_name = {f["name"]: f for f in job["files"]}
        assert by_name["guide.md"]["status"] == "ingested" and by_name["guide.md"]["errors"] == []
        assert by_name["empty.txt"]["status"] == "failed"
        assert by_name["empty.txt"]["errors"][0]["code"] == "empty_document"
        assert by_name["photo.png"]["status"] == "failed"
        assert by_name["records.jsonl"]["status"] == "ingested" and by_name["records.jsonl"]["documents"] == 1
        assert by_name["records.jsonl"]["errors"][0]["source"].startswith("records.jsonl:2")
        assert job["report"]["added"] == 2 and job["report"]["failed"] == 3
        # the job is a trace of its maker's: a job span, its ingest below it
        (listed,) = [t for t in client.get("/traces", params={"kind": "job"}).json()]
        assert listed["query"] == f"upload job {job_id}: 4 file(s)"  # its title in the list
        trace = client.get(f"/traces/{listed['id']}").json()
        (root,) = [s for s in trace["spans"] if s["parent_id"] is None]
        assert root["name"] == "job" and root["status"] == "ok"
        assert root["attributes"]["ragtune.job.id"] == job_id
        assert root["attributes"]["ragtune.job.status"] == "succeeded"
        (ingest,) = [s for s in trace["spans"] if s["name"] == "ingest"]
        assert ingest["parent_id"] == root["span_id"] and ingest["attributes"]["ragtune.ingest.added"] == 2
        # the counts the console polls, from the ingest's progress events, end at the report's
        report = job["report"]
        assert job["progress"] == {"files": 4, "documents": 5, "chunks": report["chunks"],
                                   "embedded": report["embedded"]} and report["chunks"] > 0
        assert job["attempts"] == 1 and job_id in {j["id"] for j in client.get("/ingest-jobs").json()}
        hits = client.post("/collections/handbook/search", json={"query": "when is lunch served"}).json()["hits"]
        assert hits[0]["uri"] == "guide.md" and hits[0]["metadata"]["upload_job"] == job_id
    with live.client("b") as other:
        assert other.get(f"/ingest-jobs/{job_id}").status_code == 404
        assert job_id not in {j["id"] for j in other.get("/ingest-jobs").json()}
        assert "guide.md" not in other.post("/collections/handbook/search",
                                            json={"query": "when is lunch served"}).text


def test_an_uploaded_archive_and_a_damaged_pdf_report_per_member_errors_and_warnings(live: Any) -> None:
    """Files in an upload are read by what they are: a zip member by member (a bad member is that
    file's error, named ``bundle.zip!/...``), a PDF without its EOF marker with pypdf's warnings kept
    in the file's result instead of the server's log."""
    import io
    import zipfile

    from ragtune.testing.files import pdf_bytes, text_page

    bundle = io.BytesIO()
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.writestr("notes/desk.md", "# Desks\n\nHot desks are booked in the app by nine.")
        archive.writestr("notes/firmware.bin", b"\x7fELF\x00\x01\x02" * 40)
    damaged = pdf_bytes([text_page("The library closes at six on Fridays")]).replace(b"%%EOF", b"")
    files = [("files", ("bundle.zip", bundle.getvalue())), ("files", ("hours.pdf", damaged))]
    with live.client("a_ingest") as client:
        r = client.post("/collections/handbook/documents", files=files, data={"acl": "a"})
        assert r.status_code == 202, r.text
        job = client.get(f"/ingest-jobs/{r.json()['id']}", params={"wait": 30}).json()
    by_name = {f["name"]: f for f in job["files"]}
    assert by_name["bundle.zip"]["status"] == "ingested" and by_name["bundle.zip"]["documents"] == 1
    assert [e["source"] for e in by_name["bundle.zip"]["errors"]] == ["bundle.zip!/notes/firmware.bin"]
    # (pypdf cannot read this one at all: its warnings still say why, under its name)
    assert any("EOF" in w["message"] and w["source"] == "hours.pdf" for w in by_name["hours.pdf"]["warnings"]), \
        by_name["hours.pdf"]


def test_upload_limits(live: Any) -> None:
    limit = live.settings.server.max_upload_bytes
    with live.client("admin") as client:
        r = client.post("/collections/handbook/documents", content=_multipart("huge.txt", limit + 1),
                        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
        assert r.status_code == 413 and r.json()["limit"] == "max_upload_bytes"
        r = client.post("/collections/handbook/documents", content=b"{}", headers={"Content-Type": "application/json"})
        assert r.status_code == 415 and r.json()["code"] == "unsupported_media_type"
        r = client.post("/collections/handbook/documents", data={"acl": "a"}, files={})
        assert r.status_code in (400, 415)
        r = client.post("/collections/handbook/documents", files={"files": ("x.md", b"# x")},
                        data={"metadata": "[1, 2]"})
        assert r.status_code == 400 and "JSON object" in r.json()["detail"]
    assert not any(Path(live.settings.data_dir, "uploads").glob("incoming-*"))


def test_a_job_interrupted_by_a_restart_is_resumed(live: Any, tmp_path: Path) -> None:
    """A job left 'running' by a process that died (its lock is gone) is run again by the next
    server; a job whose files are gone is marked failed; nothing is half-applied."""
    store = JobStore(live.engine.db, tmp_path)
    folder = tmp_path / "incoming-crashed"
    folder.mkdir()
    (folder / "0000-notes.md").write_text("# Notes\n\nThe library lends each reader five books at a time.")
    files = [UploadedFile("notes.md", "0000-notes.md", 60)]
    principal = Principal(id="key:crashed", admin=True)
    resumable = store.create(collection="handbook", principal=principal, acl=(), metadata={}, folder=folder,
                             files=files)
    store.start(resumable.id)  # running, attempt 1 ... and then the process died
    gone = store.create(collection="handbook", principal=principal, acl=(), metadata={},
                        folder=tmp_path / "incoming-vanished", files=[UploadedFile("lost.md", "0000-lost.md", 9)])
    store.start(gone.id)
    # the module's server is alive and polling: it resumes them as a restarted server would
    live.app.state.ragtune.worker.wake()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        a, b = store.get(resumable.id), store.get(gone.id)
        if a.done and b.done:
            break
        time.sleep(0.2)
    assert a.status == "succeeded" and a.attempts == 2 and a.report and a.report["added"] == 1
    assert b.status == "failed" and "files are gone" in (b.error or "")
    assert not folder.exists()
    with live.client("admin") as client:
        hits = client.post("/collections/handbook/search", json={"query": "how many books can a reader borrow"})
        assert hits.json()["hits"][0]["uri"] == "notes.md"


def test_graceful_shutdown_finishes_in_flight_requests(engine: Any, server_settings: Any) -> None:
    """A request in flight when the server is told to stop still gets its whole response."""
    import psycopg

    from ragtune.server.jobs import _LOCK_NS

    app = create_app(engine, server_settings, auth=False, start_worker=False)
    folder = Path(server_settings.data_dir) / "uploads" / "incoming-shutdown"
    folder.mkdir(parents=True, exist_ok=True)
    job = JobStore(engine.db, folder.parent).create(collection="handbook", principal=Principal("local", admin=True),
                                                    acl=(), metadata={}, folder=folder, files=[])
    results: dict[str, Any] = {}
    # holding the job's lock keeps every worker off it: it stays queued while the request waits
    with psycopg.connect(engine.db.url, autocommit=True) as lock:
        lock.execute("SELECT pg_advisory_lock(%s, %s)", (_LOCK_NS, job.id))
        with running(app, server_settings) as url:

            def slow_request() -> None:  # long-polls the queued job for 2 s
                with httpx.Client(base_url=url, timeout=30) as client:
                    results["response"] = client.get(f"/ingest-jobs/{job.id}", params={"wait": 2})

            thread = threading.Thread(target=slow_request)
            thread.start()
            time.sleep(0.5)
            started = time.monotonic()
        # leaving `running` asked uvicorn to exit and waited for it
        stopped = time.monotonic() - started
        thread.join(10)
        lock.execute("UPDATE ingest_jobs SET status = 'failed', error = 'test' WHERE id = %s", (job.id,))
    assert stopped >= 1.0  # shutdown waited for the request
    response = results["response"]
    assert response.status_code == 200 and response.json()["id"] == job.id
