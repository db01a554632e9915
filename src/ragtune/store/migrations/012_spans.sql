-- Spans (issue 19): every step of every request as an OpenTelemetry span (observe/tracing.py),
-- written in batches off the request path. One row per span; the trace's root span (parent_id
-- NULL) carries what the trace list filters and the access rule reads as columns: who asked
-- (principal, admin, groups), the collection, the model, the outcome, and the ids of every chunk
-- the trace shows (chunk_ids). Everything else is in attributes (OpenTelemetry GenAI names and
-- ragtune.*). Partitioned by day of start_time (UTC), so retention drops whole partitions.
CREATE TABLE spans (
    trace_id        text NOT NULL,               -- 32 hex digits, as OTLP collectors show it
    span_id         text NOT NULL,               -- 16 hex digits
    parent_id       text,                        -- NULL: the trace's root span
    name            text NOT NULL,
    kind            text NOT NULL,               -- a root's request kind (search, ask); a child's step
    start_time      timestamptz NOT NULL,
    duration_ms     double precision NOT NULL,
    status          text NOT NULL DEFAULT 'ok',  -- ok | error
    error           text,
    principal       text,
    principal_admin boolean NOT NULL DEFAULT false,
    groups          text[] NOT NULL DEFAULT '{}',
    collection      text,
    model           text,
    abstained       boolean,
    grounded        boolean,
    chunk_ids       bigint[] NOT NULL DEFAULT '{}',
    attributes      jsonb NOT NULL DEFAULT '{}',
    events          jsonb NOT NULL DEFAULT '[]',
    PRIMARY KEY (start_time, trace_id, span_id)
) PARTITION BY RANGE (start_time);

-- The list reads root spans newest first, optionally by one column; opening a trace reads its spans.
CREATE INDEX spans_trace ON spans (trace_id);
CREATE INDEX spans_roots ON spans (start_time DESC) WHERE parent_id IS NULL;
CREATE INDEX spans_roots_principal ON spans (principal, start_time DESC) WHERE parent_id IS NULL;
CREATE INDEX spans_roots_kind ON spans (kind, start_time DESC) WHERE parent_id IS NULL;
CREATE INDEX spans_roots_collection ON spans (collection, start_time DESC) WHERE parent_id IS NULL;

-- The partition of one UTC day, created when first needed (the exporter calls this per batch).
CREATE FUNCTION ragtune_span_partition(day date) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    name text := 'spans_' || to_char(day, 'YYYYMMDD');
BEGIN
    IF to_regclass(name) IS NULL THEN
        EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF spans FOR VALUES FROM (%L) TO (%L)', name,
                       (day::timestamp AT TIME ZONE 'UTC'), ((day + 1)::timestamp AT TIME ZONE 'UTC'));
    END IF;
    RETURN name;
END $$;

-- Yesterday's trace rows become root spans: the same facts, the trace id derived from the row's id.
DO $$
DECLARE
    day date;
BEGIN
    FOR day IN SELECT DISTINCT (created_at AT TIME ZONE 'UTC')::date FROM traces LOOP
        PERFORM ragtune_span_partition(day);
    END LOOP;
END $$;

INSERT INTO spans (trace_id, span_id, parent_id, name, kind, start_time, duration_ms, status, error, principal,
                   principal_admin, groups, collection, model, abstained, grounded, chunk_ids, attributes)
SELECT md5('ragtune-trace-' || t.id), left(md5('ragtune-span-' || t.id), 16), NULL, t.kind, t.kind, t.created_at,
       COALESCE((SELECT sum(CASE WHEN jsonb_typeof(v) = 'number' THEN v::text::float8 ELSE 0 END)
                 FROM jsonb_each(CASE WHEN jsonb_typeof(t.timings_ms) = 'object' THEN t.timings_ms ELSE '{}' END) AS e(k, v)
                 WHERE k NOT IN ('count', 'dense', 'bm25', 'fuse', 'fill', 'fetch', 'search')), 0),
       CASE WHEN t.error IS NULL THEN 'ok' ELSE 'error' END, t.error, t.principal, t.principal_admin, t.groups,
       t.collection, t.params ->> 'model',
       CASE WHEN jsonb_typeof(t.params -> 'abstained') = 'boolean' THEN (t.params ->> 'abstained')::boolean END,
       CASE WHEN jsonb_typeof(t.params -> 'grounded') = 'boolean' THEN (t.params ->> 'grounded')::boolean END,
       ARRAY(SELECT (r ->> 'chunk_id')::bigint
             FROM jsonb_array_elements(CASE WHEN jsonb_typeof(t.results) = 'array' THEN t.results ELSE '[]' END) r
             WHERE jsonb_typeof(r -> 'chunk_id') = 'number'),
       jsonb_build_object('ragtune.query', t.query, 'ragtune.params', t.params, 'ragtune.results', t.results,
                          'ragtune.timings_ms', t.timings_ms, 'ragtune.migrated_from', t.id)
FROM traces t;

DROP TABLE traces;
