"""Connections and schema migrations for the one store: PostgreSQL + pgvector.

``Database.connect`` resolves the URL (``database_url`` setting, else the embedded server in the
data folder), applies pending migrations under an advisory lock (so two processes starting at
once do not race), and hands out pooled connections with the pgvector types registered.
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row

from ragtune.errors import MigrationError, StoreError

Conn = psycopg.Connection[DictRow]  # every pooled connection returns rows as dicts

_MIGRATION_LOCK = 7_203_115  # arbitrary advisory-lock key owned by ragtune migrations


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    folder = importlib.resources.files("ragtune.store") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d+)_(\w+)\.sql", entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


def _configure(conn: psycopg.Connection[DictRow]) -> None:
    from pgvector.psycopg import register_vector

    register_vector(conn)


class Database:
    """A small pool of connections to one database. Opened lazily, closed with ``close``."""

    def __init__(self, url: str, *, max_connections: int = 4) -> None:
        self.url = url
        self._max = max_connections
        self._pool: object | None = None

    @classmethod
    def connect(cls, url: str) -> Database:
        db = cls(url)
        db.migrate()
        return db

    @property
    def pool(self) -> Any:
        if self._pool is None:
            from psycopg_pool import ConnectionPool

            try:
                pool = ConnectionPool(
                    self.url, min_size=min(2, self._max), max_size=self._max, configure=_configure,
                    kwargs={"row_factory": dict_row}, open=False,
                )
                pool.open(wait=True, timeout=30)
            except Exception as exc:
                raise StoreError(f"cannot connect to PostgreSQL at {_safe(self.url)}: {exc}") from exc
            self._pool = pool
        return self._pool

    @contextmanager
    def connection(self) -> Iterator[Conn]:
        with self.pool.connection() as conn:
            yield conn

    @contextmanager
    def transaction(self) -> Iterator[Conn]:
        """One transaction: committed on success, rolled back on any exception."""
        with self.connection() as conn, conn.transaction():
            yield conn

    @contextmanager
    def snapshot(self) -> Iterator[Conn]:
        """A read-only REPEATABLE READ transaction: every statement sees the same committed state."""
        with self.connection() as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    def migrate(self) -> list[int]:
        """Apply pending migrations; returns the versions applied."""
        applied: list[int] = []
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
                try:
                    conn.execute(
                        "CREATE TABLE IF NOT EXISTS schema_migrations ("
                        " version int PRIMARY KEY, name text NOT NULL,"
                        " applied_at timestamptz NOT NULL DEFAULT now())"
                    )
                    done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
                    for migration in load_migrations():
                        if migration.version in done:
                            continue
                        try:
                            with conn.transaction():
                                conn.execute(migration.sql.encode())
                                conn.execute(
                                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                                    (migration.version, migration.name),
                                )
                        except psycopg.Error as exc:
                            raise MigrationError(
                                f"migration {migration.version}_{migration.name} failed: {exc}"
                            ) from exc
                        applied.append(migration.version)
                finally:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
        except psycopg.OperationalError as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {_safe(self.url)}: {exc}") from exc
        return applied

    def schema_version(self) -> int:
        with self.connection() as conn:
            row = conn.execute("SELECT coalesce(max(version), 0) AS v FROM schema_migrations").fetchone()
            return int(row["v"]) if row else 0

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()  # type: ignore[attr-defined]
            self._pool = None


def resolve_database_url(database_url: str | None, data_dir: Path) -> str:
    """The external server when configured, else the embedded one (started if needed)."""
    if database_url:
        return database_url
    from ragtune.store.server import EmbeddedPostgres

    return EmbeddedPostgres(data_dir).start()


def _safe(url: str) -> str:
    return re.sub(r"://([^:@/]+):[^@]*@", r"://\1:***@", url)
