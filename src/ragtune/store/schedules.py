"""Scheduled syncs: a source (a folder the server reads, or ``s3://bucket/prefix``), a collection and
an interval, in ``sync_schedules`` (migration 010).

This module only keeps the rows. The server's job worker (``server.jobs``) turns a due schedule
into an ingest job and sets its next run when that job ends; ``next_run_at`` is NULL in between, so
a schedule never has two runs at once, and the interval counts from the end of the last run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb

from ragtune.errors import NotFoundError
from ragtune.models import Principal
from ragtune.store.audit import AuditEvent, append
from ragtune.store.database import Conn, Database

_COLUMNS = ("s.id, s.source, s.collection, s.interval_s, s.acl, s.metadata, s.change_acl, s.principal,"
            " s.next_run_at::text AS next_run_at, s.last_job_id, s.created_at::text AS created_at,"
            " j.status AS last_status, j.finished_at::text AS last_finished_at")
_FROM = " FROM sync_schedules s LEFT JOIN ingest_jobs j ON j.id = s.last_job_id"


@dataclass(frozen=True)
class Schedule:
    id: int
    source: str
    collection: str
    interval_s: int
    acl: tuple[str, ...] | None  # None: not given (stored documents keep theirs)
    metadata: dict[str, Any] | None  # None: not given
    change_acl: bool
    principal: str
    next_run_at: str | None  # None: a run is queued or running
    last_job_id: int | None
    created_at: str
    last_status: str | None = None  # the last run's job status
    last_finished_at: str | None = None

    def public(self) -> dict[str, Any]:
        return {**self.__dict__, "acl": list(self.acl) if self.acl is not None else None}


def _schedule(row: dict[str, Any]) -> Schedule:
    return Schedule(**{**row, "acl": tuple(row["acl"]) if row["acl"] is not None else None})


class ScheduleStore:
    """Scheduled syncs; with ``audit``, creating and deleting one is recorded in the audit log."""

    def __init__(self, db: Database, *, audit: bool = False) -> None:
        self.db = db
        self.audit = audit

    def create(self, *, source: str, collection: str, interval_s: int, principal: Principal,
               acl: tuple[str, ...] | None = None, metadata: dict[str, Any] | None = None,
               change_acl: bool = False) -> Schedule:
        """A schedule whose first run is due now; its runs write as ``principal``."""
        with self.db.transaction() as conn:
            row = conn.execute(
                "INSERT INTO sync_schedules (source, collection, interval_s, acl, metadata, change_acl, principal,"
                " principal_groups, principal_admin) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (source, collection, interval_s, list(acl) if acl is not None else None,
                 Jsonb(metadata) if metadata is not None else None, change_acl, principal.id,
                 sorted(principal.groups), principal.admin)).fetchone()
            assert row is not None
            if self.audit:
                append(conn, AuditEvent("schedule.create", principal, collection, details={
                    "schedule_id": row["id"], "source": source, "interval_s": interval_s}))
            return self._get(conn, int(row["id"]))

    def get(self, schedule_id: int) -> Schedule:
        with self.db.connection() as conn:
            return self._get(conn, schedule_id)

    @staticmethod
    def _get(conn: Conn, schedule_id: int) -> Schedule:
        row = conn.execute("SELECT " + _COLUMNS + _FROM + " WHERE s.id = %s", (schedule_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no schedule {schedule_id}")
        return _schedule(row)

    def listing(self) -> list[Schedule]:
        with self.db.connection() as conn:
            return [_schedule(r) for r in conn.execute("SELECT " + _COLUMNS + _FROM + " ORDER BY s.id").fetchall()]

    def delete(self, schedule_id: int, *, principal: Principal) -> None:
        """Remove the schedule; a run of it still queued is cancelled (marked failed), one already
        running finishes."""
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE ingest_jobs SET status = 'failed', error = 'its schedule was deleted', finished_at = now()"
                " WHERE schedule_id = %s AND status = 'queued' AND started_at IS NULL", (schedule_id,))
            row = conn.execute("DELETE FROM sync_schedules WHERE id = %s RETURNING id, source, collection",
                               (schedule_id,)).fetchone()
            if row is not None and self.audit:
                append(conn, AuditEvent("schedule.delete", principal, row["collection"], details={
                    "schedule_id": schedule_id, "source": row["source"]}))
        if row is None:
            raise NotFoundError(f"no schedule {schedule_id}")

    def seconds_to_next(self) -> float | None:
        """Seconds until the next schedule is due (0 when one is due now); None when none waits."""
        with self.db.connection() as conn:
            row = conn.execute("SELECT extract(epoch FROM min(next_run_at) - now())::float8 AS s"
                               " FROM sync_schedules WHERE next_run_at IS NOT NULL").fetchone()
        if row is None or row["s"] is None:
            return None
        return max(0.0, float(row["s"]))
