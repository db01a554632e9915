"""API keys, principals and scopes against the real server: missing, wrong, malformed and revoked
keys, keys of the wrong group, attempts to escape the ACL through filters or extra fields, scopes,
rate limits, and the auth default."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ragtune.settings import Settings

SEARCH = {"query": "Aurora budget euros", "top_k": 10}


def _uris(response: Any) -> set[str]:
    assert response.status_code == 200, response.text
    return {h["uri"] for h in response.json()["hits"]}


@pytest.mark.parametrize("headers, detail", [
    ({}, "API key is required"),
    ({"Authorization": "Bearer rt_0123456789ab_" + "x" * 43}, "invalid API key"),
    ({"Authorization": "Bearer not-a-key"}, "malformed API key"),
    ({"X-API-Key": "rt_0123456789ab_" + "y" * 43}, "invalid API key"),
    ({"Authorization": "Basic dXNlcjpwYXNz"}, "unsupported Authorization header"),
])
def test_requests_without_a_valid_key_get_no_data(live: Any, headers: dict[str, str], detail: str) -> None:
    with live.client() as client:
        for method, path, body in [("GET", "/collections", None), ("POST", "/collections/handbook/search", SEARCH),
                                   ("GET", "/traces", None), ("GET", "/v1/models", None),
                                   ("GET", "/collections/handbook/documents", None)]:
            r = client.request(method, path, json=body, headers=headers)
            assert r.status_code == 401, (path, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.headers["www-authenticate"].startswith("Bearer")
            problem = r.json()
            assert problem["code"] == "unauthenticated" and problem["status"] == 401
            assert detail in problem["detail"]
            assert "Aurora" not in r.text and "zebra" not in r.text


def test_a_wrong_secret_for_a_real_key_id_is_refused(live: Any) -> None:
    key_id = live.keys["a"].split("_")[1]
    with live.client(f"rt_{key_id}_" + "z" * 43) as client:
        r = client.post("/collections/handbook/search", json=SEARCH)
    assert r.status_code == 401 and r.json()["detail"] == "invalid API key"


def test_a_revoked_key_is_refused(live: Any) -> None:
    with live.client("revoked") as client:
        r = client.post("/collections/handbook/search", json=SEARCH)
    assert r.status_code == 401 and "was revoked" in r.json()["detail"]


def test_revocation_takes_effect_on_the_next_request(live: Any) -> None:
    from ragtune.server.auth import KeyStore

    store = KeyStore(live.engine.db)
    made = store.create("short-lived", groups=["a"], scopes=["read"])
    with live.client(made.key) as client:
        assert client.get("/collections").status_code == 200  # verified and remembered by the server
        store.revoke(made.info.key_id)
        assert client.get("/collections").status_code == 401


def test_each_key_sees_its_groups_documents_and_the_public_ones(live: Any) -> None:
    with live.client("a") as a, live.client("b") as b, live.client("admin") as admin:
        assert _uris(a.post("/collections/handbook/search", json=SEARCH)) == {"aurora.md", "office.md"}
        assert _uris(b.post("/collections/handbook/search", json=SEARCH)) == {"borealis.md", "office.md"}
        assert _uris(admin.post("/collections/handbook/search", json=SEARCH)) == {
            "aurora.md", "borealis.md", "office.md"}
        listed = {d["uri"] for d in b.get("/collections/handbook/documents").json()}
        assert listed == {"borealis.md", "office.md"}
        aurora = next(d for d in a.get("/collections/handbook/documents").json() if d["uri"] == "aurora.md")
        r = b.get(f"/collections/handbook/documents/{aurora['id']}")
        assert r.status_code == 404 and r.json()["code"] == "not_found"
        assert a.get(f"/collections/handbook/documents/{aurora['id']}").status_code == 200


@pytest.mark.parametrize("filters", [
    {"acl": ["a"]},
    ["acl=a"],
    [{"key": "acl", "op": "in", "value": ["a", "b"]}],
    {"team": "a"},
    ["team=a|all"],
    {"team": "a' OR 1=1 --"},
    [{"key": "team", "op": "ne", "value": "nobody"}],
])
def test_filters_cannot_escape_the_acl(live: Any, filters: Any) -> None:
    with live.client("b") as b:
        r = b.post("/collections/handbook/search", json={**SEARCH, "filters": filters})
        assert "aurora.md" not in _uris(r)
        r = b.post("/collections/handbook/ask", json={"question": "What is the budget of Project Aurora?",
                                                     "filters": filters, "generator": "extractive"})
        assert r.status_code == 200 and "aurora.md" not in r.text and "four million" not in r.text


@pytest.mark.parametrize("extra", [{"groups": ["a"]}, {"principal": {"id": "x", "admin": True}}, {"admin": True},
                                   {"as_admin": True}])
def test_a_request_cannot_claim_groups_or_admin(live: Any, extra: dict[str, Any]) -> None:
    with live.client("b") as b:
        r = b.post("/collections/handbook/search", json={**SEARCH, **extra})
    assert r.status_code == 422 and r.json()["code"] == "invalid_request"


def test_traces_never_show_another_groups_content(live: Any) -> None:
    with live.client("a") as a, live.client("b") as b, live.client("admin") as admin:
        asked = a.post("/collections/handbook/ask", json={"question": "What is the budget of Project Aurora?",
                                                          "generator": "extractive"}).json()
        assert "four million" in asked["answer"]
        admin_search = admin.post("/collections/handbook/search", json=SEARCH).json()
        b_search = b.post("/collections/handbook/search", json={"query": "office hours"}).json()
        a_ids = {t["id"] for t in a.get("/traces", params={"limit": 200}).json()}
        b_ids = {t["id"] for t in b.get("/traces", params={"limit": 200}).json()}
        admin_ids = {t["id"] for t in admin.get("/traces", params={"limit": 200}).json()}
        assert asked["trace_id"] in a_ids and asked["trace_id"] not in b_ids
        assert admin_search["trace_id"] not in b_ids and admin_search["trace_id"] not in a_ids
        assert b_search["trace_id"] in b_ids and {asked["trace_id"], admin_search["trace_id"]} <= admin_ids
        assert b.get(f"/traces/{asked['trace_id']}").status_code == 404
        shown = a.get(f"/traces/{asked['trace_id']}").json()
        assert any("four million" in m["content"] for m in shown["params"]["prompt"])  # the rendered prompt
        for t in b.get("/traces", params={"limit": 200}).json():
            assert "four million" not in str(t) and "Aurora" not in str(t["results"])


def test_an_observer_sees_every_trace_with_other_groups_text_redacted(live: Any) -> None:
    """A key with the observe scope lists and opens every trace; the text of chunks outside its
    groups (the prompt's source blocks, their URIs, an answer citing them, the spans' texts) is
    redacted, their ids and scores stay; its own groups' text is shown."""
    from ragtune.server.auth import KeyStore

    observer = KeyStore(live.engine.db).create("ops in b", groups=["b"], scopes=["read", "observe"]).key
    with live.client("a") as a, live.client(observer) as ops:
        asked = a.post("/collections/handbook/ask", json={"question": "What is the budget of Project Aurora?",
                                                          "generator": "extractive"}).json()
        whole = a.get(f"/traces/{asked['trace_id']}").json()
        listed = {t["id"]: t for t in ops.get("/traces", params={"limit": 200}).json()}
        seen = ops.get(f"/traces/{asked['trace_id']}", params={"chunks": "true"}).json()
    assert asked["trace_id"] in listed and "four million" in json.dumps(whole)
    for view in (listed[asked["trace_id"]], seen):
        text = json.dumps(view)
        assert "four million" not in text and "aurora.md" not in text, text[:2000]
        assert view["redacted"] and set(view["redacted"]) <= set(whole["chunk_ids"])
        # ids and scores stay, in order
        assert [(r["chunk_id"], r["score"]) for r in view["results"]] == [
            (r["chunk_id"], r["score"]) for r in whole["results"]]
    assert "[redacted: a document outside your groups]" in json.dumps(seen["params"]["prompt"])
    assert seen["params"]["response"] == "[redacted: a document outside your groups]"
    assert all(c["uri"] != "aurora.md" for c in seen["chunks"])  # the passages: only what it may read
    # the public document's text, which the observer may read, is still shown
    assert "nine in the morning" in json.dumps(whole["params"]["prompt"])
    assert "nine in the morning" in json.dumps(seen["params"]["prompt"])


