-- Governance (issue 20): each collection's policy, versioned; what personal data each document held
-- and what was done to it; the vault of pseudonymized values.

-- A collection's policy: every version kept (the newest is in force), with its source as written.
CREATE TABLE policies (
    id            bigserial PRIMARY KEY,
    collection_id int NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
    version       int NOT NULL CHECK (version > 0),
    source        text NOT NULL,
    rules         jsonb NOT NULL,
    created_by    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (collection_id, version)
);

-- {"policy": version screened under, "counts": {ENTITY: n} in the text, "elsewhere": {...} in the title,
--  headings and metadata, "replaced": [[start, end, original_start,
--  original_end, ENTITY, action], ...]}: never the values. '{}': not screened (no policy).
ALTER TABLE documents ADD COLUMN pii jsonb NOT NULL DEFAULT '{}';

-- Pseudonymized values, sealed (AES-GCM) under a key the database never holds (RAGTUNE_VAULT_KEY).
-- The token is an HMAC of the value under that key: the same value gets the same token everywhere.
CREATE TABLE pii_vault (
    token         text PRIMARY KEY,
    entity        text NOT NULL,
    sealed        bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- The version in force (0: none), read with the collection on every search: a policy change takes
-- effect with the next request, and a cached parse is kept until the version moves.
ALTER TABLE collections ADD COLUMN policy_version int NOT NULL DEFAULT 0;
