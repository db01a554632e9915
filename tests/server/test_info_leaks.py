"""A caller learns nothing about what it cannot read (issue 14, items 10 and 11): an admin's trace is
not shown to other keys even when it lists no chunk; collection lists, counts and /v1/models cover
only documents the caller may read; a collection of hidden documents answers exactly like one that
does not exist, on every route that names a collection."""

from __future__ import annotations

from typing import Any

import pytest

from ragtune.models import LoadedDocument


@pytest.fixture(scope="module")
def secret_collection(engine: Any) -> str:
    engine.ingest_documents([LoadedDocument(uri="layoffs.md", text="The 2027 layoffs list: forty names.")],
                            collection="layoffs-2027", acl=["b"])
    return "layoffs-2027"


def test_an_admins_trace_is_not_shown_to_other_keys_even_without_hits(live: Any) -> None:
    with live.client("admin") as admin, live.client("a") as a, live.client("b") as b:
        none = admin.post("/collections/handbook/search",
                          json={"query": "HRSECRETOTTER reorganisation", "mode": "bm25"}).json()
        assert none["hits"] == [] and none["trace_id"]
        asked = admin.post("/collections/handbook/ask", json={"question": "Who is on the HRSECRETOTTER list?",
                                                              "generator": "extractive"}).json()
        for client in (a, b):
            listed = client.get("/traces", params={"limit": 200}).json()
            assert not {none["trace_id"], asked["trace_id"]} & {t["id"] for t in listed}
            assert "HRSECRETOTTER" not in str(listed)
            for trace_id in (none["trace_id"], asked["trace_id"]):
                assert client.get(f"/traces/{trace_id}").status_code == 404
        assert admin.get(f"/traces/{none['trace_id']}").status_code == 200
        # a key's own zero-hit trace stays its own to read
        mine = a.post("/collections/handbook/search", json={"query": "nothing matches zqxj", "mode": "bm25"}).json()
        assert a.get(f"/traces/{mine['trace_id']}").status_code == 200


def test_collections_and_counts_cover_only_readable_documents(live: Any, secret_collection: str) -> None:
    with live.client("admin") as admin, live.client("a") as a, live.client("b") as b:
        everything = {c["name"]: c for c in admin.get("/collections").json()}
        assert secret_collection in everything and everything["handbook"]["documents"] >= 3
        mine = {c["name"]: c for c in a.get("/collections").json()}
        assert secret_collection not in mine
        visible = a.get("/collections/handbook/documents", params={"limit": 1000}).json()
        assert mine["handbook"]["documents"] == len(visible) < everything["handbook"]["documents"]
        assert mine["handbook"]["chunks"] == sum(d["chunk_count"] for d in visible)
        assert a.get("/collections/handbook").json() == mine["handbook"]
        models = {m["id"] for m in a.get("/v1/models").json()["data"]}
        assert "handbook" in models and secret_collection not in models
        assert secret_collection in {m["id"] for m in b.get("/v1/models").json()["data"]}
        assert secret_collection in {m["id"] for m in admin.get("/v1/models").json()["data"]}


ROUTES = [
    ("GET", "/collections/{c}", None),
    ("GET", "/collections/{c}/documents", None),
    ("POST", "/collections/{c}/search", {"query": "layoffs list names"}),
    ("POST", "/collections/{c}/ask", {"question": "Who is on the layoffs list?", "generator": "extractive"}),
    ("POST", "/v1/chat/completions", {"model": "{c}", "messages": [{"role": "user", "content": "layoffs list?"}]}),
]


def _call(client: Any, method: str, path: str, body: Any, name: str) -> Any:
    if body is not None:
        import json

        body = json.loads(json.dumps(body).replace("{c}", name))
    return client.request(method, path.replace("{c}", name), json=body)


@pytest.mark.parametrize("method, path, body", ROUTES)
def test_a_collection_of_hidden_documents_answers_like_a_missing_one(live: Any, secret_collection: str,
                                                                      method: str, path: str, body: Any) -> None:
    with live.client("a") as a, live.client("b") as b:
        hidden = _call(a, method, path, body, secret_collection)
        missing = _call(a, method, path, body, "no-such-collection")
        assert hidden.status_code == missing.status_code == 404
        shape = {k: v for k, v in hidden.json().items() if k not in ("detail", "instance", "error")}
        assert shape == {k: v for k, v in missing.json().items() if k not in ("detail", "instance", "error")}
        assert hidden.json()["detail"].replace(secret_collection, "X") == \
            missing.json()["detail"].replace("no-such-collection", "X")
        assert "forty" not in hidden.text
        assert _call(b, method, path, body, secret_collection).status_code == 200  # b reads it
