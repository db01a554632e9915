-- BM25 statistics per ACL class (issue 14): N, avgdl and df of the chunks a principal can read.
--
-- A chunk has exactly one ACL (its text[] as stored), and whether a principal can read it depends
-- on that value alone (public, or sharing a group), so the chunks a principal can read are a union
-- of "ACL classes": the distinct ACL values of a collection. Keeping n_chunks, total_len and every
-- term's df per class, the statistics of exactly the readable chunks are sums over the readable
-- classes (or the collection's numbers minus the unreadable ones), and a readable chunk's BM25
-- score no longer depends on anything the principal cannot read. Every write keeps these exact in
-- the same transaction as `collections.n_chunks/total_len` and `terms.df`; a class whose last
-- chunk goes is deleted (with its rows here).
CREATE TABLE acl_classes (
    id            bigserial PRIMARY KEY,
    collection_id int NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
    acl           text[] NOT NULL,
    n_chunks      bigint NOT NULL,
    total_len     bigint NOT NULL,
    UNIQUE (collection_id, acl)
);

-- Per class, how many of its chunks hold a term. Keyed by class first: a search reads the rows of
-- a few classes for a few terms, and deleting a class deletes its rows by the same index. (No
-- foreign key to terms: dropping a collection deletes its terms, and a cascade from there would
-- need a second index for nothing; the classes cascade instead.) Rows may hold 0 after deletes,
-- like terms.df.
CREATE TABLE acl_class_terms (
    class_id bigint NOT NULL REFERENCES acl_classes(id) ON DELETE CASCADE,
    term_id  bigint NOT NULL,
    df       int NOT NULL,
    PRIMARY KEY (class_id, term_id)
);

INSERT INTO acl_classes (collection_id, acl, n_chunks, total_len)
SELECT collection_id, acl, count(*), sum(lex_len) FROM chunks GROUP BY collection_id, acl;

-- A collection of one class (all public, say) has the collection's document frequencies; only
-- collections of several classes need their postings counted per class.
INSERT INTO acl_class_terms (class_id, term_id, df)
SELECT k.id, t.id, t.df FROM acl_classes k JOIN terms t ON t.collection_id = k.collection_id AND t.df > 0
WHERE NOT EXISTS (SELECT 1 FROM acl_classes o WHERE o.collection_id = k.collection_id AND o.id <> k.id);

INSERT INTO acl_class_terms (class_id, term_id, df)
SELECT k.id, p.term_id, count(*)
FROM acl_classes k JOIN chunks c ON c.collection_id = k.collection_id AND c.acl = k.acl
JOIN postings p ON p.chunk_id = c.id
WHERE EXISTS (SELECT 1 FROM acl_classes o WHERE o.collection_id = k.collection_id AND o.id <> k.id)
GROUP BY k.id, p.term_id;
