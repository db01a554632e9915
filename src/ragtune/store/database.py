"""Connections and schema migrations for the one store: PostgreSQL + pgvector.

``Database.from_settings`` resolves the URL (``database_url`` setting, else the embedded server in
the data folder), applies pending migrations under an advisory lock (so two processes starting at
once do not race), and hands out pooled connections with the pgvector types registered.

Losing the database. Errors that mean the server is gone (a broken connection, a refused connect,
"the database system is starting up") become ``DatabaseUnavailableError``; the pool they came from
is thrown away whole (its other connections died with the server, and its reconnect back-off would
make the first requests after a recovery wait seconds), and the next use opens a new one, after a
direct connect has shown the server answers, so while it is down every use fails in about a
millisecond instead of waiting for a pool timeout. With the embedded server a restart starts in the
background (single-flight); ``read(fn)`` runs an idempotent read and, when the database was lost,
waits up to ``wait`` seconds for it to come back and runs it once more. A pooled connection whose
server went away is noticed at checkout without a round trip: its socket turned readable (the
backend's goodbye), which a ``poll`` with no timeout sees (about a microsecond).

Every pooled connection starts with ``statement_timeout`` (the ``[store]`` setting); a statement it stops is a
``QueryTimeoutError``. Migrations and ``transaction(statement_timeout=0)`` are exempt.

Cancelling. ``cancel_scope()`` marks the database work of one operation (a context variable, so
it follows the operation into worker threads that copy the context, as FastAPI's do); its
``cancel()``, from any thread, cancels the statement running on the connection the operation holds
and makes its later checkouts fail. Both raise ``psycopg.errors.QueryCanceled``: not a
``RagtuneError``, because whoever cancelled decides what it means (a client that went away).
"""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
import re
import select
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row

from ragtune.errors import DatabaseUnavailableError, MigrationError, QueryTimeoutError, RagtuneError

if TYPE_CHECKING:
    from ragtune.settings import Settings
    from ragtune.store.server import EmbeddedPostgres, WaitCallback

Conn = psycopg.Connection[DictRow]  # every pooled connection returns rows as dicts
T = TypeVar("T")

log = logging.getLogger("ragtune.store")
# psycopg_pool warns on stderr about every connection a lost server broke ("discarding closed
# connection", "error connecting"): this module turns that loss into DatabaseUnavailableError and a
# restart, so those lines would only repeat it, and a CLI command would print them above its results.
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

_MIGRATION_LOCK = 7_203_115  # arbitrary advisory-lock key owned by ragtune migrations
# SQLSTATEs that mean the server, not the statement, failed: connection exceptions (class 08),
# admin or crash shutdown, and "cannot connect now" (starting up, recovering, shutting down).
_LOST_STATES = ("57P01", "57P02", "57P03")
_RESTART_BACKOFF_S = 2.0  # after a failed restart (which already tried a few times), the next one waits this long


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


@dataclass
class CancelScope:
    """The database work of one operation; see ``Database.cancel_scope``."""

    cancelled: bool = False
    _conns: list[Conn] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def cancel(self, timeout: float = 5.0) -> None:
        """Cancel the running statement (blocking, up to ``timeout`` s: call it from a worker thread)."""
        # Under the lock: a connection is detached (and only then returned to the pool) after any
        # cancel sent to it finished, so a cancel never reaches another operation's statement.
        with self._lock:
            self.cancelled = True
            for conn in self._conns:
                with contextlib.suppress(psycopg.Error):
                    conn.cancel_safe(timeout=timeout)

    def _attach(self, conn: Conn) -> None:
        with self._lock:
            if self.cancelled:
                raise psycopg.errors.QueryCanceled("canceled by the caller")
            self._conns.append(conn)

    def _detach(self, conn: Conn) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._conns.remove(conn)


_cancel_scope: ContextVar[CancelScope | None] = ContextVar("ragtune_cancel_scope", default=None)


