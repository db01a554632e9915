-- Prompt-injection screening (issue 20, part 2): each chunk's score, worked out once at ingest
-- (govern.injection), and whether its collection's policy quarantined it (excluded from retrieval
-- until an admin releases it).
ALTER TABLE chunks ADD COLUMN injection real;                       -- NULL: not screened
ALTER TABLE chunks ADD COLUMN quarantined boolean NOT NULL DEFAULT false;
CREATE INDEX chunks_quarantined ON chunks (collection_id) WHERE quarantined;
-- How many of its chunks are quarantined, read with the collection on every search: a collection
-- with none (nearly all) gets no extra condition, so screening costs its searches nothing.
ALTER TABLE collections ADD COLUMN quarantined bigint NOT NULL DEFAULT 0;
-- Chunk texts an admin released, by sha256: a re-ingest under the same policy keeps them released.
CREATE TABLE injection_releases (
    collection_id int NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
    text_hash     text NOT NULL,
    released_by   text NOT NULL,
    released_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (collection_id, text_hash)
);
