"""Asynchronous ingest jobs: a row per upload in ``ingest_jobs`` and one worker thread per server.

The upload handler stores the files (``uploads``), writes a ``queued`` job and wakes the worker;
the client polls ``GET /ingest-jobs/{id}`` for its status, progress and per-file errors.

Restarts. While it runs a job the worker holds a session advisory lock on it (on its own
connection), so the lock dies with the process. A job whose status says queued or running but
whose lock is free is therefore pending or was interrupted, and any worker (this one after a
restart, or another server on the same database) picks it up and runs it again: the pipeline
writes each batch of documents in one transaction and skips unchanged documents by content hash,
so a rerun finishes the job without duplicating or half-writing anything. A graceful shutdown
stops the running job between documents and puts it back in the queue. A job interrupted
``MAX_ATTEMPTS`` times, or whose files are gone (another machine's upload folder), is marked failed
with the reason. A job's upload folder is removed when it ends.

Fairness (issue 14: one tenant's 99k-chunk job delayed another's). A key may have at most
``server.max_jobs_per_key`` unfinished jobs: the upload route asks before storing the upload, and
``create`` counts again under a per-key lock, so two uploads racing cannot both take the last
slot. The worker does not run jobs in arrival order but takes the pending job of the key whose
last job started longest ago (a key that never started one first; ties by job id): a key that
queued ten jobs gets one turn, then every other waiting key gets one, round-robin. A file over a
loader or chunk limit fails alone, with its reason, in its job's file list.

Sync jobs and schedules (migration 010). A job with a ``source`` (a folder the server reads, or
``s3://bucket/prefix``) syncs it (``Ragtune.sync`` / ``Ragtune.sync_source``) instead of ingesting
an upload: it has no files or upload folder, and its report holds the failures. The worker makes
such a job for every due schedule (``enqueue_due``: the schedule's ``next_run_at`` becomes NULL in
the same transaction, so it is never queued twice, by this server or another) and, when the job
ends, ``finish`` sets the schedule's next run to the end plus its interval. A schedule's runs do
not count against its creator's ``max_jobs_per_key`` (a schedule has at most one unfinished run).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from ragtune.engine import Ragtune
from ragtune.errors import IngestError, JobLimitError, NotFoundError, RagtuneError, StoreError
from ragtune.ingest.loaders import LoaderOptions
from ragtune.ingest.loaders.discover import load_files
from ragtune.models import FileWarning, IngestReport, LoadedDocument, Principal, ProgressEvent
from ragtune.observe.tracing import current_span, set_attributes
from ragtune.server.uploads import UploadedFile
from ragtune.store.access import owned
from ragtune.store.audit import origin
from ragtune.store.database import Database

log = logging.getLogger("ragtune.server.jobs")

STATUSES = ("queued", "running", "succeeded", "failed")
MAX_ATTEMPTS = 3
_LOCK_NS = 7_203_117  # advisory-lock namespace of ingest jobs
_QUOTA_NS = 7_203_118  # advisory-lock namespace of a key's job count, held while creating a job
# A hint for a client refused for having too many unfinished jobs: they take seconds to minutes.
JOB_LIMIT_RETRY_AFTER = 5.0
_COLUMNS = ("id, collection, status, principal, principal_groups, principal_admin, acl, change_acl, metadata,"
            " upload_dir, files, progress, report, error, attempts, created_at::text AS created_at,"
            " started_at::text AS started_at, finished_at::text AS finished_at, source, schedule_id")


@dataclass(frozen=True)
class IngestJob:
    id: int
    collection: str
    status: str
    principal: str
    principal_groups: tuple[str, ...]
    principal_admin: bool
    acl: tuple[str, ...] | None  # None: not given (stored documents keep theirs, new ones are public)
    change_acl: bool
    metadata: dict[str, Any] | None  # None: not given
    upload_dir: str
    files: list[dict[str, Any]]
    progress: dict[str, Any]
    report: dict[str, Any] | None
    error: str | None
    attempts: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    source: str | None = None  # a sync job's folder or remote source (None: an upload)
    schedule_id: int | None = None  # the schedule it runs for

    @property
    def done(self) -> bool:
        return self.status in ("succeeded", "failed")

    @property
    def writer(self) -> Principal:
        """Who uploaded the job: its documents are written as this principal."""
        return Principal(id=self.principal, groups=frozenset(self.principal_groups), admin=self.principal_admin)

    def public(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("upload_dir", "principal_groups", "principal_admin")}
        out["acl"] = list(self.acl) if self.acl is not None else None
        out["files"] = [{k: v for k, v in f.items() if k != "stored"} for f in self.files]
        return out


def _job(row: dict[str, Any]) -> IngestJob:
    return IngestJob(**{**row, "acl": tuple(row["acl"]) if row["acl"] is not None else None,
                        "principal_groups": tuple(row["principal_groups"])})


class JobStore:
    def __init__(self, db: Database, uploads: Path) -> None:
        self.db = db
        self.uploads = uploads

    def create(self, *, collection: str, principal: Principal, acl: tuple[str, ...] | None,
               metadata: dict[str, Any] | None, folder: Path, files: list[UploadedFile],
               change_acl: bool = False, max_per_key: int = 0) -> IngestJob:
        """A queued job; ``JobLimitError`` if ``principal`` already has ``max_per_key`` unfinished
        ones (0: no limit)."""
        entries = [{"name": f.name, "stored": f.stored, "bytes": f.bytes, "status": "pending", "errors": []}
                   for f in files]
        with self.db.transaction() as conn:
            if max_per_key:
                # Serialises this key's creates until commit, so the count below stays true.
                conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_QUOTA_NS, principal.id))
                _check_quota(self._count_unfinished(conn, principal.id), max_per_key)
            row = conn.execute(
                f"INSERT INTO ingest_jobs (collection, status, principal, principal_groups, principal_admin, acl,"
                f" change_acl, metadata, upload_dir, files) VALUES (%s, 'queued', %s, %s, %s, %s, %s, %s, %s, %s)"
                f" RETURNING {_COLUMNS}",
                (collection, principal.id, sorted(principal.groups), principal.admin,
                 list(acl) if acl is not None else None, change_acl,
                 Jsonb(metadata) if metadata is not None else None, str(folder), Jsonb(entries)),
            ).fetchone()
        assert row is not None
        return _job(row)

    def get(self, job_id: int, principal: Principal | None = None) -> IngestJob:
        """The job, if ``principal`` (None: the worker, which reads every job) may see it: its
        creator, or an admin (``store.access.owned``)."""
        condition, params = owned(principal or Principal.system(), "principal")
        with self.db.connection() as conn:
            row = conn.execute(sql.SQL("SELECT {} FROM ingest_jobs WHERE id = %s AND {}").format(
                sql.SQL(_COLUMNS), condition), [job_id, *params]).fetchone()
        if row is None:
            raise NotFoundError(f"no ingest job {job_id}")
        return _job(row)

    def listing(self, principal: Principal, *, status: str | None = None, limit: int = 50) -> list[IngestJob]:
        condition, params = owned(principal, "principal")
        with self.db.connection() as conn:
            rows = conn.execute(
                sql.SQL("SELECT {} FROM ingest_jobs WHERE {} AND (%s::text IS NULL OR status = %s)"
                        " ORDER BY id DESC LIMIT %s").format(sql.SQL(_COLUMNS), condition),
                [*params, status, status, limit],
            ).fetchall()
        return [_job(r) for r in rows]

    def unfinished(self, principal_id: str) -> int:
        """How many of the key's jobs are queued or running."""
        with self.db.connection() as conn:
            return self._count_unfinished(conn, principal_id)

    def check_quota(self, principal_id: str, max_per_key: int) -> None:
        """``JobLimitError`` if the key has ``max_per_key`` unfinished jobs already (0: no limit);
        asked before an upload is stored, and again by ``create``."""
        if max_per_key:
            _check_quota(self.unfinished(principal_id), max_per_key)

    @staticmethod
    def _count_unfinished(conn: psycopg.Connection[Any], principal_id: str) -> int:
        row = conn.execute("SELECT count(*) AS n FROM ingest_jobs WHERE principal = %s"
                           " AND status IN ('queued', 'running') AND schedule_id IS NULL", (principal_id,)).fetchone()
        return int(row["n"]) if row else 0

    def pending(self) -> list[int]:
        """Pending jobs in the order to run them: first the jobs of the key whose last job started
        longest ago (never: first of all), ties by id, so keys take turns. A key's jobs start in id
        order, so its last start is among its latest started jobs; looking at 50 of them keeps the
        query an index scan however long its history (``ingest_jobs_principal``)."""
        with self.db.connection() as conn:
            return [r["id"] for r in conn.execute(
                "WITH pending AS (SELECT id, principal FROM ingest_jobs WHERE status IN ('queued', 'running')),"
                " turns AS (SELECT k.principal, (SELECT max(r.started_at) FROM (SELECT s.started_at FROM ingest_jobs s"
                "   WHERE s.principal = k.principal AND s.started_at IS NOT NULL ORDER BY s.id DESC LIMIT 50) r)"
                "   AS last_start FROM (SELECT DISTINCT principal FROM pending) k)"
                " SELECT p.id FROM pending p JOIN turns t USING (principal)"
                " ORDER BY t.last_start ASC NULLS FIRST, p.id").fetchall()]

    def start(self, job_id: int) -> IngestJob | None:
        """Mark a pending job running (one more attempt); None if it is no longer pending."""
        with self.db.transaction() as conn:
            row = conn.execute(
                f"UPDATE ingest_jobs SET status = 'running', attempts = attempts + 1, started_at = now(),"
                f" error = NULL WHERE id = %s AND status IN ('queued', 'running') RETURNING {_COLUMNS}",
                (job_id,),
            ).fetchone()
        return _job(row) if row else None

    def set_progress(self, job_id: int, progress: dict[str, Any]) -> None:
        with self.db.transaction() as conn:
            conn.execute("UPDATE ingest_jobs SET progress = %s WHERE id = %s", (Jsonb(progress), job_id))

    def enqueue_due(self) -> list[int]:
        """A queued sync job for every schedule that is due and has no run queued or running; the
        schedules wait (``next_run_at`` NULL) until their job ends. Returns the jobs' ids."""
        with self.db.transaction() as conn:
            rows = conn.execute(
                "WITH due AS (SELECT s.* FROM sync_schedules s WHERE s.next_run_at <= now() AND NOT EXISTS"
                "  (SELECT 1 FROM ingest_jobs j WHERE j.schedule_id = s.id AND j.status IN ('queued', 'running'))"
                "  ORDER BY s.next_run_at, s.id FOR UPDATE SKIP LOCKED),"
                " made AS (INSERT INTO ingest_jobs (collection, status, principal, principal_groups, principal_admin,"
                "  acl, change_acl, metadata, upload_dir, files, source, schedule_id)"
                "  SELECT collection, 'queued', principal, principal_groups, principal_admin, acl, change_acl,"
                "  metadata, '', '[]', source, id FROM due RETURNING id, schedule_id)"
                " UPDATE sync_schedules s SET next_run_at = NULL, last_job_id = made.id FROM made"
                " WHERE s.id = made.schedule_id RETURNING made.id").fetchall()
        return sorted(r["id"] for r in rows)

    def requeue(self, job_id: int, reason: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("UPDATE ingest_jobs SET status = 'queued', error = %s WHERE id = %s", (reason, job_id))

    def finish(self, job_id: int, status: str, *, files: list[dict[str, Any]] | None = None,
               report: dict[str, Any] | None = None, error: str | None = None,
               progress: dict[str, Any] | None = None) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE ingest_jobs SET status = %s, files = coalesce(%s, files), report = %s, error = %s,"
                " progress = coalesce(%s, progress), finished_at = now() WHERE id = %s",
                (status, Jsonb(files) if files is not None else None, Jsonb(report) if report is not None else None,
                 error, Jsonb(progress) if progress is not None else None, job_id),
            )
            # a schedule's next run counts from the end of this one
            conn.execute("UPDATE sync_schedules s SET next_run_at = now() + make_interval(secs => s.interval_s)"
                         " FROM ingest_jobs j WHERE j.id = %s AND s.id = j.schedule_id", (job_id,))

    def clean_incoming(self, older_than_s: float = 3600.0) -> None:
        """Remove folders of uploads that never became a job (a crash mid-upload)."""
        if not self.uploads.is_dir():
            return
        cutoff = time.time() - older_than_s
        for folder in self.uploads.glob("incoming-*"):
            try:
                if folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                continue