class Database:
    """A small pool of connections to one database. Opened lazily, closed with ``close``.

    ``statement_timeout`` (seconds, 0 none) applies to every pooled connection; ``wait`` bounds how
    long a checkout waits for a connection and how long ``read`` waits for a lost database;
    ``server`` is the embedded server to restart when the database is lost (None: an external
    server, which we only wait for).
    """

    def __init__(self, url: str, *, max_connections: int = 4, statement_timeout: float = 30.0,
                 wait: float = 10.0, server: EmbeddedPostgres | None = None) -> None:
        self.url = url
        self._max = max_connections
        self.statement_timeout = statement_timeout
        self.wait = wait
        self.server = server
        self._pool: Any = None
        self._pool_lock = threading.Lock()
        self._restart_lock = threading.Lock()
        self._restarting: threading.Thread | None = None
        self._restart_error: RagtuneError | None = None
        self._restart_failed_at = 0.0

    @classmethod
    def connect(cls, url: str, **options: Any) -> Database:
        db = cls(url, **options)
        db.migrate()
        return db

    @classmethod
    def from_settings(cls, settings: Settings, *, on_wait: WaitCallback | None = None) -> Database:
        """The configured database, migrated: ``database_url``, else the embedded server in
        ``data_dir`` (started if needed, waiting through a crash recovery; ``on_wait`` hears once
        why it waits)."""
        server = None
        url = settings.database_url
        if not url:
            from ragtune.store.server import EmbeddedPostgres

            server = EmbeddedPostgres(settings.data_dir, start_timeout=settings.store.database_start_timeout)
            url = server.start(on_wait)
        return cls.connect(url, statement_timeout=settings.store.statement_timeout, wait=settings.store.database_wait,
                           server=server)

    # -- the pool ------------------------------------------------------------------------------
    @property
    def pool(self) -> Any:
        pool = self._pool
        if pool is None:
            with self._pool_lock:
                if self._pool is None:
                    self._pool = self._open_pool()
                pool = self._pool
        return pool

    def _open_pool(self) -> Any:
        from psycopg_pool import ConnectionPool

        # Fail fast when the server is down: filling a pool would wait out its timeout instead.
        self._probe()
        pool = ConnectionPool(
            self.url, min_size=min(2, self._max), max_size=self._max, configure=_configure,
            kwargs=self._connect_kwargs(), open=False, timeout=self.wait, name="ragtune",
        )
        try:
            pool.open(wait=True, timeout=max(self.wait, 2.0))
        except psycopg.Error as exc:
            pool.close()
            raise DatabaseUnavailableError(f"cannot connect to PostgreSQL at {_safe(self.url)}: {_first(exc)}",
                                           retry_after=self._retry_after()) from exc
        return pool

    def _connect_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"row_factory": dict_row}
        params = conninfo_to_dict(self.url)
        if "connect_timeout" not in params:
            kwargs["connect_timeout"] = 5  # a hung server must not hold a checkout forever
        if self.statement_timeout > 0:
            # A startup option: no round trip per connection or per checkout. Appended to any
            # options in the URL, so ours wins for statement_timeout and theirs stay.
            ms = max(1, round(self.statement_timeout * 1000))
            kwargs["options"] = f"{params.get('options') or ''} -c statement_timeout={ms}".strip()
        return kwargs

    def _discard(self, pool: Any) -> None:
        """Throw away a pool whose server went away, and bring the server back (embedded only)."""
        with self._pool_lock:
            if self._pool is not pool:
                return  # another thread did it already
            self._pool = None
        # Closing waits for its workers; requests must not. Connections still checked out are
        # closed when they come back.
        threading.Thread(target=pool.close, kwargs={"timeout": 1.0}, name="ragtune-pool-close", daemon=True).start()
        self._start_restart()

    def _checkout(self) -> tuple[Any, Conn]:
        from psycopg_pool import PoolClosed, PoolTimeout

        for _ in range(3):
            pool = self.pool
            try:
                conn = pool.getconn(timeout=self.wait)
            except PoolClosed:
                continue  # discarded by another thread after a loss: take the new one
            except PoolTimeout as exc:
                try:
                    self._probe()
                except DatabaseUnavailableError:
                    self._discard(pool)
                    raise
                raise DatabaseUnavailableError(
                    f"all {self._max} connections to PostgreSQL stayed busy for {self.wait:g} s (database_wait)",
                    retry_after=1.0) from exc
            if not _stale(conn):
                return pool, conn
            pool.putconn(conn)
            self._discard(pool)
        raise DatabaseUnavailableError(f"lost the connection to PostgreSQL at {_safe(self.url)}",
                                       retry_after=self._retry_after())

    # -- connections and transactions ----------------------------------------------------------
    @contextmanager
    def connection(self) -> Iterator[Conn]:
        scope = _cancel_scope.get()
        if scope is not None and scope.cancelled:
            raise psycopg.errors.QueryCanceled("canceled by the caller")
        pool, conn = self._checkout()
        try:
            if scope is not None:
                scope._attach(conn)
            with conn:  # commits the implicit transaction of a non-autocommit use, rolls back on error
                yield conn
        except psycopg.errors.QueryCanceled as exc:
            if scope is not None and scope.cancelled:
                raise
            raise self._timeout(exc) from exc
        except psycopg.OperationalError as exc:
            if not _lost(exc, conn):
                raise
            self._discard(pool)
            raise DatabaseUnavailableError(f"lost the connection to PostgreSQL at {_safe(self.url)}: {_first(exc)}",
                                           retry_after=self._retry_after()) from exc
        finally:
            if scope is not None:
                scope._detach(conn)
            pool.putconn(conn)

    @contextmanager
    def transaction(self, *, statement_timeout: float | None = None) -> Iterator[Conn]:
        """One transaction: committed on success, rolled back on any exception. ``statement_timeout``
        overrides the setting for this transaction (0: none, for maintenance such as index builds)."""
        with self.connection() as conn, conn.transaction():
            if statement_timeout is not None:
                ms = max(1, round(statement_timeout * 1000)) if statement_timeout > 0 else 0
                conn.execute(f"SET LOCAL statement_timeout = {int(ms)}")
            yield conn

    @contextmanager
    def autocommitted(self) -> Iterator[Conn]:
        """A connection on which each statement is a transaction of its own: one round trip for
        a write of one statement, where ``transaction()`` adds a BEGIN and a COMMIT."""
        with self.connection() as conn:
            conn.autocommit = True
            try:
                yield conn
            finally:
                conn.autocommit = False

    @contextmanager
    def snapshot(self) -> Iterator[Conn]:
        """A read-only REPEATABLE READ transaction: every statement sees the same committed state."""
        with self.connection() as conn:
            # psycopg has just begun the transaction itself: a second BEGIN made PostgreSQL log a
            # warning on every search ("there is already a transaction in progress"), so the
            # server's log grew with the traffic. SET TRANSACTION sets the same on the open one.
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    @staticmethod
    @contextmanager
    def cancel_scope() -> Iterator[CancelScope]:
        """Mark the database work done inside as one operation that ``scope.cancel()`` can stop.

        For the server: enter it around a request, and when the client goes away call
        ``await anyio.to_thread.run_sync(scope.cancel)``; the request's statement fails with
        ``psycopg.errors.QueryCanceled`` and its connection goes back to the pool in good order.
        """
        scope = CancelScope()
        token = _cancel_scope.set(scope)
        try:
            yield scope
        finally:
            _cancel_scope.reset(token)

    # -- losing the database -------------------------------------------------------------------
    def read(self, fn: Callable[[], T]) -> T:
        """Run an idempotent read; when the database was lost, wait for it (what is left of ``wait``
        seconds) and run ``fn`` once more. Only for reads: a write may have committed before the
        loss. A pool that stayed busy for ``wait`` seconds has no time left: no retry adds load."""
        started = time.monotonic()
        try:
            return fn()
        except DatabaseUnavailableError:
            left = self.wait - (time.monotonic() - started)
            if left <= 0.05:
                raise
            self.wait_until_available(left)
            return fn()

    def wait_until_available(self, timeout: float | None = None) -> None:
        """Block until the database accepts connections (restarting the embedded server in the
        background), for up to ``timeout`` (default ``wait``) seconds."""
        timeout = self.wait if timeout is None else timeout
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            self._start_restart()
            try:
                self._probe()
                return
            except DatabaseUnavailableError as exc:
                last: RagtuneError = self._restart_error or exc
            left = deadline - time.monotonic()
            if left <= 0:
                raise DatabaseUnavailableError(f"{last} (waited {timeout:.1f} s, database_wait)",
                                               retry_after=self._retry_after()) from last
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.5)

    def ping(self) -> None:
        """Raise ``DatabaseUnavailableError`` unless the database answers now (a fresh connection
        and ``SELECT 1``, within about 2 s); a failure starts the embedded server's restart."""
        try:
            self._probe()
        except DatabaseUnavailableError:
            pool = self._pool
            if pool is not None:
                self._discard(pool)
            else:
                self._start_restart()
            raise

    def _probe(self) -> None:
        try:
            with psycopg.connect(self.url, connect_timeout=2, autocommit=True) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailableError(f"PostgreSQL at {_safe(self.url)} is not accepting connections: "
                                           f"{_first(exc)}", retry_after=self._retry_after()) from exc

    def _start_restart(self) -> None:
        """Restart the embedded server in a background thread, unless one is running already."""
        if self.server is None:
            return
        with self._restart_lock:
            if self._restarting is not None and self._restarting.is_alive():
                return
            if time.monotonic() - self._restart_failed_at < _RESTART_BACKOFF_S:
                return
            self._restarting = threading.Thread(target=self._restart, name="ragtune-db-restart", daemon=True)
            self._restarting.start()

    def _restart(self) -> None:
        assert self.server is not None
        try:
            self.server.start()  # no-op when it runs; waits through crash recovery otherwise
            self._restart_error = None
        except RagtuneError as exc:
            self._restart_error = exc
            self._restart_failed_at = time.monotonic()
            log.warning("could not restart the embedded PostgreSQL: %s", exc)
        except Exception:  # a thread of its own: nobody else would see it
            self._restart_failed_at = time.monotonic()
            log.exception("could not restart the embedded PostgreSQL")

    def _retry_after(self) -> float:
        return 5.0 if self._restart_error is not None else 2.0

    def _timeout(self, exc: psycopg.errors.QueryCanceled) -> QueryTimeoutError:
        if "statement timeout" in str(exc):
            return QueryTimeoutError(f"the query ran longer than statement_timeout={self.statement_timeout:g} s "
                                     "and PostgreSQL stopped it", self.statement_timeout)
        return QueryTimeoutError(f"PostgreSQL canceled the query: {_first(exc)}")

    # -- schema --------------------------------------------------------------------------------
    def migrate(self) -> list[int]:
        """Apply pending migrations; returns the versions applied."""
        applied: list[int] = []
        try:
            with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
                # Exempt from any statement_timeout (the URL's options, the role's defaults):
                # a migration rewriting a big table may run for minutes.
                conn.execute("SET statement_timeout = 0")
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
                            if _lost(exc, conn):
                                raise
                            raise MigrationError(
                                f"migration {migration.version}_{migration.name} failed: {exc}"
                            ) from exc
                        applied.append(migration.version)
                finally:
                    if not conn.broken:
                        conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailableError(f"cannot connect to PostgreSQL at {_safe(self.url)}: {_first(exc)}",
                                           retry_after=self._retry_after()) from exc
        return applied

    def schema_version(self) -> int:
        with self.connection() as conn:
            row = conn.execute("SELECT coalesce(max(version), 0) AS v FROM schema_migrations").fetchone()
            return int(row["v"]) if row else 0

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


