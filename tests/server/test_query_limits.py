"""Expensive queries are bounded (issue 14, item 5): filters are capped in size on every path, and a
search whose client goes away stops running in PostgreSQL (a real server, a real slow query)."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from ragtune.errors import LimitError
from tests.server.conftest import running

SLOW_QUERY = "%metadata @>%"  # the statements of a search with a metadata filter


def _many_filters(n: int) -> dict[str, str]:
    return {f"key{i}": f"value{i}" for i in range(n)}


def test_filters_are_capped_everywhere(live: Any) -> None:
    settings = live.settings
    with live.client("admin") as admin:
        started = time.monotonic()
        r = admin.post("/collections/handbook/search", json={"query": "budget", "filters": _many_filters(5000)})
        assert r.status_code == 400 and r.json()["code"] == "limit_exceeded" and r.json()["limit"] == "max_filters"
        assert time.monotonic() - started < 5  # refused before PostgreSQL plans anything
        r = admin.post("/collections/handbook/search",
                       json={"query": "budget", "filters": {"team": [f"t{i}" for i in range(300)]}})
        assert r.status_code == 400 and r.json()["limit"] == "max_filter_values"
        r = admin.post("/collections/handbook/ask", json={"question": "budget?", "generator": "extractive",
                                                          "filters": _many_filters(settings.retrieval.max_filters + 1)})
        assert r.status_code == 400 and r.json()["limit"] == "max_filters"
        r = admin.post("/v1/chat/completions", json={"model": "handbook", "filters": _many_filters(100),
                                                     "messages": [{"role": "user", "content": "budget?"}]})
        assert r.status_code == 400
        ok = admin.post("/collections/handbook/search",
                        json={"query": "budget", "filters": _many_filters(settings.retrieval.max_filters - 1)})
        assert ok.status_code == 200
    with pytest.raises(LimitError, match="max_filters"):
        live.engine.search("budget", collection="handbook", filters=_many_filters(settings.retrieval.max_filters + 1))


def _active(engine: Any) -> list[dict[str, Any]]:
    with engine.db.connection() as conn:
        return list(conn.execute(
            "SELECT pid, state, now() - query_start AS running FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'active'"
            " AND query LIKE %s", (SLOW_QUERY,)).fetchall())


@pytest.mark.slow
def test_a_search_stops_in_postgres_when_its_client_goes_away(engine: Any, server_settings: Any,
                                                              keys: dict[str, str]) -> None:
    """The slow query is one waiting for a lock another transaction holds, which PostgreSQL can stop at
    once. (A query with thousands of filters spends its time in the planner, which looks for a cancel
    only now and then: measured, 10.3 s of planning for 6,000 keys, stopped 6.8 s after the cancel;
    ``max_filters`` keeps planning to milliseconds.)"""
    import psycopg

    from ragtune.server.app import create_app

    settings = server_settings.replace(statement_timeout=300)  # only the client's leaving can stop it
    app = create_app(engine, settings, auth=True, start_worker=False)
    outcome: dict[str, Any] = {}

    def impatient_client(url: str) -> None:
        try:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys['admin']}"},
                              timeout=httpx.Timeout(30, read=3)) as client:
                outcome["status"] = client.post("/collections/handbook/search",
                                                json={"query": "budget", "filters": {"team": "a"}}).status_code
        except httpx.ReadTimeout:
            outcome["timed_out"] = time.monotonic()

    with running(app, settings) as url, psycopg.connect(settings.database_url) as blocker:
        blocker.execute("LOCK TABLE chunks IN ACCESS EXCLUSIVE MODE")  # held until the end of the test
        thread = threading.Thread(target=impatient_client, args=(url,))
        thread.start()
        deadline = time.monotonic() + 10
        while not _active(engine) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _active(engine), ("the search never started", outcome)
        thread.join(60)
        assert "timed_out" in outcome, outcome  # the client gave up and closed its connection
        while _active(engine) and time.monotonic() < outcome["timed_out"] + 20:
            time.sleep(0.05)
        stopped_after = time.monotonic() - outcome["timed_out"]
        assert not _active(engine), "the query kept running after its client left"
        assert stopped_after < 2, stopped_after
        blocker.rollback()
        # the server is fine afterwards, and the connection it used went back to the pool in order
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys['admin']}"}) as client:
            assert client.post("/collections/handbook/search", json={"query": "budget"}).status_code == 200