class JobProgress:
    """A ``protocols.Progress`` for a job: the ingest events (``ingest.pipeline``) as the counts its
    row stores under ``progress`` and ``GET /ingest-jobs/{id}`` returns (``files``: the job's files;
    ``documents``, ``chunks``, ``embedded``: done so far), written at most every ``every_s`` seconds;
    ``counts`` is what the job ends with."""

    TASKS = ("documents", "chunks", "embedded")

    def __init__(self, store: JobStore, job_id: int, files: int, every_s: float) -> None:
        self.store = store
        self.job_id = job_id
        self.every_s = every_s
        self.counts: dict[str, Any] = {"files": files, **dict.fromkeys(self.TASKS, 0)}
        self._last = time.monotonic()

    def __call__(self, event: ProgressEvent) -> None:
        if event.task in self.TASKS:
            self.counts[event.task] = event.done
        elif event.task == "files" and event.total is not None:  # a sync job: the files found
            self.counts["files"] = event.total
        if time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            self.store.set_progress(self.job_id, dict(self.counts))


class _Stopped(Exception):
    """Raised inside a running job when the server shuts down."""


class JobWorker:
    """Runs pending jobs one at a time (embedding already uses every core) on a background thread."""

    def __init__(self, engine: Ragtune, store: JobStore, *, poll_s: float = 2.0,
                 progress_every_s: float = 1.0) -> None:
        self.engine = engine
        self.store = store
        self.poll_s = poll_s
        self.progress_every_s = progress_every_s
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self.store.clean_incoming()
            self._thread = threading.Thread(target=self._loop, name="ragtune-ingest-jobs", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop between documents; a job cut short goes back to the queue."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # -- the loop ------------------------------------------------------------------------------
    def _loop(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        while not self._stopping.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.engine.db.url, autocommit=True)
                self.store.enqueue_due()
                job_id = self._claim(conn)
                if job_id is None:
                    due_in = self.engine.schedule_store.seconds_to_next()  # wake for the next schedule
                    self._wake.wait(self.poll_s if due_in is None else min(self.poll_s, max(due_in, 0.05)))
                    self._wake.clear()
                    continue
                try:
                    self._run(job_id)
                finally:
                    conn.execute("SELECT pg_advisory_unlock(%s, %s)", (_LOCK_NS, job_id))
            except (psycopg.OperationalError, StoreError) as exc:  # the database is down or restarting
                log.warning("ingest worker: the database is unavailable (%s); retrying in %.0fs",
                            str(exc).splitlines()[0] if str(exc) else type(exc).__name__, self.poll_s)
                if conn is not None:
                    conn.close()
                    conn = None
                self._stopping.wait(self.poll_s)
            except Exception:
                log.exception("ingest worker: unexpected error; retrying in %.0fs", self.poll_s)
                if conn is not None:
                    conn.close()
                    conn = None
                self._stopping.wait(self.poll_s)
        if conn is not None:
            conn.close()

    def _claim(self, conn: psycopg.Connection[Any]) -> int | None:
        """The first pending job in turn order (``JobStore.pending``) that no other worker holds."""
        for job_id in self.store.pending():
            row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (_LOCK_NS, job_id)).fetchone()
            if row and row[0]:
                return job_id
        return None

    def _run(self, job_id: int) -> None:
        job = self.store.start(job_id)
        if job is None:  # finished by another worker between listing and locking
            return
        # A job is a trace of its own: a ``job`` span, its ingest (or sync) below it. Like an ingest's
        # it names documents, so only its maker (and admins) see it.
        with self.engine.tracing.span("job", {
                "ragtune.kind": "job", "ragtune.job.id": job.id, "ragtune.job.type": "sync" if job.source else "upload",
                "ragtune.job.attempt": job.attempts, "ragtune.job.files": len(job.files) or None,
                "ragtune.job.source": job.source, "ragtune.principal": job.principal, "ragtune.principal_admin": True,
                "ragtune.groups": sorted(job.principal_groups), "ragtune.collection": job.collection,
                "gen_ai.data_source.id": job.collection,
                "ragtune.title": f"sync job {job.id}: {job.source}" if job.source
                else f"upload job {job.id}: {len(job.files)} file(s)"}), origin(f"job {job.id}"):
            self._execute(job)  # what it writes is audited as coming from the job

    def _execute(self, job: IngestJob) -> None:
        if job.attempts > MAX_ATTEMPTS:
            self._end(job, "failed", error=f"interrupted {job.attempts - 1} times; giving up")
            return
        if job.source is not None:
            self._sync(job)
            return
        folder = Path(job.upload_dir)
        missing = [f["name"] for f in job.files if not (folder / f["stored"]).is_file()]
        if missing:
            self._end(job, "failed", error=f"the uploaded files are gone ({', '.join(missing[:5])}): "
                                           "the job was interrupted and its upload folder removed; upload again")
            return
        progress = JobProgress(self.store, job.id, len(job.files), self.progress_every_s)
        counts = progress.counts
        loaded: dict[str, set[str]] = {}
        warned: list[FileWarning] = []
        try:
            report = self.engine.ingest_documents(self._documents(job, loaded, warned), collection=job.collection,
                                                  metadata=job.metadata, acl=job.acl, change_acl=job.change_acl,
                                                  principal=job.writer, progress=progress)
        except _Stopped:
            log.info("ingest job %s stopped by shutdown; it will resume", job.id)
            self._requeue(job)
            return
        except RagtuneError as exc:
            self._end(job, "failed", error=f"{type(exc).__name__}: {exc}", progress=counts)
            return
        except Exception as exc:
            log.exception("ingest job %s failed", job.id)
            self._end(job, "failed", error=f"internal error ({type(exc).__name__}); see the server log",
                      progress=counts)
            return
        files = _file_results(job.files, report, loaded, warned)
        ok = any(f["status"] == "ingested" for f in files)
        self._end(job, "succeeded" if ok else "failed", files=files, report=_report(report),
                  error=None if ok else "no file could be ingested; see each file's errors", progress=counts)

    def _sync(self, job: IngestJob) -> None:
        """A sync job: the folder or remote source synced into the collection as the job's writer."""
        assert job.source is not None
        counts = JobProgress(self.store, job.id, 0, self.progress_every_s)

        def progress(event: ProgressEvent) -> None:
            if self._stopping.is_set():
                raise _Stopped
            counts(event)

        options: dict[str, Any] = dict(collection=job.collection, metadata=job.metadata, acl=job.acl,
                                       change_acl=job.change_acl, principal=job.writer, progress=progress)
        try:
            if "://" in job.source:
                report = self.engine.sync_source(job.source, **options)
            else:
                report = self.engine.sync(job.source, **options)
        except _Stopped:
            log.info("sync job %s stopped by shutdown; it will resume", job.id)
            self._requeue(job)
            return
        except RagtuneError as exc:
            self._end(job, "failed", error=f"{type(exc).__name__}: {exc}", progress=counts.counts)
            return
        except Exception as exc:
            log.exception("sync job %s failed", job.id)
            self._end(job, "failed", error=f"internal error ({type(exc).__name__}); see the server log",
                      progress=counts.counts)
            return
        counts.counts["files"] = report.files
        self._end(job, "succeeded", report=report.to_dict(), progress=counts.counts)

    def _documents(self, job: IngestJob, loaded: dict[str, set[str]], warned: list[FileWarning]
                   ) -> Iterator[LoadedDocument | IngestError]:
        """The job's documents, with the stored file's path replaced by the uploaded name; ``loaded``
        collects the URIs of each file's documents, ``warned`` what libraries warned while reading
        each file (kept with the file's result instead of printed to the server's log)."""
        options = LoaderOptions.from_settings(self.engine.settings)
        folder = Path(job.upload_dir)
        for f in job.files:
            path = folder / f["stored"]
            stored, name = str(path), f["name"]
            found: list[FileWarning] = []
            for item in load_files([path], options, self.engine.plugins, warnings_to=found):
                if self._stopping.is_set():
                    raise _Stopped
                if isinstance(item, LoadedDocument):
                    meta = {**item.metadata, "source_path": name, "upload_job": job.id}
                    uri = _rename(item.uri, stored, name)
                    loaded.setdefault(name, set()).add(uri)
                    yield dataclasses.replace(item, uri=uri, metadata=meta)
                else:
                    try:
                        yield type(item)(_rename(item.source, stored, name), item.reason)
                    except TypeError:
                        yield IngestError(_rename(item.source, stored, name), item.reason)
            warned.extend(dataclasses.replace(w, source=_rename(w.source, stored, name)) for w in found)

    def _requeue(self, job: IngestJob) -> None:
        self.store.requeue(job.id, "interrupted by a shutdown; resumes when the server starts again")
        set_attributes(current_span(), {"ragtune.job.status": "requeued"})

    def _end(self, job: IngestJob, status: str, **kwargs: Any) -> None:
        span = current_span()  # the job's (``_run``)
        set_attributes(span, {"ragtune.job.status": status, "ragtune.job.error": kwargs.get("error")})
        if status == "failed":
            span.fail(str(kwargs.get("error") or "failed"))
        self.store.finish(job.id, status, **kwargs)
        if job.upload_dir:  # a sync job has none
            shutil.rmtree(job.upload_dir, ignore_errors=True)


