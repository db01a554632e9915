"""A collection's policy on answers and spans (issue 20, parts 1 and 5) against the real PostgreSQL:
answers leave screened (or withheld), span texts are stored screened, blocked topics are refused
with their reason, disclaimers and the cap on sources apply, and every decision is in the span and
the audit log."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragtune.engine import Ragtune
from ragtune.errors import PermissionDeniedError
from ragtune.models import Principal

EMAIL = "jane.doe@example.com"
SYSTEM = Principal.system()


def _ingest_before_policy(rt: Ragtune, tmp_path: Path) -> None:
    """Documents stored before the policy: their chunks still hold the address (stale until re-ingested)."""
    for i, text in enumerate([f"Payroll questions go to {EMAIL}, the payroll officer, by Friday.",
                              "Parental leave is sixteen weeks at full pay.",
                              "Salary bands are reviewed every April by the pay committee.",
                              "The office closes at six on Fridays."]):
        (tmp_path / f"d{i}.txt").write_text(text + "\n", encoding="utf-8")
    rt.ingest(sorted(tmp_path.glob("d*.txt")), collection="hr")


def _span_texts(rt: Ragtune, trace_id: str) -> str:
    rt.tracing.flush()
    with rt.db.connection() as conn:
        rows = conn.execute("SELECT attributes::text AS a FROM spans WHERE trace_id = %s", (trace_id,)).fetchall()
    assert rows
    return " ".join(r["a"] for r in rows)


def test_answers_and_their_spans_leave_screened(rt: Ragtune, tmp_path: Path) -> None:
    _ingest_before_policy(rt, tmp_path)
    rt.policies.set("hr", '[pii.entities]\nEMAIL_ADDRESS = "redact"\n', SYSTEM)
    streamed: list[str] = []
    question = f"Who handles payroll questions? I am {EMAIL}"
    answer = rt.ask(question, collection="hr", generator="extractive", on_token=streamed.append)
    assert not answer.abstained and "payroll" in answer.text.lower()
    shown = [answer.text, *(c.text for c in answer.citations), *(h.chunk.text for h in answer.hits),
             *(m.content for m in answer.prompt), *(s.text for s in answer.sentences)]
    assert all(EMAIL not in t for t in shown) and any("<EMAIL_ADDRESS>" in t for t in shown)
    assert streamed == [answer.text]  # held back, then sent whole
    spans = _span_texts(rt, answer.trace_id or "")
    leaked = [spans[max(0, i - 200):i + 40] for i in range(len(spans)) if spans.startswith(EMAIL, i)]
    assert not leaked and "<EMAIL_ADDRESS>" in spans  # the question and the prompt, screened
    [event] = [e for e in rt.audit.events() if e["action"] == "ask"]
    assert event["details"]["policy"] == {"version": 1, "pii": {"counts": {"EMAIL_ADDRESS": 6}}}
    # a search's span texts too (its query), by the export threads
    result = rt.search(f"payroll {EMAIL}", collection="hr")
    assert EMAIL not in _span_texts(rt, result.trace_id or "")


def test_an_answer_holding_a_refused_type_is_withheld(rt: Ragtune, tmp_path: Path) -> None:
    _ingest_before_policy(rt, tmp_path)
    rt.policies.set("hr", '[pii.entities]\nEMAIL_ADDRESS = "refuse"\n', SYSTEM)
    answer = rt.ask("Who handles payroll questions?", collection="hr", generator="extractive")
    assert answer.abstained and answer.decided_by == "policy" and "EMAIL_ADDRESS" in answer.text
    assert answer.citations == [] and EMAIL not in answer.text
    assert all(EMAIL not in h.chunk.text for h in answer.hits)


def test_blocked_topics_disclaimers_source_caps_and_generators(rt: Ragtune, tmp_path: Path) -> None:
    _ingest_before_policy(rt, tmp_path)
    rt.policies.set("hr", """
[answers]
disclaimer = "Not legal advice."
max_sources = 2
generators = ["extractive"]
[[answers.blocked_topics]]
topic = "salaries"
terms = ["salary", "pay band"]
reason = "pay questions go to your HR partner"
""", SYSTEM)
    blocked = rt.ask("What is the salary band for engineers?", collection="hr", generator="extractive")
    assert blocked.abstained and blocked.decided_by == "policy" and blocked.hits == []
    assert "salaries" in blocked.text and "HR partner" in blocked.text and blocked.text.endswith("Not legal advice.")
    assert "salary" not in "Parental leave"  # the rule is on words: a question without them goes on
    answer = rt.ask("How long is parental leave?", collection="hr", generator="extractive", top_k=4)
    assert len(answer.hits) <= 2 and answer.text.endswith("\n\nNot legal advice.")
    with pytest.raises(PermissionDeniedError, match="allows the generators extractive"):
        rt.ask("How long is parental leave?", collection="hr", generator="smollm2")
    asks = [e for e in rt.audit.events() if e["action"] == "ask"]
    assert [e["details"]["policy"].get("blocked") for e in asks] == ["salaries", None]
    assert asks[1]["details"]["policy"] == {"version": 1, "max_sources": 2, "disclaimer": True}
    rt.tracing.flush()
    with rt.db.connection() as conn:
        row = conn.execute("SELECT attributes->'ragtune.policy' AS p, principal, collection FROM spans"
                           " WHERE trace_id = %s AND parent_id IS NULL", (blocked.trace_id,)).fetchone()
    assert row is not None and row["p"] == {"version": 1, "blocked": "salaries"}
    assert row["principal"] == "system" and row["collection"] == "hr"
