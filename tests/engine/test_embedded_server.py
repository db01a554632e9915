"""The embedded server's own life cycle, on a real cluster in a fresh folder."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from ragtune.store.server import EmbeddedPostgres, shared_buffers_mb


@pytest.fixture
def folder() -> Iterator[Path]:
    # Outside pytest's basetemp, for the same reason as the session server (see conftest).
    path = Path(tempfile.mkdtemp(prefix="ragtune-test-srv-"))
    try:
        yield path
    finally:
        EmbeddedPostgres(path).stop()
        shutil.rmtree(path, ignore_errors=True)


def buffers_mb(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT setting::bigint * 8 / 1024 FROM pg_settings WHERE name = 'shared_buffers'").fetchone()
    assert row is not None
    return int(row[0])


def test_new_cluster_is_sized_once_and_a_running_one_is_never_restarted(folder: Path) -> None:
    server = EmbeddedPostgres(folder)
    url = server.start()
    assert buffers_mb(url) == shared_buffers_mb()

    # A user's own choice is kept, and starting again while a client is connected does not
    # restart the server under it.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET shared_buffers = '160MB'")
    assert server.stop()
    assert not server.status().running
    url = server.start()  # the same process again: the package's cached handle must not fool us
    assert buffers_mb(url) == 160
    with psycopg.connect(url) as client:
        pid = client.execute("SELECT pg_backend_pid()").fetchone()
        assert EmbeddedPostgres(folder).start() == url
        assert client.execute("SELECT pg_backend_pid()").fetchone() == pid
