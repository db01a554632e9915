"""The audit log over HTTP (issue 20): only a key with the ``audit`` scope (or an admin) reads it;
a request's events name its key and its client's address; key changes are events too."""

from __future__ import annotations

from typing import Any

from ragtune.server.auth import KeyStore


def test_the_audit_log_is_read_with_the_audit_scope_and_names_key_and_origin(live: Any) -> None:
    auditor = KeyStore(live.engine.db).create("auditor", scopes=["audit"])
    with live.client("a") as client:
        searched = client.post("/collections/handbook/search", json={"query": "budget", "top_k": 3})
        assert searched.status_code == 200, searched.text
        assert client.get("/audit").status_code == 403  # a reader may not read the log
    with live.client(auditor.key) as client:
        assert client.post("/collections/handbook/search", json={"query": "budget"}).status_code == 403
        events = client.get("/audit", params={"action": "search", "limit": 1000}).json()
        keys = client.get("/audit", params={"action": "key.create"}).json()
        revoked = client.get("/audit", params={"action": "key.revoke"}).json()
        verified = client.get("/audit/verify").json()
        bad = client.get("/audit/verify", params={"anchor": "nope"})
        bad_limit = client.get("/audit", params={"limit": 0})
    a_id = live.keys["a"].split("_")[1]
    mine = [e for e in events if e["key_id"] == a_id]
    assert mine and mine[-1]["principal"] == f"key:{a_id}" and mine[-1]["origin"] == "http 127.0.0.1"
    shown = {c for d in mine[-1]["documents"] for c in d["chunks"]}
    assert len(shown) == len(searched.json()["hits"]) > 0
    assert {e["details"]["key_id"] for e in keys} >= {a_id, auditor.info.key_id}
    assert len(revoked) == 1
    assert verified["ok"] is True and verified["checked"] >= len(events) + len(keys)
    assert bad.status_code == 400 and "SEQ:HASH" in bad.text
    assert bad_limit.status_code == 422
    with live.client("admin") as client:  # admin implies audit
        assert client.get("/audit", params={"limit": 1}).status_code == 200


def test_an_upload_job_s_writes_are_audited_as_its_maker_s_from_the_job(live: Any) -> None:
    files = [("files", ("visitors.md", b"# Visitors\n\nVisitors sign in at the front desk."))]
    with live.client("a_ingest") as client:
        r = client.post("/collections/handbook/documents", files=files, data={"acl": "a"})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        assert client.get(f"/ingest-jobs/{job_id}", params={"wait": 30}).json()["status"] == "succeeded"
    with live.client("admin") as client:
        ingests = client.get("/audit", params={"action": "ingest", "collection": "handbook", "limit": 1000}).json()
    (mine,) = [e for e in ingests if e["origin"] == f"job {job_id}"]
    assert mine["principal"] == f"key:{live.keys['a_ingest'].split('_')[1]}"
    assert [d["uri"] for d in mine["documents"]] == ["visitors.md"] and mine["documents"][0]["change"] == "added"
