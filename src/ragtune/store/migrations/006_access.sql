-- Access hardening (issue 14): what a re-ingest must keep, who made a trace, and who may read a
-- fine-tuning dataset.

-- The metadata given at ingest (--meta, an upload's form, the API), kept apart from what the
-- loader extracts, so a re-ingest or sync that gives none keeps it instead of dropping it.
-- Rows written before this migration: everything but the loaders' own keys (for JSON records,
-- whose fields are metadata too, nothing can be told apart, so nothing is assumed).
ALTER TABLE documents ADD COLUMN user_metadata jsonb NOT NULL DEFAULT '{}';
UPDATE documents SET user_metadata = metadata - ARRAY['source_path', 'format', 'title', 'upload_job', 'pages',
                                                        'page_starts']
WHERE coalesce(metadata ->> 'format', '') NOT IN ('json', 'jsonl');

-- A trace made by an admin principal shows what only admins may see, even when it lists no chunk
-- (a zero-hit search still shows its query). Older rows: a principal without groups may have been
-- an admin, so those are treated as admin traces (hidden from other keys), the safe side.
ALTER TABLE traces ADD COLUMN principal_admin boolean NOT NULL DEFAULT false;
UPDATE traces SET principal_admin = true WHERE groups = '{}';

-- Fine-tuning datasets get an ACL like documents, with one more state: NULL (the default) means
-- admins only; '{}' every key with the read scope; otherwise keys sharing a group. A row may carry
-- its own ACL (rows made from documents inherit theirs); NULL means the dataset's.
ALTER TABLE datasets ADD COLUMN acl text[];
ALTER TABLE dataset_rows ADD COLUMN acl text[];

-- An ingest job keeps who uploaded it (groups and admin flag, so the write is checked as that
-- principal when the job runs), whether it asked to change ACLs, and "not given" (NULL) apart from
-- an explicit public ACL or empty metadata.
ALTER TABLE ingest_jobs ALTER COLUMN acl DROP NOT NULL, ALTER COLUMN acl DROP DEFAULT,
    ALTER COLUMN metadata DROP NOT NULL, ALTER COLUMN metadata DROP DEFAULT,
    ADD COLUMN change_acl boolean NOT NULL DEFAULT false,
    ADD COLUMN principal_groups text[] NOT NULL DEFAULT '{}',
    ADD COLUMN principal_admin boolean NOT NULL DEFAULT false;
UPDATE ingest_jobs j SET principal_groups = k.groups, principal_admin = 'admin' = ANY(k.scopes)
FROM api_keys k WHERE j.principal = 'key:' || k.key_id;
UPDATE ingest_jobs SET principal_admin = true WHERE principal = 'local';