def resolve_database_url(database_url: str | None, data_dir: Path) -> str:
    """The external server when configured, else the embedded one (started if needed)."""
    if database_url:
        return database_url
    from ragtune.store.server import EmbeddedPostgres

    return EmbeddedPostgres(data_dir).start()


def _stale(conn: Conn) -> bool:
    """Whether a pooled connection's server went away. An idle connection's socket has nothing to
    read; when it does, it is almost always the backend's last words before it closed (FATAL
    "terminating connection"), so only then is the connection tried with a round trip."""
    if conn.closed or conn.broken:
        return True
    try:
        poller = select.poll()  # not select.select: it fails on descriptors above 1023
        poller.register(conn.fileno(), select.POLLIN)
        if not poller.poll(0):
            return False
    except (AttributeError, ValueError, OSError):
        return False  # no poll on this platform: a dead connection fails its first statement instead
    from psycopg_pool import ConnectionPool

    try:
        ConnectionPool.check_connection(conn)
        return False
    except psycopg.Error:
        return True


def _lost(exc: psycopg.Error, conn: psycopg.Connection[Any]) -> bool:
    state = exc.sqlstate or ""
    return conn.broken or conn.closed or state.startswith("08") or state in _LOST_STATES


def _first(exc: BaseException) -> str:
    """The first line of an error: libpq messages go on with hints the user does not need here."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _safe(url: str) -> str:
    return re.sub(r"://([^:@/]+):[^@]*@", r"://\1:***@", url)
