"""The server when its database is lost: the embedded PostgreSQL of a fresh folder is SIGKILLed
under a running server (in-process, and a real ``ragtune serve``). ``/health`` says so (503 with
Retry-After) and the server restarts the database itself; requests get their answer (a read is
retried after the restart) or a 503 problem with Retry-After, never a 500, never a long hang. A
statement over ``statement_timeout`` is a 504 ``query_timeout`` problem."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from ragtune.engine import Ragtune
from ragtune.models import LoadedDocument
from ragtune.server.app import create_app
from ragtune.settings import Settings
from ragtune.testing.serve import start_serve
from tests.recovery_helpers import embedded_folder, kill_postgres, postmaster_pid
from tests.server.conftest import running

DOCS = [LoadedDocument(uri="office.md", text="The office opens at nine in the morning on weekdays."),
        LoadedDocument(uri="aurora.md", text="Project Aurora has a budget of four million euros.")]
SEARCH = {"query": "when does the office open", "top_k": 2, "mode": "hybrid"}


@pytest.fixture
def folder() -> Iterator[Path]:
    with embedded_folder() as path:
        yield path


@pytest.fixture
def served(folder: Path, embedder: Any, cache_dir: Path) -> Iterator[tuple[str, Ragtune]]:
    """A server (uvicorn in a thread) over an engine on the embedded server of its own folder."""
    settings = Settings.of(data_dir=folder, cache_dir=cache_dir, generator="extractive", server={"rate_limit": 0})
    rt = Ragtune(settings, embedder=embedder)
    rt.ingest_documents(DOCS, collection="kb")
    app = create_app(rt, settings, auth=False)
    try:
        with running(app, settings) as url:
            yield url, rt
    finally:
        rt.close()


def wait_healthy(client: httpx.Client, seconds: float = 30) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        r = client.get("/health")
        if r.status_code == 200:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"/health not 200 within {seconds} s: {r.status_code} {r.text}")


def check_unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert int(r.headers["Retry-After"]) >= 1
    assert r.json()["code"] == "database_unavailable"


def test_health_reports_the_lost_database_and_the_server_restarts_it(served: tuple[str, Ragtune],
                                                                    folder: Path) -> None:
    url, _rt = served
    with httpx.Client(base_url=url, timeout=30) as client:
        ok = client.get("/health")
        assert ok.status_code == 200 and ok.json()["status"] == "ok"
        killed = kill_postgres(folder)
        started = time.monotonic()
        down = client.get("/health")  # nothing has noticed the loss before this check
        assert time.monotonic() - started < 3.5
        check_unavailable(down)
        body = down.json()
        assert body["status"] == "unavailable" and body["database"] == "unavailable"
        assert str(folder) not in down.text  # /health serves no data: no paths, no addresses
        back = wait_healthy(client)
        assert postmaster_pid(folder) not in (None, killed)  # restarted by the server itself
        r = client.post("/collections/kb/search", json=SEARCH)
        assert r.status_code == 200, r.text
        assert r.json()["hits"][0]["uri"] == "office.md"
    print(f"health back {back:.2f} s after the first 503")


def test_the_server_restarts_a_lost_database_without_any_request(folder: Path, embedder: Any,
                                                                 cache_dir: Path) -> None:
    """No request and no health check after the kill: the ingest worker, which looks for jobs every
    2 s, finds the loss, and that starts the restart."""
    settings = Settings.of(data_dir=folder, cache_dir=cache_dir, generator="extractive", server={"rate_limit": 0})
    rt = Ragtune(settings, embedder=embedder)
    try:
        rt.ingest_documents(DOCS, collection="kb")
        with running(create_app(rt, settings, auth=False), settings) as url:
            killed = kill_postgres(folder)
            deadline = time.monotonic() + 20
            while postmaster_pid(folder) in (None, killed) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert postmaster_pid(folder) not in (None, killed), "the server did not restart its database"
            with httpx.Client(base_url=url, timeout=30) as client:
                assert client.post("/collections/kb/search", json=SEARCH).status_code == 200
    finally:
        rt.close()


def test_requests_right_after_a_kill_are_answered_or_refused_with_retry_after(served: tuple[str, Ragtune],
                                                                            folder: Path) -> None:
    url, _rt = served
    with httpx.Client(base_url=url, timeout=60) as client:
        assert client.post("/collections/kb/search", json=SEARCH).status_code == 200
        kill_postgres(folder)

        def call(i: int) -> tuple[int, float, httpx.Response]:
            started = time.monotonic()
            if i % 3 == 2:
                r = client.get("/collections/kb/documents")
            else:
                r = client.post("/collections/kb/search", json=SEARCH)
            return r.status_code, time.monotonic() - started, r

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(call, range(8)))
    for status, took, r in results:
        assert status in (200, 503), r.text  # never a 500
        if status == 503:
            check_unavailable(r)
        assert took < 15, f"{r.request.url} took {took:.1f} s"
    searches = [r for status, _, r in results if status == 200 and r.request.method == "POST"]
    assert searches and all(r.json()["hits"][0]["uri"] == "office.md" for r in searches)
    print("after a kill:", [(status, round(took, 2)) for status, took, _ in results])


def test_a_search_over_statement_timeout_is_a_504_problem(settings: Settings, embedder: Any,
                                                          database_url: str) -> None:
    settings = settings.replace(statement_timeout=0.3, server={"rate_limit": 0})
    rt = Ragtune(settings, embedder=embedder)
    try:
        rt.ingest_documents(DOCS, collection="kb")
        with running(create_app(rt, settings, auth=False, start_worker=False), settings) as url, \
                httpx.Client(base_url=url, timeout=30) as client, psycopg.connect(database_url) as locker:
            locker.execute("LOCK TABLE chunks IN ACCESS EXCLUSIVE MODE")  # a statement holding the table
            started = time.monotonic()
            r = client.post("/collections/kb/search", json=SEARCH)
            assert time.monotonic() - started < 3
            assert r.status_code == 504, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["code"] == "query_timeout" and "statement_timeout" in r.json()["detail"]
            locker.rollback()
            assert client.post("/collections/kb/search", json=SEARCH).status_code == 200
    finally:
        rt.close()


@pytest.mark.slow
def test_ragtune_serve_restarts_its_killed_database(folder: Path, embedder: Any, cache_dir: Path) -> None:
    with Ragtune(Settings(data_dir=folder, cache_dir=cache_dir), embedder=embedder) as rt:
        rt.ingest_documents(DOCS, collection="kb")
    env = {k: v for k, v in os.environ.items() if k != "RAGTUNE_DATABASE_URL"}
    env.update({"RAGTUNE_DATA_DIR": str(folder), "RAGTUNE_CACHE_DIR": str(cache_dir),
                "RAGTUNE_GENERATION_GENERATOR": "extractive", "RAGTUNE_SERVER_RATE_LIMIT": "0"})
    proc, url = start_serve(env, "--no-auth", "--log-level", "warning")
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            assert client.post("/collections/kb/search", json=SEARCH).status_code == 200
            killed = kill_postgres(folder)
            started = time.monotonic()
            r = client.post("/collections/kb/search", json=SEARCH)
            took = time.monotonic() - started
            assert r.status_code in (200, 503), r.text
            if r.status_code == 503:
                check_unavailable(r)
            else:
                assert r.json()["hits"][0]["uri"] == "office.md"
            assert took < 15
            wait_healthy(client)
            assert postmaster_pid(folder) not in (None, killed)
            assert client.post("/collections/kb/search", json=SEARCH).status_code == 200
        print(f"ragtune serve: search right after the kill {r.status_code} in {took:.2f} s")
    finally:
        proc.terminate()
        proc.wait(60)
        assert proc.stderr is not None
        proc.stderr.close()