def _check_quota(unfinished: int, max_per_key: int) -> None:
    if unfinished >= max_per_key:
        raise JobLimitError(f"this key has {unfinished} unfinished ingest jobs (queued or running), the most "
                            f"server.max_jobs_per_key={max_per_key} allows; wait for one to finish",
                            JOB_LIMIT_RETRY_AFTER)


def _rename(uri: str, stored: str, name: str) -> str:
    return name + uri[len(stored):] if uri.startswith(stored) else uri


def _file_results(files: list[dict[str, Any]], report: IngestReport, loaded: dict[str, set[str]],
                  warned: list[FileWarning]) -> list[dict[str, Any]]:
    """Each file is ``ingested`` if at least one of its documents was stored, else ``failed``;
    ``errors`` lists what failed (the whole file, single records of a JSON Lines file, members of an
    archive, attachments of a message), ``warnings`` what libraries warned while reading it."""
    out = []
    for f in files:
        name = f["name"]

        def of_file(source: str, name: str = name) -> bool:
            return source == name or source.startswith((name + ":", name + "#", name + "!/"))

        errors = [{"source": x.source, "code": x.error, "reason": x.reason} for x in report.failed if of_file(x.source)]
        uris = loaded.get(name, set())
        stored = len(uris - {e["source"] for e in errors})
        out.append({**f, "status": "ingested" if stored else "failed", "documents": stored, "errors": errors,
                    "warnings": [{"source": w.source, "origin": w.origin, "message": w.message}
                                 for w in warned if of_file(w.source)]})
    return out


def _report(report: IngestReport) -> dict[str, Any]:
    return {"added": report.added, "updated": report.updated, "unchanged": report.unchanged,
            "failed": len(report.failed), "chunks": report.chunks, "embedded": report.embedded,
            "seconds": round(report.seconds, 3)}
