-- Erasures (issue 20, part 4): what each removed, kept as its receipt. A subject erasure keeps the
-- subject's sha256, never the subject; documents are named by id, URI and content hash.
CREATE TABLE erasures (
    id            bigserial PRIMARY KEY,
    requested_by  text NOT NULL,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    request       jsonb NOT NULL,
    documents     jsonb NOT NULL DEFAULT '[]',
    chunk_ids     bigint[] NOT NULL DEFAULT '{}',
    counts        jsonb NOT NULL DEFAULT '{}',
    datasets      jsonb NOT NULL DEFAULT '[]',
    models        jsonb NOT NULL DEFAULT '[]',   -- trained on what was erased: held or to retrain
    verified      jsonb                          -- the last --verify: table.column -> rows left
);
