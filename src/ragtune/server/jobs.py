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
from psycopg.types.json import Jsonb

from ragtune.errors import IngestError, NotFoundError, RagtuneError
from ragtune.ingest.loaders import LoaderOptions
from ragtune.ingest.loaders.discover import load_files
from ragtune.models import IngestReport, LoadedDocument, Principal
from ragtune.server.uploads import UploadedFile
from ragtune.store.database import Database

log = logging.getLogger("ragtune.server.jobs")

STATUSES = ("queued", "running", "succeeded", "failed")
MAX_ATTEMPTS = 3
_LOCK_NS = 7_203_117  # advisory-lock namespace of ingest jobs
_COLUMNS = ("id, collection, status, principal, acl, metadata, upload_dir, files, progress, report, error, attempts,"
            " created_at::text AS created_at, started_at::text AS started_at, finished_at::text AS finished_at")


@dataclass(frozen=True)
class IngestJob:
    id: int
    collection: str
    status: str
    principal: str
    acl: tuple[str, ...]
    metadata: dict[str, Any]
    upload_dir: str
    files: list[dict[str, Any]]
    progress: dict[str, Any]
    report: dict[str, Any] | None
    error: str | None
    attempts: int
    created_at: str
    started_at: str | None
    finished_at: str | None

    @property
    def done(self) -> bool:
        return self.status in ("succeeded", "failed")

    def public(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "upload_dir"}
        out["acl"] = list(self.acl)
        out["files"] = [{k: v for k, v in f.items() if k != "stored"} for f in self.files]
        return out


def _job(row: dict[str, Any]) -> IngestJob:
    return IngestJob(**{**row, "acl": tuple(row["acl"])})


class JobStore:
    def __init__(self, db: Database, uploads: Path) -> None:
        self.db = db
        self.uploads = uploads

    def create(self, *, collection: str, principal: Principal, acl: tuple[str, ...], metadata: dict[str, Any],
               folder: Path, files: list[UploadedFile]) -> IngestJob:
        entries = [{"name": f.name, "stored": f.stored, "bytes": f.bytes, "status": "pending", "errors": []}
                   for f in files]
        with self.db.transaction() as conn:
            row = conn.execute(
                f"INSERT INTO ingest_jobs (collection, status, principal, acl, metadata, upload_dir, files)"
                f" VALUES (%s, 'queued', %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
                (collection, principal.id, list(acl), Jsonb(metadata), str(folder), Jsonb(entries)),
            ).fetchone()
        assert row is not None
        return _job(row)

    def get(self, job_id: int, principal: Principal | None = None) -> IngestJob:
        """The job, if ``principal`` (None: anyone) may see it: its creator, or an admin."""
        with self.db.connection() as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM ingest_jobs WHERE id = %s", (job_id,)).fetchone()
        if row is None or (principal is not None and not principal.admin and row["principal"] != principal.id):
            raise NotFoundError(f"no ingest job {job_id}")
        return _job(row)

    def listing(self, principal: Principal, *, status: str | None = None, limit: int = 50) -> list[IngestJob]:
        with self.db.connection() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM ingest_jobs WHERE (%s OR principal = %s)"
                f" AND (%s::text IS NULL OR status = %s) ORDER BY id DESC LIMIT %s",
                (principal.admin, principal.id, status, status, limit),
            ).fetchall()
        return [_job(r) for r in rows]

    def pending(self) -> list[int]:
        with self.db.connection() as conn:
            return [r["id"] for r in conn.execute(
                "SELECT id FROM ingest_jobs WHERE status IN ('queued', 'running') ORDER BY id").fetchall()]

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


class _Stopped(Exception):
    """Raised inside a running job when the server shuts down."""


