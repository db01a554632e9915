"""Policies over HTTP (issue 20, part 5): admins read, set and check them; a bad one is refused with
each problem's line; a reader's answers follow the policy in force."""

from __future__ import annotations

from typing import Any

GOOD = '[pii.entities]\nEMAIL_ADDRESS = "redact"\nPHONE_NUMBER = "pseudonymize"\n'
BAD = '[pii.entities]\nEMAIL = "redact"\n\n[answers]\nmax_sources = "five"\n[colours]\nx = 1\n'


def test_policies_over_http_for_admins(live: Any) -> None:
    with live.client("a") as client:  # a reader may not see or set policies
        assert client.get("/collections/handbook/policy").status_code == 403
        assert client.put("/collections/handbook/policy", json={"source": GOOD}).status_code == 403
    with live.client("admin") as client:
        assert client.get("/collections/handbook/policy").status_code == 404
        bad = client.put("/collections/handbook/policy", json={"source": BAD})
        assert bad.status_code == 400 and bad.json()["code"] == "invalid_policy"
        assert [p.split(":")[1] for p in bad.json()["problems"]] == ["2", "5", "6"]
        checked = client.post("/policy/check", json={"source": BAD}).json()
        assert checked["ok"] is False and len(checked["problems"]) == 3
        put = client.put("/collections/handbook/policy", json={"source": '[answers]\ndisclaimer = "Check with HR."\n'})
        assert put.status_code == 200, put.text
        assert put.json()["version"] >= 1 and put.json()["stale_documents"] >= 1
        got = client.get("/collections/handbook/policy").json()
        assert got["rules"]["answers"]["disclaimer"] == "Check with HR." and got["created_by"].startswith("key:")
        history = client.get("/collections/handbook/policy/history").json()
        assert [p["version"] for p in history] == list(range(1, len(history) + 1))
    with live.client("a") as client:  # and the reader's answers carry the disclaimer
        answer = client.post("/collections/handbook/ask", json={"question": "What is the budget?",
                                                                 "generator": "extractive"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["answer"].endswith("Check with HR.")


def test_erasure_over_http_for_admins(live: Any) -> None:
    files = [("files", ("ines.md", b"# Contacts\n\nIn doubt, write to ines.varga@example.org about the budget."))]
    with live.client("admin") as client:
        r = client.post("/collections/handbook/documents", files=files, data={"acl": "a"})
        assert r.status_code == 202, r.text
        assert client.get(f"/ingest-jobs/{r.json()['id']}", params={"wait": 30}).json()["status"] == "succeeded"
    with live.client("a") as client:
        assert client.post("/erasures", json={"subject": "ines.varga@example.org"}).status_code == 403
    with live.client("admin") as client:
        dry = client.post("/erasures", json={"subject": "ines.varga@example.org", "dry_run": True}).json()
        assert [d["uri"] for d in dry["documents"]] == ["ines.md"] and dry["erasure"] is None
        done = client.post("/erasures", json={"subject": "ines.varga@example.org"})
        assert done.status_code == 200, done.text
        assert done.json()["clean"] is True and done.json()["counts"]["documents"] == 1
        erasure = done.json()["erasure"]
        again = client.post(f"/erasures/{erasure}/verify", json={"subject": "ines.varga@example.org"}).json()
        assert again["clean"] is True
        assert client.post(f"/erasures/{erasure}/verify", json={}).status_code == 400  # the subject is needed
        bad = client.post("/erasures", json={"uri": "*", "subject": "x@y.z"})
        assert bad.status_code == 400 and "one of" in bad.json()["detail"]
        missing = client.post("/erasures", json={"document_ids": [99999999]})
        assert missing.status_code == 404


def test_a_keys_policy_adds_its_rules_to_that_keys_answers(live: Any) -> None:
    key_a = live.keys["a"].split("_")[1]
    source = ('[answers]\ndisclaimer = "Reader A terms apply."\n[[answers.blocked_topics]]\ntopic = "budgets"\n'
              'terms = ["budget"]\nreason = "budget questions go to finance"\n')
    with live.client("a") as client:
        assert client.put(f"/keys/{key_a}/policy", json={"source": source}).status_code == 403
    with live.client("admin") as client:
        assert client.get(f"/keys/{key_a}/policy").status_code == 404
        put = client.put(f"/keys/{key_a}/policy", json={"source": source})
        assert put.status_code == 200, put.text
        assert put.json()["version"] == 1
        assert client.put("/keys/nosuchkey/policy", json={"source": source}).status_code == 404
        assert client.get(f"/keys/{key_a}/policy").json()["rules"]["answers"]["disclaimer"] == "Reader A terms apply."
    with live.client("a") as client:
        blocked = client.post("/collections/handbook/ask", json={"question": "What is the budget?",
                                                                  "generator": "extractive"}).json()
        assert blocked["decided_by"] == "policy" and "finance" in blocked["answer"]
        other = client.post("/collections/handbook/ask", json={"question": "Who may sign contracts?",
                                                                "generator": "extractive"}).json()
        assert other["answer"].endswith("Reader A terms apply.")
    with live.client("b") as client:  # another key: the collection's rules only
        answer = client.post("/collections/handbook/ask", json={"question": "What is the budget?",
                                                                 "generator": "extractive"}).json()
        assert answer["decided_by"] != "policy" and "Reader A" not in answer["answer"]
    with live.client("admin") as client:
        events = client.get("/audit", params={"action": "policy.set", "limit": 100}).json()
    assert any(e["details"].get("key_id") == key_a for e in events)
