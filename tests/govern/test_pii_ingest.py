"""PII policies at ingest (issue 20, part 1) against the real PostgreSQL: what a collection's
policy redacts, pseudonymizes or refuses never reaches a stored row; offsets map back to the
source; a policy change re-screens documents on their next ingest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ragtune.engine import Ragtune
from ragtune.errors import PolicyError
from ragtune.govern.pii import Vault, original_offset
from ragtune.govern.screening import replacements_of
from ragtune.models import Principal

POLICY = """
[pii]
min_score = 0.4
[pii.entities]
EMAIL_ADDRESS = "redact"
PHONE_NUMBER = "pseudonymize"
US_SSN = "refuse"
IBAN_CODE = "flag"
CREDENTIAL = "redact"
"""
EMAIL = "jane.doe@example.com"
PHONE = "+44 20 7946 0958"
IBAN = "DE89 3704 0044 0532 0130 00"
KEY = "AKIAIOSFODNN7EXAMPLE"


def _tables_text(rt: Ragtune) -> str:
    """Every stored copy of a document's text: bodies, titles, metadata, chunks, terms."""
    with rt.db.connection() as conn:
        rows = conn.execute(
            "SELECT string_agg(concat_ws(' ', body, title, metadata::text, user_metadata::text), ' ') AS t"
            " FROM documents UNION ALL SELECT string_agg(body || heading || metadata::text, ' ') FROM chunks"
            " UNION ALL SELECT string_agg(term, ' ') FROM terms").fetchall()
    return " ".join(r["t"] or "" for r in rows)


@pytest.fixture
def vault_key(monkeypatch: pytest.MonkeyPatch) -> str:
    key = "a test vault key of some length"
    monkeypatch.setenv(Vault.ENV, key)
    return key


def test_policy_redacts_pseudonymizes_and_flags_before_anything_is_stored(rt: Ragtune, tmp_path: Path,
                                                                           vault_key: str) -> None:
    rt.collection("hr", create=True)
    change = rt.policies.set("hr", POLICY, Principal.system())
    assert change.stored.version == 1
    text = (f"# Contacts for {EMAIL}\n\nWrite to {EMAIL} or call {PHONE} about payroll.\n"
            f"Salary goes to {IBAN}. The deploy key is {KEY}.\n")
    path = tmp_path / "contacts.md"
    path.write_text(text, encoding="utf-8")
    report = rt.ingest(path, collection="hr", metadata={"owner": EMAIL})
    assert report.added == 1 and not report.failed
    stored = _tables_text(rt)
    assert EMAIL not in stored and KEY not in stored and PHONE not in stored
    assert "jane" not in stored.lower()  # not even as a BM25 term
    assert IBAN in stored  # flagged, kept
    token = Vault(vault_key).token("PHONE_NUMBER", PHONE)
    assert token in stored and "<EMAIL_ADDRESS>" in stored and "<CREDENTIAL>" in stored
    with rt.db.connection() as conn:
        doc = conn.execute("SELECT body, pii FROM documents").fetchone()
        vault = conn.execute("SELECT token, entity, sealed FROM pii_vault").fetchall()
    assert doc is not None
    assert doc["pii"]["policy"] == 1
    assert doc["pii"]["counts"] == {"CREDENTIAL": 1, "EMAIL_ADDRESS": 2, "IBAN_CODE": 1, "PHONE_NUMBER": 1}
    # the title, its heading, the loader's title in metadata and the given owner
    assert doc["pii"]["elsewhere"] == {"EMAIL_ADDRESS": 4}
    # the vault holds the phone number sealed, and only the key opens it
    assert [(v["token"], v["entity"]) for v in vault] == [(token, "PHONE_NUMBER")]
    assert PHONE.encode() not in bytes(vault[0]["sealed"])
    assert Vault(vault_key).open(token, bytes(vault[0]["sealed"])) == PHONE
    # every offset outside a replacement maps back to the same character of the source
    replaced = replacements_of(doc["pii"])
    body: str = doc["body"]
    inside = {i for r in replaced for i in range(r.start, r.end)}
    assert all(text[original_offset(replaced, i)] == body[i] for i in range(len(body)) if i not in inside)
    for r in replaced:
        assert text[r.original_start:r.original_end] in (EMAIL, PHONE, KEY)
    # the decisions are in the ingest's audit event (types and counts, never values)
    [event] = [e for e in rt.audit.events() if e["action"] == "ingest"]
    assert event["documents"][0]["pii"] == doc["pii"]["counts"] and EMAIL not in str(event)
    # a search finds the document by its remaining words, and shows no redacted value
    result = rt.search("payroll", collection="hr")
    assert result.hits and EMAIL not in result.hits[0].chunk.text


def test_refused_entity_fails_that_document_only_and_names_it(rt: Ragtune, tmp_path: Path) -> None:
    rt.collection("hr", create=True)
    rt.policies.set("hr", POLICY, Principal.system())
    bad = tmp_path / "ssn.txt"
    bad.write_text("Employee SSN: 536-22-1234, on file since 2019.\n", encoding="utf-8")
    good = tmp_path / "leave.txt"
    good.write_text("Parental leave is sixteen weeks.\n", encoding="utf-8")
    report = rt.ingest([bad, good], collection="hr")
    assert report.added == 1
    [failure] = report.failed
    assert failure.source == str(bad) and failure.error == "pii_refused"
    assert "US_SSN" in failure.reason and "536-22-1234" not in failure.reason
    assert "536-22-1234" not in _tables_text(rt)


def test_policy_change_rescreens_documents_on_their_next_ingest(rt: Ragtune, tmp_path: Path) -> None:
    path = tmp_path / "mail.txt"
    path.write_text(f"Questions to {EMAIL} please.\n", encoding="utf-8")
    rt.ingest(path, collection="hr")
    assert EMAIL in _tables_text(rt)  # no policy: stored as it is
    change = rt.policies.set("hr", '[pii.entities]\nEMAIL_ADDRESS = "redact"\n', Principal.system())
    assert change.stale_documents == 1
    report = rt.ingest(path, collection="hr")  # same file, same bytes: read again under version 1
    assert report.updated == 1
    assert EMAIL not in _tables_text(rt)
    assert rt.ingest(path, collection="hr").unchanged == 1  # and then it is up to date
    # the change is versioned and audited, with the source's hash
    assert [p.version for p in rt.policies.history("hr")] == [1]
    [event] = [e for e in rt.audit.events() if e["action"] == "policy.set"]
    assert event["collection"] == "hr" and event["details"]["version"] == 1 and event["details"]["previous"] == 0


def test_a_bad_policy_is_refused_with_lines_and_stores_nothing(rt: Ragtune) -> None:
    rt.collection("hr", create=True)
    with pytest.raises(PolicyError) as caught:
        rt.policies.set("hr", '[pii.entities]\nEMAIL = "redact"\nUS_SSN = "shred"\n', Principal.system(),
                        name="hr.toml")
    problems: list[Any] = caught.value.problems
    assert problems[0].startswith("hr.toml:2: unknown PII entity type 'EMAIL'") and "EMAIL_ADDRESS" in problems[0]
    assert problems[1].startswith("hr.toml:3: US_SSN = 'shred'")
    assert rt.policies.history("hr") == [] and rt.collection("hr").policy_version == 0
