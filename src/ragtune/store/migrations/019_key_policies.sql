-- Policies per API key (issue 20, part 5): a key's policy adds its rules to the collection's for
-- every answer asked with that key. A row is a collection's or a key's, never both.
ALTER TABLE policies ALTER COLUMN collection_id DROP NOT NULL;
ALTER TABLE policies ADD COLUMN key_id text;
ALTER TABLE policies ADD CONSTRAINT policies_one_target CHECK ((collection_id IS NULL) <> (key_id IS NULL));
CREATE UNIQUE INDEX policies_key_version ON policies (key_id, version) WHERE key_id IS NOT NULL;
