"""Policies through the CLI and the HTTP API (issue 20, parts 1 and 5): checked with line numbers,
set, shown and versioned; a pseudonym revealed only by an admin with the vault key, audited."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragtune.engine import Ragtune
from ragtune.errors import ConfigError, NotFoundError, PermissionDeniedError
from ragtune.govern.pii import Vault
from ragtune.models import Principal
from ragtune.settings import Settings

GOOD = '[pii.entities]\nEMAIL_ADDRESS = "redact"\nPHONE_NUMBER = "pseudonymize"\n'
BAD = '[pii.entities]\nEMAIL = "redact"\n\n[answers]\nmax_sources = "five"\n[colours]\nx = 1\n'
PHONE = "+44 20 7946 0958"


def test_the_cli_checks_sets_shows_and_scans(cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.cli.runner import invoke

    monkeypatch.setenv(Vault.ENV, "the key of this test's vault")
    (cli_env / "good.toml").write_text(GOOD, encoding="utf-8")
    (cli_env / "bad.toml").write_text(BAD, encoding="utf-8")
    code, _, err = invoke("policy", "check", "bad.toml")
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert [line.split(":")[2] for line in lines] == ["2", "5", "6"]  # each problem at its line, in order
    assert "EMAIL_ADDRESS" in lines[0] and "max_sources" in lines[1] and "[colours]" in lines[2]
    code, out, _ = invoke("policy", "check", "good.toml", "--json")
    assert code == 0 and json.loads(out)["rules"]["pii"]["entities"]["PHONE_NUMBER"] == "pseudonymize"
    assert invoke("policy", "check", "missing.toml")[0] == 2

    doc = cli_env / "contacts.md"
    doc.write_text(f"# Contacts\n\nCall {PHONE} about payroll.\n", encoding="utf-8")
    assert invoke("ingest", str(doc), "-c", "hr")[0] == 0  # before the policy: stored as it is
    code, out, _ = invoke("policy", "set", "hr", "good.toml")
    assert code == 0 and "version 1" in out
    assert invoke("policy", "set", "hr", "bad.toml")[0] == 1  # refused: version 1 stays in force
    assert invoke("ingest", str(doc), "-c", "hr")[0] == 0
    code, out, _ = invoke("policy", "show", "hr", "--json")
    shown = json.loads(out)
    assert code == 0 and shown["version"] == 1 and shown["source"] == GOOD
    code, out, _ = invoke("policy", "history", "hr", "--json")
    assert code == 0 and [v["rules"]["pii"]["entities"] for v in json.loads(out)] == [
        {"EMAIL_ADDRESS": "redact", "PHONE_NUMBER": "pseudonymize"}]

    code, out, _ = invoke("search", "payroll", "-c", "hr", "--json")
    assert code == 0 and PHONE not in out
    token = Vault("the key of this test's vault").token("PHONE_NUMBER", PHONE)
    assert token in out
    code, out, _ = invoke("pii", "reveal", token)
    assert code == 0 and out.strip() == PHONE
    code, out, _ = invoke("pii", "scan", str(doc), "--policy", "good.toml", "--json")
    assert code == 0 and [f["entity"] for f in json.loads(out)["findings"]] == ["PHONE_NUMBER"]
    with Ragtune(Settings.load()) as rt:
        actions = [e["action"] for e in rt.audit.events()]
    assert actions.count("policy.set") == 1 and actions[-1] == "pii.reveal"


def test_reveal_needs_an_admin_the_key_and_a_known_token(rt: Ragtune, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(Vault.ENV, "the key of this test's vault")
    rt.collection("hr", create=True)
    rt.policies.set("hr", GOOD, Principal.system())
    (tmp_path / "c.txt").write_text(f"Call {PHONE}.\n", encoding="utf-8")
    rt.ingest(tmp_path / "c.txt", collection="hr")
    token = Vault("the key of this test's vault").token("PHONE_NUMBER", PHONE)
    with pytest.raises(PermissionDeniedError):
        rt.reveal(token, principal=Principal("alice", frozenset({"hr"})))
    with pytest.raises(NotFoundError):
        rt.reveal("<PHONE_NUMBER_000000000000>")
    monkeypatch.setenv(Vault.ENV, "some other key, long enough")
    with pytest.raises(ConfigError, match="another key"):
        rt.reveal(token)
    assert [e for e in rt.audit.events() if e["action"] == "pii.reveal"] == []  # nothing was revealed


def test_the_cli_erases_verifies_and_refuses_what_matches_nothing(cli_env: Path) -> None:
    from tests.cli.runner import invoke

    doc = cli_env / "contacts.md"
    doc.write_text("# Contacts\n\nBudget questions go to arvid.holm@example.org every Monday.\n", encoding="utf-8")
    assert invoke("ingest", str(doc))[0] == 0
    code, out, _ = invoke("erase", "--subject", "arvid.holm@example.org", "--dry-run")
    assert code == 0 and "would erase 1 document" in out and "contacts.md" in out
    code, out, _ = invoke("erase", "--subject", "arvid.holm@example.org", "--json")
    report = json.loads(out)
    assert code == 0 and report["clean"] and report["counts"]["documents"] == 1
    code, out, _ = invoke("erase", "--verify", str(report["erasure"]), "--subject", "arvid.holm@example.org")
    assert code == 0 and "verified" in out
    code, _, err = invoke("erase", "--document", "99999")
    assert code == 2 and "matches no document" in err
    code, _, err = invoke("erase", "--uri", "*", "--subject", "arvid.holm@example.org")
    assert code == 2 and "one of" in err
