"""Losing the database and getting it back, on real servers: the embedded PostgreSQL of a fresh
folder SIGKILLed under a working engine, a cluster that cannot start, an external server that is
stopped; and ``statement_timeout`` on every pooled connection (migrations and maintenance exempt),
with the cancel hook for whoever stops the work of a request that went away."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from ragtune.engine import Ragtune
from ragtune.errors import ConfigError, DatabaseUnavailableError, QueryTimeoutError
from ragtune.models import LoadedDocument
from ragtune.settings import Settings
from ragtune.store.database import Database, load_migrations
from ragtune.store.server import EmbeddedPostgres
from tests.recovery_helpers import RecoveryStopper, embedded_folder, kill_postgres, postmaster_pid, starts_logged

DOCS = [LoadedDocument(uri="office.md", text="The office opens at nine in the morning on weekdays."),
        LoadedDocument(uri="aurora.md", text="Project Aurora has a budget of four million euros.")]


@pytest.fixture
def folder() -> Iterator[Path]:
    with embedded_folder() as path:
        yield path


@pytest.fixture
def crash_rt(folder: Path, embedder: Any, cache_dir: Path) -> Iterator[Ragtune]:
    """An engine on the embedded server of its own folder, with two documents."""
    rt = Ragtune(Settings.of(data_dir=folder, cache_dir=cache_dir, database_wait=20), embedder=embedder)
    rt.ingest_documents(DOCS, collection="kb")
    try:
        yield rt
    finally:
        rt.close()


def uris(rt: Ragtune, query: str) -> list[str]:
    return [h.uri for h in rt.search(query, collection="kb", top_k=2).hits]


# -- losing the embedded server ------------------------------------------------------------------
def test_a_search_after_the_server_is_killed_waits_for_its_restart_and_succeeds(crash_rt: Ragtune,
                                                                                 folder: Path) -> None:
    before = uris(crash_rt, "when does the office open")
    assert before[0] == "office.md"
    killed = kill_postgres(folder)
    started = time.monotonic()
    assert uris(crash_rt, "when does the office open") == before  # the retry, after the restart
    took = time.monotonic() - started
    assert postmaster_pid(folder) not in (None, killed)  # the engine restarted the server itself
    assert took < 15, f"the search took {took:.1f} s"
    log = EmbeddedPostgres(folder).log_file.read_text()
    assert "automatic recovery in progress" in log  # a real crash recovery, not a clean start


@pytest.mark.slow
@pytest.mark.parametrize("read", ["search", "collections", "collection", "documents", "document"])
def test_every_read_of_the_engine_survives_a_kill(crash_rt: Ragtune, folder: Path, read: str) -> None:
    calls = {
        "search": lambda: uris(crash_rt, "budget of project aurora")[0] == "aurora.md",
        "collections": lambda: [c.name for c in crash_rt.collections()] == ["kb"],
        "collection": lambda: crash_rt.collection("kb").n_chunks == 2,
        "documents": lambda: sorted(d.uri for d in crash_rt.documents(collection="kb")) == ["aurora.md",
                                                                                          "office.md"],
        "document": lambda: crash_rt.document("office.md", collection="kb")[0].uri == "office.md",
    }
    assert calls[read]()
    kill_postgres(folder)
    assert calls[read]()


def test_starts_after_a_crash_are_single_flight_and_say_they_wait_for_crash_recovery(folder: Path) -> None:
    server = EmbeddedPostgres(folder)
    url = server.start()
    kill_postgres(folder)
    starts = starts_logged(folder)
    heard: list[str] = []
    results: list[Any] = []

    def start() -> None:
        try:
            results.append(EmbeddedPostgres(folder).start(on_wait=heard.append))
        except Exception as exc:  # reported by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [url, url, url]
    assert starts_logged(folder) == starts + 1  # one of the three started it, the others waited
    assert "crash recovery" in heard
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_cluster_that_cannot_start_is_one_short_line_naming_the_folder_and_the_log(folder: Path) -> None:
    server = EmbeddedPostgres(folder)
    server.start()
    server.stop()
    conf = server.pgdata / "postgresql.conf"
    original = conf.read_text()
    conf.write_text(original + "\nbogus_setting_for_the_test = 1\n")
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError) as caught:
        server.start()
    message = str(caught.value)
    assert time.monotonic() - started < 15
    assert "\n" not in message and len(message) < 400, message
    assert str(folder) in message and str(server.log_file) in message
    assert 'postgresql.conf" contains errors' in message  # PostgreSQL's own FATAL line
    assert caught.value.log_file == str(server.log_file)
    assert "bogus_setting_for_the_test" in caught.value.log_tail  # the log is kept, out of the message
    conf.write_text(original)
    assert server.start()


def test_a_start_that_cannot_get_its_turn_gives_up_after_database_start_timeout(folder: Path) -> None:
    import fcntl

    EmbeddedPostgres(folder).start()
    heard: list[str] = []
    with open(folder / "pg.start.lock", "a+b") as held:  # another process busy starting the server
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailableError, match="database_start_timeout") as caught:
            EmbeddedPostgres(folder, start_timeout=0.5).start(on_wait=heard.append)
        assert time.monotonic() - started < 3
    assert heard == ["startup"] and caught.value.retry_after > 0
    assert EmbeddedPostgres(folder, start_timeout=0.5).start()  # its turn now


# -- an external server that goes away ----------------------------------------------------------
def test_an_external_database_that_is_down_fails_fast_and_is_used_again_when_back(folder: Path) -> None:
    server = EmbeddedPostgres(folder)
    url = server.start()
    db = Database.connect(url, wait=0.5)  # as with database_url: nothing to restart, only to wait for
    try:
        with db.connection() as conn:
            conn.execute("SELECT 1")
        server.stop()
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailableError) as caught, db.transaction() as conn:  # a write: never retried
            conn.execute("SELECT 1")
        assert time.monotonic() - started < 1.0
        assert caught.value.retry_after > 0
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailableError, match="database_wait"):
            db.read(lambda: db.schema_version())  # a read waits database_wait, then gives up
        assert 0.4 < time.monotonic() - started < 3.0
        server.start()
        assert db.read(lambda: db.schema_version()) == max(m.version for m in load_migrations())
    finally:
        db.close()


def test_a_pool_that_stays_busy_is_a_prompt_503_not_a_hang(database_url: str) -> None:
    db = Database(database_url, max_connections=1, wait=0.3)
    try:
        with db.connection():  # the only connection, held
            for attempt in (lambda: db.connection().__enter__(), lambda: db.read(db.schema_version)):
                started = time.monotonic()
                with pytest.raises(DatabaseUnavailableError, match="stayed busy") as caught:
                    attempt()
                assert 0.25 < time.monotonic() - started < 1.0  # database_wait, once: a read adds no retry
                assert caught.value.retry_after == 1.0
        assert db.schema_version() > 0
    finally:
        db.close()


def test_pooled_connections_whose_backends_died_are_replaced_without_an_error(database_url: str,
                                                                             pg_admin_url: str) -> None:
    db = Database(database_url)
    try:
        with db.connection() as a, db.connection() as b:
            old = {a.info.backend_pid, b.info.backend_pid}
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (list(old),))
            while admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)",
                                (list(old),)).fetchone() != (0,):
                time.sleep(0.01)
        for _ in range(4):
            with db.connection() as conn:
                assert conn.execute("SELECT 1 AS one").fetchone() == {"one": 1}
                assert conn.info.backend_pid not in old
    finally:
        db.close()


# -- statement_timeout ----------------------------------------------------------------------------
def test_statement_timeout_stops_a_slow_statement_and_the_connection_stays_usable(database_url: str) -> None:
    db = Database(database_url, statement_timeout=0.05)
    try:
        with db.connection() as conn:
            assert conn.execute("SHOW statement_timeout").fetchone() == {"statement_timeout": "50ms"}
        for use in (db.connection, db.transaction, db.snapshot):
            started = time.monotonic()
            with pytest.raises(QueryTimeoutError) as caught, use() as conn:
                conn.execute("SELECT pg_sleep(1)")
            assert time.monotonic() - started < 0.8
            assert caught.value.code == "query_timeout" and "statement_timeout=0.05" in str(caught.value)
            with db.connection() as conn:
                assert conn.execute("SELECT 2 AS two").fetchone() == {"two": 2}
        with db.transaction(statement_timeout=0) as conn:  # maintenance is exempt
            conn.execute("SELECT pg_sleep(0.2)")
        with db.connection() as conn:  # and only for its own transaction
            assert conn.execute("SHOW statement_timeout").fetchone() == {"statement_timeout": "50ms"}
    finally:
        db.close()


def test_statement_timeout_zero_is_no_limit_and_other_url_options_are_kept(database_url: str) -> None:
    url = make_conninfo(database_url, options="-c application_name=kept_option")
    db = Database(url, statement_timeout=0)
    try:
        with db.connection() as conn:
            assert conn.execute("SHOW statement_timeout").fetchone() == {"statement_timeout": "0"}
            assert conn.execute("SHOW application_name").fetchone() == {"application_name": "kept_option"}
    finally:
        db.close()


def test_migrations_run_whatever_statement_timeout_says(pg_admin_url: str) -> None:
    name = f"t_mig_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        # 1 ms everywhere, from the URL too: creating the extension and the tables takes longer
        url = make_conninfo(pg_admin_url, dbname=name, options="-c statement_timeout=1")
        db = Database.connect(url, statement_timeout=0.001)
        db.close()
        with psycopg.connect(make_conninfo(pg_admin_url, dbname=name)) as conn:
            row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        assert row == (max(m.version for m in load_migrations()),)
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_search_held_up_past_statement_timeout_is_a_query_timeout(settings: Settings, embedder: Any,
                                                                    database_url: str) -> None:
    rt = Ragtune(settings.replace(statement_timeout=0.3), embedder=embedder)
    try:
        rt.ingest_documents(DOCS, collection="kb")  # creating the collection is exempt
        assert uris(rt, "office hours")
        with psycopg.connect(database_url) as locker:  # a long maintenance statement holding the table
            locker.execute("LOCK TABLE chunks IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            with pytest.raises(QueryTimeoutError):
                rt.search("office hours", collection="kb")
            assert time.monotonic() - started < 2
            locker.rollback()
        assert uris(rt, "office hours")[0] == "office.md"
    finally:
        rt.close()


@pytest.mark.parametrize(("name", "value", "ok"), [
    ("statement_timeout", "0", True), ("statement_timeout", "0.5", True), ("statement_timeout", "-1", False),
    ("database_wait", "0", False), ("database_wait", "2.5", True),
    ("database_start_timeout", "0", False), ("database_start_timeout", "600", True),
])
def test_database_settings_are_checked(name: str, value: str, ok: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"RAGTUNE_STORE_{name.upper()}", value)
    if ok:
        assert getattr(Settings.load().store, name) == float(value)
    else:
        with pytest.raises(ConfigError, match=name):
            Settings.load()


# -- the cancel hook ------------------------------------------------------------------------------
def test_a_cancel_scope_cancels_the_statement_its_operation_runs(database_url: str, pg_admin_url: str) -> None:
    db = Database(database_url, statement_timeout=0)
    scopes: queue.Queue[Any] = queue.Queue()
    outcome: list[BaseException | None] = []

    def operation() -> None:
        with db.cancel_scope() as scope:
            scopes.put(scope)
            try:
                with db.connection() as conn:
                    conn.execute("SELECT pg_sleep(10) /* cancel me */")
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)
            try:  # a cancelled operation gets no more statements
                with db.connection():
                    pass
            except psycopg.errors.QueryCanceled as exc:
                outcome.append(exc)

    worker = threading.Thread(target=operation)
    worker.start()
    try:
        scope = scopes.get(timeout=10)
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            while not admin.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s",
                                    ("%cancel me%",)).fetchone()[0]:
                time.sleep(0.01)
        started = time.monotonic()
        scope.cancel()
        worker.join(10)
        assert time.monotonic() - started < 2
        assert len(outcome) == 2 and all(isinstance(o, psycopg.errors.QueryCanceled) for o in outcome), outcome
        with db.connection() as conn:  # the connection went back to the pool in good order
            assert conn.execute("SELECT 3 AS three").fetchone() == {"three": 3}
    finally:
        worker.join(10)
        db.close()


@pytest.mark.slow
def test_a_crash_recovery_longer_than_pg_ctls_ten_seconds_is_waited_for(crash_rt: Ragtune, folder: Path) -> None:
    """The issue's case: a 12 s recovery outlasted the package's 10 s pg_ctl timeout. The startup
    process is held (SIGSTOP) to make the recovery last: first longer than a short
    database_start_timeout (a one-line error, the server left to recover), then 11 s more, which
    a second start waits through, adopting the recovering server."""
    kill_postgres(folder)
    with RecoveryStopper(folder) as stopper:
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailableError, match="did not finish crash recovery within 4 s") as caught:
            EmbeddedPostgres(folder, start_timeout=4).start()
        assert stopper.stopped is not None, "the recovery was over before it could be held"
        assert 3.5 < time.monotonic() - started < 8 and "\n" not in str(caught.value)
        heard: list[str] = []
        outcome: list[Any] = []
        waiting = threading.Thread(target=lambda: outcome.append(EmbeddedPostgres(folder).start(heard.append)))
        waiting.start()
        time.sleep(11)
        assert waiting.is_alive() and heard == ["crash recovery"]  # still waiting, and said why once
        stopper.release()
        waiting.join(60)
    assert outcome and outcome[0].startswith("postgresql://")
    print(f"a held recovery of {time.monotonic() - started:.1f} s was waited for")
    assert uris(crash_rt, "when does the office open")[0] == "office.md"
