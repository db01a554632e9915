-- The one read rule, written once: a row whose ACL is empty is every principal's, otherwise it is
-- for principals sharing one of its groups; a NULL ACL (a dataset's default) matches no one, so
-- it is for admins only (admins read everything and get no condition at all). Every query that
-- filters by ACL calls this (store/access.py), and the planner inlines it into the expression.
CREATE FUNCTION ragtune_readable(acl text[], principal_groups text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT acl = '{}' OR acl && principal_groups $$;

-- BM25 with visible statistics (migration 008), reading its ACL classes through the same rule.
CREATE OR REPLACE FUNCTION ragtune_bm25_visible(p_collection int, p_terms text[], p_counts int4[], p_groups text[])
RETURNS TABLE (weight float8, avgdl float8, block int, postings bytea)
LANGUAGE plpgsql STABLE SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH k AS (SELECT id, n_chunks, total_len, ragtune_readable(acl, p_groups) AS readable
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
