-- Versioned fine-tuning datasets: one row per imported version with its validation report, and
-- its examples in the internal chat form. A version is written in one transaction.
CREATE TABLE datasets (
    id            bigserial PRIMARY KEY,
    name          text NOT NULL,
    version       int  NOT NULL CHECK (version > 0),
    format        text NOT NULL,
    source        text NOT NULL,
    -- sha256 of the imported file's bytes; with equal options a re-import is a no-op
    content_hash  text NOT NULL,
    options       jsonb NOT NULL DEFAULT '{}',
    row_count     int  NOT NULL CHECK (row_count >= 0),
    train_rows    int  NOT NULL,
    eval_rows     int  NOT NULL,
    schema        jsonb NOT NULL DEFAULT '{}',
    report        jsonb NOT NULL DEFAULT '{}',
    valid         boolean NOT NULL,
    reasons       text[] NOT NULL DEFAULT '{}',
    -- a registered eval set: other datasets are checked for leakage against it
    eval_set      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (name, version)
);
CREATE INDEX datasets_eval_set ON datasets (name) WHERE eval_set;

CREATE TABLE dataset_rows (
    dataset_id  bigint NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
    ordinal     int  NOT NULL,
    line        int  NOT NULL,
    split       text NOT NULL CHECK (split IN ('train', 'eval')),
    row_hash    text NOT NULL,
    messages    jsonb NOT NULL,
    tools       jsonb,
    chosen      jsonb,
    rejected    jsonb,
    PRIMARY KEY (dataset_id, ordinal)
);
CREATE INDEX dataset_rows_split ON dataset_rows (dataset_id, split);