class JobWorker:
    """Runs pending jobs one at a time (embedding already uses every core) on a background thread."""

    def __init__(self, engine: Any, store: JobStore, *, poll_s: float = 2.0, progress_every_s: float = 1.0) -> None:
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
                job_id = self._claim(conn)
                if job_id is None:
                    self._wake.wait(self.poll_s)
                    self._wake.clear()
                    continue
                try:
                    self._run(job_id)
                finally:
                    conn.execute("SELECT pg_advisory_unlock(%s, %s)", (_LOCK_NS, job_id))
            except Exception:
                log.exception("ingest worker: unexpected error; retrying in %.0fs", self.poll_s)
                if conn is not None:
                    conn.close()
                    conn = None
                self._stopping.wait(self.poll_s)
        if conn is not None:
            conn.close()

    def _claim(self, conn: psycopg.Connection[Any]) -> int | None:
        for job_id in self.store.pending():
            row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (_LOCK_NS, job_id)).fetchone()
            if row and row[0]:
                return job_id
        return None

    def _run(self, job_id: int) -> None:
        job = self.store.start(job_id)
        if job is None:  # finished by another worker between listing and locking
            return
        if job.attempts > MAX_ATTEMPTS:
            self._end(job, "failed", error=f"interrupted {job.attempts - 1} times; giving up")
            return
        folder = Path(job.upload_dir)
        missing = [f["name"] for f in job.files if not (folder / f["stored"]).is_file()]
        if missing:
            self._end(job, "failed", error=f"the uploaded files are gone ({', '.join(missing[:5])}): "
                                           "the job was interrupted and its upload folder removed; upload again")
            return
        counts: dict[str, Any] = {"files": len(job.files), "documents": 0, "chunks": 0, "embedded": 0}
        last = [time.monotonic()]

        def on_event(event: str, n: int) -> None:
            if event in ("document", "chunks", "embedded"):
                counts[event + ("s" if event == "document" else "")] += n
            if time.monotonic() - last[0] >= self.progress_every_s:
                last[0] = time.monotonic()
                self.store.set_progress(job.id, dict(counts))

        loaded: dict[str, set[str]] = {}
        try:
            report = self.engine.ingest_documents(self._documents(job, loaded), collection=job.collection,
                                                  metadata=job.metadata, acl=job.acl, progress=on_event)
        except _Stopped:
            log.info("ingest job %s stopped by shutdown; it will resume", job.id)
            self.store.requeue(job.id, "interrupted by a shutdown; resumes when the server starts again")
            return
        except RagtuneError as exc:
            self._end(job, "failed", error=f"{type(exc).__name__}: {exc}", progress=counts)
            return
        except Exception as exc:
            log.exception("ingest job %s failed", job.id)
            self._end(job, "failed", error=f"internal error ({type(exc).__name__}); see the server log",
                      progress=counts)
            return
        files = _file_results(job.files, report, loaded)
        ok = any(f["status"] == "ingested" for f in files)
        self._end(job, "succeeded" if ok else "failed", files=files, report=_report(report),
                  error=None if ok else "no file could be ingested; see each file's errors", progress=counts)

    def _documents(self, job: IngestJob, loaded: dict[str, set[str]]) -> Iterator[LoadedDocument | IngestError]:
        """The job's documents, with the stored file's path replaced by the uploaded name; ``loaded``
        collects the URIs of each file's documents."""
        options = LoaderOptions(max_file_bytes=self.engine.settings.max_file_bytes)
        folder = Path(job.upload_dir)
        for f in job.files:
            path = folder / f["stored"]
            stored, name = str(path), f["name"]
            for item in load_files([path], options):
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

    def _end(self, job: IngestJob, status: str, **kwargs: Any) -> None:
        self.store.finish(job.id, status, **kwargs)
        shutil.rmtree(job.upload_dir, ignore_errors=True)


def _rename(uri: str, stored: str, name: str) -> str:
    return name + uri[len(stored):] if uri.startswith(stored) else uri


def _file_results(files: list[dict[str, Any]], report: IngestReport, loaded: dict[str, set[str]]
                  ) -> list[dict[str, Any]]:
    """Each file is ``ingested`` if at least one of its documents was stored, else ``failed``;
    ``errors`` lists what failed (the whole file, or single records of a JSON Lines file)."""
    out = []
    for f in files:
        name = f["name"]
        errors = [{"source": x.source, "code": x.error, "reason": x.reason} for x in report.failed
                  if x.source == name or x.source.startswith((name + ":", name + "#"))]
        uris = loaded.get(name, set())
        stored = len(uris - {e["source"] for e in errors})
        out.append({**f, "status": "ingested" if stored else "failed", "documents": stored, "errors": errors})
    return out


def _report(report: IngestReport) -> dict[str, Any]:
    return {"added": report.added, "updated": report.updated, "unchanged": report.unchanged,
            "failed": len(report.failed), "chunks": report.chunks, "embedded": report.embedded,
            "seconds": round(report.seconds, 3)}
