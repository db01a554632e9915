"""A real restart: ``ragtune serve`` is killed (SIGKILL) in the middle of an ingest job, a new
server process resumes the job, and the collection ends up whole: every record once, every
document with its chunks, the BM25 statistics exact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from ragtune.testing.serve import start_serve
from tests.helpers import check_index_consistency

pytestmark = pytest.mark.slow
RECORDS = 1000


@contextmanager
def serve_process(settings: Any) -> Iterator[tuple[subprocess.Popen[str], str]]:
    env = {**os.environ, "RAGTUNE_DATABASE_URL": settings.database_url, "RAGTUNE_DATA_DIR": str(settings.data_dir),
           "RAGTUNE_CACHE_DIR": str(settings.cache_dir), "RAGTUNE_GENERATION_GENERATOR": "extractive",
           "RAGTUNE_SERVER_RATE_LIMIT": "0"}
    proc, url = start_serve(env, "--auth", "--log-level", "warning")
    try:
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(60)


def test_a_killed_server_resumes_its_ingest_job(engine: Any, server_settings: Any, keys: dict[str, str]) -> None:
    records = "\n".join(json.dumps({"text": f"Record {i} says that shelf {i} holds volume {i * 7} of the "
                                            f"archive, catalogued under code K{i:04d}.", "n": i})
                        for i in range(RECORDS))
    headers = {"Authorization": f"Bearer {keys['admin']}"}
    with serve_process(server_settings) as (proc, url), httpx.Client(base_url=url, headers=headers,
                                                                      timeout=60) as client:
        r = client.post("/collections/archive/documents", files={"files": ("archive.jsonl", records.encode())})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # kill it once part of the job is written, not all
            job = client.get(f"/ingest-jobs/{job_id}").json()
            if job["progress"].get("documents", 0) > 0 or job["status"] in ("succeeded", "failed"):
                break
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert job["status"] == "running", job
    with engine.db.connection() as conn:
        written = conn.execute("SELECT count(*) AS n FROM documents d JOIN collections c ON c.id = d.collection_id"
                               " WHERE c.name = 'archive'").fetchone()["n"]
    assert 0 < written < RECORDS, written  # interrupted part-way: whole batches only
    check_index_consistency(engine)

    with serve_process(server_settings) as (_, url), httpx.Client(base_url=url, headers=headers,
                                                                   timeout=90) as client:
        job = client.get(f"/ingest-jobs/{job_id}", params={"wait": 60}).json()
        for _ in range(4):
            if job["status"] in ("succeeded", "failed"):
                break
            job = client.get(f"/ingest-jobs/{job_id}", params={"wait": 60}).json()
        assert job["status"] == "succeeded" and job["attempts"] == 2, job
        assert job["report"]["unchanged"] == written and job["report"]["added"] == RECORDS - written
        docs = client.get("/collections/archive/documents", params={"limit": 1000}).json()
    assert len(docs) == RECORDS and all(d["chunk_count"] == 1 for d in docs)
    check_index_consistency(engine)
