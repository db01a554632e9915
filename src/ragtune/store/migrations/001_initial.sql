-- Collections, versioned documents, chunks with vectors, the lexical index for BM25,
-- the embedding cache and the trace table.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE collections (
    id           serial PRIMARY KEY,
    name         text NOT NULL UNIQUE,
    embedder     text NOT NULL,
    dimension    int  NOT NULL CHECK (dimension > 0),
    -- exact BM25 statistics, maintained in the same transaction as every chunk change
    n_chunks     bigint NOT NULL DEFAULT 0,
    total_len    bigint NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE documents (
    id            bigserial PRIMARY KEY,
    collection_id int NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
    uri           text NOT NULL,
    content_hash  text NOT NULL,
    version       int  NOT NULL DEFAULT 1,
    title         text,
    body          text NOT NULL,
    metadata      jsonb NOT NULL DEFAULT '{}',
    acl           text[] NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (collection_id, uri)
);

CREATE TABLE chunks (
    id            bigserial PRIMARY KEY,
    document_id   bigint NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    collection_id int NOT NULL,
    ordinal       int NOT NULL,
    body          text NOT NULL,
    start_char    int NOT NULL,
    end_char      int NOT NULL,
    heading       text NOT NULL DEFAULT '',
    tokens        int NOT NULL,
    lex_len       int NOT NULL,
    -- copies of the document's metadata and ACL so filters run in the same scan as ranking
    metadata      jsonb NOT NULL DEFAULT '{}',
    acl           text[] NOT NULL DEFAULT '{}',
    -- dimension is per collection; each collection gets a partial HNSW index on a typed cast
    embedding     vector NOT NULL
);
CREATE INDEX chunks_document ON chunks (document_id);
CREATE INDEX chunks_collection ON chunks (collection_id);
CREATE INDEX chunks_metadata ON chunks USING gin (metadata jsonb_path_ops);

CREATE TABLE terms (
    id            bigserial PRIMARY KEY,
    collection_id int NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
    term          text NOT NULL,
    df            int NOT NULL DEFAULT 0,
    UNIQUE (collection_id, term)
);

-- (term, chunk) postings; dl is the chunk's lexical length, kept here so scoring is an
-- index-only scan that never touches the chunks heap.
CREATE TABLE postings (
    term_id   bigint NOT NULL,
    chunk_id  bigint NOT NULL,
    tf        int NOT NULL,
    dl        int NOT NULL,
    PRIMARY KEY (term_id, chunk_id) INCLUDE (tf, dl)
);
CREATE INDEX postings_chunk ON postings (chunk_id);

CREATE TABLE embedding_cache (
    model      text  NOT NULL,
    text_hash  bytea NOT NULL,
    embedding  vector NOT NULL,
    PRIMARY KEY (model, text_hash)
);

CREATE TABLE traces (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    principal   text,
    groups      text[] NOT NULL DEFAULT '{}',
    collection  text,
    query       text,
    params      jsonb NOT NULL DEFAULT '{}',
    results     jsonb NOT NULL DEFAULT '[]',
    timings_ms  jsonb NOT NULL DEFAULT '{}',
    error       text
);
CREATE INDEX traces_created ON traces (created_at);

-- A cast that yields NULL instead of failing, so a date filter never errors on odd metadata.
CREATE FUNCTION ragtune_try_timestamptz(value text) RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN value::timestamptz;
EXCEPTION WHEN others THEN
    RETURN NULL;
END $$;
