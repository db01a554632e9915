-- The audit log (issue 20): one row per read or write of the store (a search, an answer and the
-- chunks it showed, a document read, an ingest, a deletion, a key change, ...): who (principal,
-- API key), from where (origin), what (action, collection, the documents with their content
-- hashes, details), when. Append-only and hash-chained: row n holds the hash of row n-1
-- (prev_hash) and its own, sha256(prev_hash || its canonical text); seq counts up from 1 with no
-- gap. An edited, removed or reordered row breaks the chain where it happened (`ragtune audit
-- verify`). Rows are appended by ragtune_audit_append only, under one advisory lock held to the
-- end of the appending transaction, so the chain's order is the order the appends committed in.
CREATE TABLE audit_events (
    seq         bigint PRIMARY KEY,
    at          timestamptz NOT NULL,
    principal   text NOT NULL,
    key_id      text,                        -- the API key the principal came with, if any
    origin      text,                        -- where from: "http 10.0.0.7", "cli alice@host", ...
    action      text NOT NULL,               -- search, ask, document.read, ingest, delete, key.create, ...
    collection  text,
    documents   jsonb NOT NULL DEFAULT '[]', -- [{"id", "uri", "hash"}]: what was shown or changed
    details     jsonb NOT NULL DEFAULT '{}',
    prev_hash   bytea NOT NULL,
    hash        bytea NOT NULL
);
CREATE INDEX audit_events_at ON audit_events (at);
CREATE INDEX audit_events_principal ON audit_events (principal, seq);

-- What a row's hash covers, as bytes: every column but the hashes, as one JSON array (jsonb's
-- text form is canonical: key order and spacing fixed), the time in UTC to the microsecond.
CREATE FUNCTION ragtune_audit_text(seq bigint, at timestamptz, principal text, key_id text, origin text,
                                   action text, collection text, documents jsonb, details jsonb) RETURNS bytea
LANGUAGE sql STABLE AS $$
    SELECT convert_to(jsonb_build_array(seq, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                                        principal, key_id, origin, action, collection, documents, details)::text,
                      'UTF8')
$$;

-- Appends one event as the chain's next link; returns its seq. Called last in the transaction of
-- the action it records (the lock it takes is held to commit: taken early, it would hold every
-- other writer behind this one). Needs READ COMMITTED: the newest link is read after the lock,
-- which a REPEATABLE READ snapshot taken before it would not see.
CREATE FUNCTION ragtune_audit_append(p_principal text, p_key_id text, p_origin text, p_action text,
                                     p_collection text, p_documents jsonb, p_details jsonb) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    last_seq  bigint;
    last_hash bytea;
    t         timestamptz := clock_timestamp();
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'audit events are appended in READ COMMITTED transactions, not %',
            current_setting('transaction_isolation');
    END IF;
    PERFORM pg_advisory_xact_lock(7203119, 0);  -- ragtune's lock namespaces are 7203115 and up
    SELECT seq, hash INTO last_seq, last_hash FROM audit_events ORDER BY seq DESC LIMIT 1;
    last_seq := coalesce(last_seq, 0) + 1;
    last_hash := coalesce(last_hash, decode(repeat('00', 32), 'hex'));  -- the first row follows 32 zero bytes
    INSERT INTO audit_events (seq, at, principal, key_id, origin, action, collection, documents, details,
                              prev_hash, hash)
    VALUES (last_seq, t, p_principal, p_key_id, p_origin, p_action, p_collection, coalesce(p_documents, '[]'),
            coalesce(p_details, '{}'), last_hash,
            sha256(last_hash || ragtune_audit_text(last_seq, t, p_principal, p_key_id, p_origin, p_action,
                                                   p_collection, coalesce(p_documents, '[]'),
                                                   coalesce(p_details, '{}'))));
    RETURN last_seq;
END
$$;
