-- Keep a chunk's vector in its row (compressed or moved out only as a last resort) rather than
-- in the TOAST table: every dense score read outside the HNSW index (hybrid fusion, exact
-- filtered scans) otherwise costs a TOAST lookup. Applies to rows written from now on.
ALTER TABLE chunks ALTER COLUMN embedding SET STORAGE MAIN;
