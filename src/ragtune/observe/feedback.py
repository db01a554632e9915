"""Feedback on answers: thumbs, a score, a label, a comment, a corrected answer, keyed by the
answer's response id (its trace id; ``chatcmpl-<trace id>`` as a non-streamed OpenAI completion
names it).

Only the principal who asked (or an admin) gives feedback on an answer: an unknown id is "not
found"; another's answer is refused (an id names it only for whoever was shown it: trace ids are
128 random bits). Each
submission is a row of the ``feedback`` table (in the same PostgreSQL as the trace) and a
``feedback`` span in the answer's trace carrying the GenAI conventions' evaluation event
(``gen_ai.evaluation.result``: name, score value, score label), so a collector gets it too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ragtune.errors import NotFoundError, PermissionDeniedError, QueryError
from ragtune.models import Principal
from ragtune.observe.tracing import Tracing
from ragtune.store.audit import AuditEvent, append
from ragtune.store.database import Database

MAX_TEXT = 10_000  # characters of a label, comment or correction


@dataclass(frozen=True)
class Feedback:
    """What a person said about an answer; at least one field."""

    thumbs: int | None = None  # +1 up, -1 down
    score: float | None = None  # 0..1
    label: str | None = None
    comment: str | None = None
    correction: str | None = None  # the answer it should have been

    def __post_init__(self) -> None:
        if self.thumbs is not None and self.thumbs not in (-1, 1):
            raise QueryError(f"thumbs={self.thumbs!r}: give 1 (up) or -1 (down)")
        if self.score is not None and not (math.isfinite(self.score) and 0.0 <= self.score <= 1.0):
            raise QueryError(f"score={self.score!r}: give a number from 0 to 1")
        for name in ("label", "comment", "correction"):
            value = getattr(self, name)
            if value is not None and len(value) > MAX_TEXT:
                raise QueryError(f"{name} is {len(value)} characters; at most {MAX_TEXT}")
        if all(getattr(self, f) in (None, "") for f in ("thumbs", "score", "label", "comment", "correction")):
            raise QueryError("empty feedback: give thumbs, a score, a label, a comment or a correction")

    @property
    def negative(self) -> bool:
        return self.thumbs == -1 or (self.score is not None and self.score < 0.5)


def trace_of(response_id: str) -> str:
    """The trace id a response id names (``chatcmpl-`` prefix allowed), or not found."""
    wanted = response_id.strip().lower().removeprefix("chatcmpl-")
    if len(wanted) != 32 or any(c not in "0123456789abcdef" for c in wanted):
        raise NotFoundError(f"no answer {response_id}")
    return wanted


def give(db: Database, tracing: Tracing | None, response_id: str, principal: Principal,
         feedback: Feedback, *, audit: bool = False) -> dict[str, Any]:
    """Store ``feedback`` on the answer ``response_id`` from ``principal`` (see the module's rule);
    returns the stored row. With ``audit``, the audit log records it (its texts left out)."""
    trace_id = trace_of(response_id)
    if tracing is not None:
        tracing.flush()  # an answer given a moment ago is in the table
    with db.transaction() as conn:
        root = conn.execute("SELECT t.span_id, t.kind, t.principal FROM spans t WHERE t.trace_id = %s"
                            " AND t.parent_id IS NULL", [trace_id]).fetchone()
        if root is None:
            raise NotFoundError(f"no answer {response_id}")
        if root["kind"] != "ask":
            raise QueryError(f"trace {trace_id} is a {root['kind']}, not an answer: feedback is on answers")
        if root["principal"] != principal.id and not principal.admin:
            raise PermissionDeniedError(f"answer {response_id} was asked by someone else: feedback comes from the "
                                        "one who asked")
        row = conn.execute(
            "INSERT INTO feedback (trace_id, principal, thumbs, score, label, comment, correction)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id, trace_id, principal, created_at::text AS created_at,"
            " thumbs, score, label, comment, correction",
            (trace_id, principal.id, feedback.thumbs, feedback.score, feedback.label, feedback.comment,
             feedback.correction)).fetchone()
        if audit and row is not None:
            append(conn, AuditEvent("feedback", principal, details={
                "trace_id": trace_id, "feedback_id": row["id"], "thumbs": feedback.thumbs, "score": feedback.score,
                "label": feedback.label, "comment": feedback.comment is not None,
                "correction": feedback.correction is not None}))
    assert row is not None  # INSERT ... RETURNING gives the row
    if tracing is not None:
        tracing.evaluation(trace_id, root["span_id"], _event(feedback), {
            "ragtune.kind": "feedback", "ragtune.principal": principal.id, "ragtune.feedback.id": row["id"],
            "ragtune.feedback.comment": feedback.comment, "ragtune.feedback.correction": feedback.correction})
    return dict(row)


def _event(feedback: Feedback) -> dict[str, Any]:
    """The ``gen_ai.evaluation.result`` event's attributes."""
    label = feedback.label or ({1: "thumbs_up", -1: "thumbs_down"}.get(feedback.thumbs or 0))
    value = feedback.score if feedback.score is not None else (
        None if feedback.thumbs is None else (1.0 if feedback.thumbs > 0 else 0.0))
    return {k: v for k, v in {"gen_ai.evaluation.name": "user_feedback", "gen_ai.evaluation.score.value": value,
                              "gen_ai.evaluation.score.label": label}.items() if v is not None}
