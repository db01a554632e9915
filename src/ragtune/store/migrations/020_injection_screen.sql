-- Which prompt-injection scorer (govern.injection.SCREEN_VERSION) scored a collection's chunks. An
-- ingest into a collection scored by another version (NULL: before this was recorded) scores every
-- chunk again first, so a better scorer reaches the chunks that were already stored.
ALTER TABLE collections ADD COLUMN injection_screen text;
