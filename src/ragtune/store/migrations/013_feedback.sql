-- Feedback on answers (issue 19): keyed by the answer's trace id (its gen_ai.response.id), given by
-- the principal who asked (or an admin). Each submission is a row; the trace list filters on them.
CREATE TABLE feedback (
    id          bigserial PRIMARY KEY,
    trace_id    text NOT NULL,
    principal   text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    thumbs      smallint CHECK (thumbs IN (-1, 1)),
    score       double precision CHECK (score >= 0 AND score <= 1),
    label       text,
    comment     text,
    correction  text,
    CHECK (thumbs IS NOT NULL OR score IS NOT NULL OR label IS NOT NULL OR comment IS NOT NULL
           OR correction IS NOT NULL)
);
CREATE INDEX feedback_trace ON feedback (trace_id);
-- "answers with negative feedback this week"
CREATE INDEX feedback_negative ON feedback (created_at, trace_id) WHERE thumbs = -1 OR score < 0.5;
