-- The trace list's rare outcomes (issue 19, measured by benchmarks/trace_scale.py): with 10 million
-- spans, "abstained" and "ungrounded" answers scanned most root spans newest first before 50 were
-- found (p95 2.1 s and 0.76 s). A partial index each keeps only such roots.
CREATE INDEX spans_roots_abstained ON spans (start_time DESC) WHERE parent_id IS NULL AND abstained;
CREATE INDEX spans_roots_ungrounded ON spans (start_time DESC) WHERE parent_id IS NULL AND grounded IS FALSE;
