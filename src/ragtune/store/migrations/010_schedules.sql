-- Scheduled syncs (issue 16): an admin names a source (a folder the server reads, or a remote
-- source such as s3://bucket/prefix), a collection and an interval; the server runs each due
-- schedule as an ingest job of its own (so it is listed with its progress and report).
-- next_run_at is NULL while a run is queued or running: a schedule never runs twice at once, and
-- its next run is set when the run ends (the job's end and this update are one transaction).
CREATE TABLE sync_schedules (
    id               bigserial PRIMARY KEY,
    source           text NOT NULL,
    collection       text NOT NULL,
    interval_s       integer NOT NULL CHECK (interval_s >= 1),
    acl              text[],          -- NULL: not given (stored documents keep theirs)
    metadata         jsonb,           -- NULL: not given
    change_acl       boolean NOT NULL DEFAULT false,
    principal        text NOT NULL,   -- who made it: its runs write as this principal
    principal_groups text[] NOT NULL DEFAULT '{}',
    principal_admin  boolean NOT NULL DEFAULT false,
    next_run_at      timestamptz DEFAULT now(),
    last_job_id      bigint,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sync_schedules_due ON sync_schedules (next_run_at) WHERE next_run_at IS NOT NULL;

-- A job that syncs a source instead of ingesting an upload (upload_dir is then empty), and the
-- schedule it runs for (NULL once that schedule is deleted).
ALTER TABLE ingest_jobs ADD COLUMN source text,
    ADD COLUMN schedule_id bigint REFERENCES sync_schedules (id) ON DELETE SET NULL;
CREATE INDEX ingest_jobs_schedule ON ingest_jobs (schedule_id) WHERE schedule_id IS NOT NULL;
