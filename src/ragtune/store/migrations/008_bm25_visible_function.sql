-- BM25 with the statistics of the chunks a principal can read (retrieve/postgres.py), as a function
-- so that its plan is made once per session: as a plain statement PostgreSQL re-planned it on every
-- search (custom plans; 0.23 ms of planning against 0.11 ms of execution on SQuAD questions), which
-- made the visible statistics cost 0.27 ms per search over the global ones; with this generic plan,
-- 0.02 ms (benchmarks/security_overhead.py). The plan is index scans throughout whatever the
-- arguments: ACL classes by collection, terms by (collection, term), class rows and posting blocks
-- by primary key.
CREATE FUNCTION ragtune_bm25_visible(p_collection int, p_terms text[], p_counts int4[], p_groups text[])
RETURNS TABLE (weight float8, avgdl float8, block int, postings bytea)
LANGUAGE plpgsql STABLE SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH k AS (SELECT id, n_chunks, total_len, (acl = '{}' OR acl && p_groups) AS readable
               FROM acl_classes WHERE collection_id = p_collection),
    s AS (SELECT coalesce(sum(n_chunks) FILTER (WHERE readable), 0)::int8 AS n_chunks,
                 coalesce(sum(total_len) FILTER (WHERE readable), 0)::int8 AS total_len,
                 count(*) FILTER (WHERE readable) < count(*) FILTER (WHERE NOT readable) AS by_readable,
                 array_agg(id) FILTER (WHERE readable) AS readable_ids,
                 array_agg(id) FILTER (WHERE NOT readable) AS hidden_ids FROM k),
    q AS MATERIALIZED (
        SELECT s.n_chunks, s.total_len, t.id, t.term,
               CASE WHEN s.by_readable THEN coalesce(d.df, 0) ELSE t.df - coalesce(d.df, 0) END AS df
        FROM s JOIN terms t ON t.collection_id = p_collection AND t.term = ANY(p_terms) AND t.df > 0
        LEFT JOIN LATERAL (SELECT sum(x.df) AS df FROM acl_class_terms x
                           WHERE x.class_id = ANY(CASE WHEN s.by_readable THEN s.readable_ids ELSE s.hidden_ids END)
                           AND x.term_id = t.id) d ON true),
    w AS (SELECT q.id, x.n * ln(1 + (q.n_chunks::float8 - q.df + 0.5) / (q.df + 0.5)) AS weight,
                 greatest(q.total_len, 1)::float8 / q.n_chunks AS avgdl
          FROM q JOIN unnest(p_terms, p_counts) AS x(term, n) ON x.term = q.term
          WHERE q.df > 0 AND q.n_chunks > 0)
    SELECT w.weight, w.avgdl, b.block, b.postings FROM w JOIN posting_blocks b ON b.term_id = w.id;
END $$;
