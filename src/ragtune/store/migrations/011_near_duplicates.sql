-- Near-duplicate documents (issue 16): each document's MinHash signature over word 5-grams
-- (ingest/duplicates.py), and for a copy stored without chunks, the URI of the document it
-- copies. A copy is marked stale (content_hash '') when that document changes or goes, so the
-- next ingest or sync of the copy indexes it again.
ALTER TABLE documents ADD COLUMN minhash bytea;
ALTER TABLE documents ADD COLUMN duplicate_of text;
CREATE INDEX documents_duplicate_of ON documents (collection_id, duplicate_of) WHERE duplicate_of IS NOT NULL;
