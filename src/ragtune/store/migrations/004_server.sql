-- The HTTP server's API keys and asynchronous ingest jobs.

-- A key is "rt_<key_id>_<secret>": key_id finds the row, and only a salted scrypt hash of the
-- secret is kept (the key itself is shown once, when it is created).
CREATE TABLE api_keys (
    id            bigserial PRIMARY KEY,
    key_id        text NOT NULL UNIQUE,
    name          text NOT NULL,
    groups        text[] NOT NULL DEFAULT '{}',
    scopes        text[] NOT NULL DEFAULT '{}',
    salt          bytea NOT NULL,
    hash          bytea NOT NULL,
    kdf           jsonb NOT NULL DEFAULT '{}',  -- scrypt parameters the hash was made with
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);

-- One row per upload: the files wait in upload_dir until the job has run. A worker holds a
-- session advisory lock on the job while it runs it, so a job whose status says queued or running
-- but whose lock is free was interrupted (a restart) and is resumed: documents are written whole
-- or not at all, and finished ones are skipped as unchanged.
CREATE TABLE ingest_jobs (
    id            bigserial PRIMARY KEY,
    collection    text NOT NULL,
    status        text NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    principal     text NOT NULL,
    acl           text[] NOT NULL DEFAULT '{}',
    metadata      jsonb NOT NULL DEFAULT '{}',
    upload_dir    text NOT NULL,
    files         jsonb NOT NULL DEFAULT '[]',  -- [{name, stored, bytes, status, errors}]
    progress      jsonb NOT NULL DEFAULT '{}',
    report        jsonb,
    error         text,
    attempts      int NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz
);
CREATE INDEX ingest_jobs_pending ON ingest_jobs (id) WHERE status IN ('queued', 'running');
CREATE INDEX ingest_jobs_principal ON ingest_jobs (principal, id);