def test_scopes_guard_writes(live: Any) -> None:
    with live.client("a") as reader, live.client("a_ingest") as ingester:
        r = reader.post("/collections", json={"name": "new-one"})
        assert r.status_code == 403 and r.json()["code"] == "forbidden" and "'admin' scope" in r.json()["detail"]
        r = reader.post("/collections/handbook/documents", files={"files": ("x.md", b"# x\n\nhello")})
        assert r.status_code == 403 and "'ingest' scope" in r.json()["detail"]
        doc = reader.get("/collections/handbook/documents").json()[0]
        assert reader.delete(f"/collections/handbook/documents/{doc['id']}").status_code == 403
        assert ingester.delete("/collections/handbook").status_code == 403
        r = ingester.post("/collections/handbook/documents", files={"files": ("x.md", b"# x\n\nhello")},
                          data={"acl": "b"})
        assert r.status_code == 403 and "own groups" in r.json()["detail"]
        r = ingester.post("/collections/nowhere/documents", files={"files": ("x.md", b"# x")})
        assert r.status_code == 404


def test_rate_limit_per_key(engine: Any, server_settings: Settings, keys: dict[str, str]) -> None:
    from ragtune.server.app import create_app
    from tests.server.conftest import running

    settings = server_settings.replace(server={"rate_limit": 0.05, "rate_burst": 3})
    with running(create_app(engine, settings, auth=True), settings) as url:
        import httpx

        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys['a']}"}) as a:
            codes = [a.get("/collections").status_code for _ in range(4)]
            assert codes == [200, 200, 200, 429]
            r = a.get("/collections")
            assert r.json()["code"] == "rate_limited" and int(r.headers["retry-after"]) >= 1
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys['b']}"}) as b:
            assert b.get("/collections").status_code == 200  # another key has its own bucket


