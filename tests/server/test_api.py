"""The REST API over real HTTP: collections, documents, search, ask (JSON and Server-Sent Events),
datasets, and the problem responses with their stable codes and limits."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest


def _problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["code"] == code and body["status"] == status
    assert body["type"] == f"urn:ragtune:problem:{code}" and body["title"] and body["detail"]
    return body


def test_openapi_spec_and_health_are_served(live: Any) -> None:
    with live.client() as client:
        spec = client.get("/openapi.json").json()
        assert {"/collections/{collection}/search", "/collections/{collection}/ask", "/v1/chat/completions",
                "/v1/embeddings", "/v1/models", "/ingest-jobs/{job_id}", "/traces", "/datasets"} <= set(spec["paths"])
        assert "HTTPBearer" in spec["components"]["securitySchemes"]
        assert client.get("/health").json() == {"status": "ok", "version": "0.1.0", "auth": True}


@pytest.mark.parametrize("method, path, body, status, code, detail", [
    ("POST", "/collections/nope/search", {"query": "x"}, 404, "not_found", "no collection named 'nope'"),
    ("POST", "/collections/handbook/search", {"query": "x", "top_k": 5000}, 400, "limit_exceeded",
     "top_k must be between 1 and 50 (server.max_top_k), got 5000"),
    ("POST", "/collections/handbook/search", {"query": "x", "top_k": 0}, 400, "limit_exceeded", "got 0"),
    ("POST", "/collections/handbook/ask", {"question": "x", "top_k": 51}, 400, "limit_exceeded", "max_top_k"),
    ("POST", "/collections/handbook/ask", {"question": "x", "max_tokens": 999}, 400, "limit_exceeded",
     "max_tokens must be between 1 and 16"),
    ("POST", "/collections/handbook/ask", {"question": "x", "generator": "/etc/passwd"}, 400, "config_error",
     "not served here"),
    ("POST", "/collections/handbook/search", {"query": ""}, 422, "invalid_request", "query"),
    ("POST", "/collections/handbook/search", {"query": "x", "filters": ["no operator"]}, 400, "query_error",
     "cannot parse filter"),
    ("POST", "/collections/handbook/search", {"query": "x", "filters": [{"key": "n", "op": "gt", "value": "abc"}]},
     400, "query_error", "a range needs a number or an ISO date"),
    ("GET", "/collections/handbook/documents/999999", None, 404, "not_found", "no document 999999"),
    ("GET", "/ingest-jobs/424242", None, 404, "not_found", "no ingest job 424242"),
    ("GET", "/datasets/none", None, 404, "not_found", "no dataset named 'none'"),
    ("GET", "/no/such/route", None, 404, "not_found", "Not Found"),
    ("DELETE", "/collections/handbook/search", None, 405, "method_not_allowed", "Method Not Allowed"),
])
def test_errors_are_problem_responses_with_stable_codes(live: Any, method: str, path: str, body: Any, status: int,
                                                        code: str, detail: str) -> None:
    with live.client("admin") as client:
        problem = _problem(client.request(method, path, json=body), status, code)
    assert detail in problem["detail"], problem
    assert problem.get("instance") == path


def test_request_size_is_limited(live: Any) -> None:
    limit = live.settings.server.max_request_bytes
    big = {"query": "x" * (limit + 10)}
    with live.client("admin") as client:
        problem = _problem(client.post("/collections/handbook/search", json=big), 413, "request_too_large")
        assert problem["limit"] == "max_request_bytes"

        def chunked() -> Any:  # no Content-Length: the server counts as it reads
            payload = json.dumps(big).encode()
            for i in range(0, len(payload), 65536):
                yield payload[i:i + 65536]

        r = client.post("/collections/handbook/search", content=chunked(), headers={"Content-Type": "application/json"})
        _problem(r, 413, "request_too_large")


def test_collections_lifecycle(live: Any) -> None:
    with live.client("admin") as admin, live.client("a") as reader:
        made = admin.post("/collections", json={"name": "scratch"})
        assert made.status_code == 201 and made.json()["name"] == "scratch" and made.json()["dimension"] == 384
        assert admin.post("/collections", json={"name": "scratch"}).status_code == 201  # idempotent
        assert "scratch" in {c["name"] for c in admin.get("/collections").json()}
        # a reader sees a collection once it holds a document the reader may read (issue 14)
        assert "scratch" not in {c["name"] for c in reader.get("/collections").json()}
        assert reader.get("/collections/handbook").json()["chunks"] >= 2
        _problem(admin.post("/collections", json={"name": "../bad"}), 422, "invalid_request")
        assert admin.delete("/collections/scratch").status_code == 204
        _problem(reader.get("/collections/scratch"), 404, "not_found")


def test_search_returns_hits_with_offsets_and_a_trace(live: Any) -> None:
    with live.client("a") as client:
        r = client.post("/collections/handbook/search", json={"query": "when does the office open", "top_k": 2,
                                                              "mode": "hybrid", "filters": {"team": "all"}})
    body = r.json()
    assert r.status_code == 200 and body["mode"] == "hybrid" and body["trace_id"]
    hit = body["hits"][0]
    assert hit["uri"] == "office.md" and hit["metadata"]["team"] == "all"
    assert hit["text"] and hit["end"] > hit["start"] and set(hit["scores"]) <= {"dense", "bm25"}


def test_ask_returns_a_cited_answer(live: Any) -> None:
    with live.client("a") as client:
        r = client.post("/collections/handbook/ask", json={"question": "What is the budget of Project Aurora?",
                                                           "generator": "extractive"})
    answer = r.json()
    assert r.status_code == 200 and not answer["abstained"] and "four million euros" in answer["answer"]
    assert answer["citations"][0]["uri"] == "aurora.md" and answer["trace_id"]


def _sse(text: str) -> list[tuple[str, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        events.append((fields.get("event", "message"), json.loads(fields["data"])))
    return events


def test_ask_streams_server_sent_events(live: Any) -> None:
    """The real local model streams a few tokens, then the whole answer with its sources."""
    with live.client("a") as client, client.stream(
            "POST", "/collections/handbook/ask",
            json={"question": "What is the budget of Project Aurora?", "max_tokens": 6, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = _sse(r.read().decode())
    kinds = [k for k, _ in events]
    assert kinds[-1] == "answer" and kinds.count("token") >= 2 and set(kinds) == {"token", "answer"}
    answer = events[-1][1]
    assert answer["answer"] == "".join(d["text"] for k, d in events if k == "token")
    assert answer["model"] != "extractive" and answer["usage"]["completion_tokens"] <= 6
    assert answer["sources"][0]["uri"] == "aurora.md"


def test_ask_streams_with_the_accept_header_too(live: Any) -> None:
    with live.client("b") as client:
        r = client.post("/collections/handbook/ask", json={"question": "Where is the launch code of Borealis kept?",
                                                           "generator": "extractive"},
                        headers={"Accept": "text/event-stream"})
    events = _sse(r.text)
    assert [k for k, _ in events] == ["token", "answer"] and "vault" in events[-1][1]["answer"]


def test_documents_list_show_and_delete(live: Any) -> None:
    with live.client("admin") as admin, live.client("a_ingest") as ingester:
        admin.post("/collections", json={"name": "docs-crud"})
        r = admin.post("/collections/docs-crud/documents", params={"wait": 30},
                       files=[("files", ("one.md", b"# One\n\nThe first file talks about apples.")),
                              ("files", ("two.md", b"# Two\n\nThe second file talks about pears."))],
                       data={"acl": "a", "metadata": json.dumps({"kind": "fruit"})})
        assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
        docs = ingester.get("/collections/docs-crud/documents").json()
        assert [d["uri"] for d in docs] == ["one.md", "two.md"]
        assert docs[0]["acl"] == ["a"] and docs[0]["metadata"]["kind"] == "fruit" and docs[0]["chunk_count"] == 1
        assert [d["uri"] for d in ingester.get("/collections/docs-crud/documents",
                                               params={"prefix": "tw"}).json()] == ["two.md"]
        shown = ingester.get(f"/collections/docs-crud/documents/{docs[0]['id']}", params={"text": True}).json()
        assert "apples" in shown["text"] and shown["chunks"][0]["text"].endswith("apples.")
        assert ingester.delete(f"/collections/docs-crud/documents/{docs[0]['id']}").status_code == 204
        assert [d["uri"] for d in ingester.get("/collections/docs-crud/documents").json()] == ["two.md"]
        with live.client("b") as b:  # another group sees nothing of it, not even the collection
            _problem(b.get("/collections/docs-crud/documents"), 404, "not_found")
            assert b.delete(f"/collections/docs-crud/documents/{docs[1]['id']}").status_code == 403  # no scope


def test_datasets_are_read_only_views(live: Any) -> None:
    from ragtune.finetune.data.store import DatasetStore
    from ragtune.finetune.data.versions import ImportOptions

    rows = "\n".join(json.dumps({"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                              {"role": "assistant", "content": f"It is {2 * i}."}]})
                     for i in range(12))
    store = DatasetStore(live.engine.db, cache_dir=live.settings.resolved_cache_dir)
    # Public: every read key may read it (the default, admins only, is tested in test_dataset_acl.py).
    store.import_bytes(rows.encode(), name="sums", source="sums.jsonl", options=ImportOptions(format="chat", acl=()))
    with live.client("a") as client:
        listed = client.get("/datasets").json()
        assert [(d["name"], d["version"], d["row_count"]) for d in listed] == [("sums", 1, 12)]
        shown = client.get("/datasets/sums").json()
        assert shown["report"] and shown["valid"] in (True, False)
        page = client.get("/datasets/sums/rows", params={"limit": 5, "offset": 10}).json()
        assert page["total"] == 12 and len(page["rows"]) == 2 and page["rows"][0]["messages"][0]["role"] == "user"
        assert client.post("/datasets", json={}).status_code == 405
        assert client.delete("/datasets/sums").status_code == 405
