-- BM25 reads postings packed into blocks: one row per (term, block of 4096 chunk ids) holding
-- that term's postings in the block as big-endian int4 triples (chunk id - block * 4096, tf, dl).
-- Scoring a query then reads ~50 rows per term instead of one row per posting, and sums them in
-- numpy (bm25s' way), which is what makes BM25 as fast as an in-memory index. `postings` stays
-- the source of truth: every write updates both in one transaction (appends for new chunks,
-- blocks rebuilt from `postings` where chunks were removed).
CREATE TABLE posting_blocks (
    term_id  bigint NOT NULL,
    block    int NOT NULL,
    postings bytea NOT NULL,
    PRIMARY KEY (term_id, block)
);
-- out of line but uncompressed: decompressing on every read would cost more than the bytes saved
ALTER TABLE posting_blocks ALTER COLUMN postings SET STORAGE EXTERNAL;

INSERT INTO posting_blocks (term_id, block, postings)
SELECT p.term_id, (p.chunk_id >> 12)::int,
       string_agg(int4send((p.chunk_id & 4095)::int4) || int4send(p.tf) || int4send(p.dl), ''::bytea
                  ORDER BY p.chunk_id)
FROM postings p GROUP BY 1, 2;