def test_auth_is_on_by_default_unless_loopback(engine: Any, server_settings: Settings) -> None:
    from ragtune.server.auth import auth_required

    for host, expected in [("127.0.0.1", False), ("localhost", False), ("::1", False), ("0.0.0.0", True),
                           ("192.168.1.10", True), ("example.org", True)]:
        assert auth_required(server_settings, host) is expected, host
    assert auth_required(server_settings, "127.0.0.1", flag=True) is True
    assert auth_required(server_settings.replace(server={"auth": "on"}), "127.0.0.1") is True
    assert auth_required(server_settings.replace(server={"auth": "off"}), "0.0.0.0") is False


def test_without_auth_a_loopback_server_serves_its_owner(engine: Any, server_settings: Settings,
                                                        keys: dict[str, str]) -> None:
    import httpx

    from ragtune.server.app import create_app
    from tests.server.conftest import running

    app = create_app(engine, server_settings.replace(server={"host": "127.0.0.1"}), start_worker=False)
    with running(app, server_settings) as url, httpx.Client(base_url=url) as client:
        assert client.get("/health").json()["auth"] is False
        assert _uris(client.post("/collections/handbook/search", json=SEARCH)) == {
            "aurora.md", "borealis.md", "office.md"}
        # a key, when given, still decides who is asking
        r = client.post("/collections/handbook/search", json=SEARCH, headers={"Authorization": f"Bearer {keys['b']}"})
        assert _uris(r) == {"borealis.md", "office.md"}


def test_keys_are_stored_only_as_salted_hashes(live: Any) -> None:
    with live.engine.db.connection() as conn:
        rows = conn.execute("SELECT key_id, salt, hash, kdf FROM api_keys").fetchall()
    secrets = [k.split("_", 2)[2] for k in live.keys.values()]
    dump = repr(rows)
    assert not any(s in dump for s in secrets)
    assert len({bytes(r["salt"]) for r in rows}) == len(rows)
    assert all(r["kdf"]["name"] == "scrypt" for r in rows)


def test_keys_cli(server_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from typer.testing import CliRunner

    from ragtune.cli.main import app

    monkeypatch.setenv("RAGTUNE_DATABASE_URL", server_settings.database_url or "")
    monkeypatch.setenv("RAGTUNE_CACHE_DIR", str(server_settings.cache_dir))
    runner = CliRunner()
    made = runner.invoke(app, ["keys", "create", "--name", "ci bot", "--groups", "a,b", "--scopes", "read,ingest",
                               "--json"])
    assert made.exit_code == 0, made.output
    created = json.loads(made.stdout)
    assert created["key"].startswith("rt_") and created["groups"] == ["a", "b"]
    assert created["scopes"] == ["ingest", "read"]
    listed = json.loads(runner.invoke(app, ["keys", "list", "--json"]).stdout)
    entry = next(k for k in listed if k["key_id"] == created["key_id"])
    assert entry["active"] and "key" not in entry and created["key"] not in json.dumps(listed)
    assert runner.invoke(app, ["keys", "revoke", created["key_id"]]).exit_code == 0
    listed = json.loads(runner.invoke(app, ["keys", "list", "--json"]).stdout)
    assert not next(k for k in listed if k["key_id"] == created["key_id"])["active"]
    bad = runner.invoke(app, ["keys", "create", "--name", "x", "--scopes", "root"])
    assert bad.exit_code == 2 and "invalid scopes" in bad.output


def test_failed_attempts_are_rate_limited_per_client(engine: Any, server_settings: Settings,
                                                     keys: dict[str, str]) -> None:
    import httpx

    from ragtune.server.app import create_app
    from tests.server.conftest import running

    settings = server_settings.replace(server={"rate_limit": 0.05, "rate_burst": 3})
    with running(create_app(engine, settings, auth=True, start_worker=False), settings) as url, \
            httpx.Client(base_url=url) as client:
        wrong = {"Authorization": "Bearer rt_0123456789ab_" + "w" * 43}
        codes = [client.get("/collections", headers=wrong).status_code for _ in range(4)]
        assert codes == [401, 401, 401, 429]
        # a valid key is not held back by the guesses from the same address
        assert client.get("/collections", headers={"Authorization": f"Bearer {keys['a']}"}).status_code == 200


def test_cors_is_configurable(engine: Any, server_settings: Settings) -> None:
    import httpx

    from ragtune.server.app import create_app
    from tests.server.conftest import running

    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    settings = server_settings.replace(server={"cors_origins": "https://app.example"})
    with running(create_app(engine, settings, auth=True, start_worker=False), settings) as url, \
            httpx.Client(base_url=url) as client:
        r = client.options("/collections/handbook/search", headers=preflight)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
        r = client.options("/collections/handbook/search", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
    with running(create_app(engine, server_settings, auth=True, start_worker=False), server_settings) as url, \
            httpx.Client(base_url=url) as client:  # off by default
        assert "access-control-allow-origin" not in client.options("/collections", headers=preflight).headers
