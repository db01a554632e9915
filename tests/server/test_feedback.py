"""Feedback on answers (issue 19) over HTTP with auth on: stored with the trace and shown in it, a
``feedback`` span carrying the ``gen_ai.evaluation.result`` event, the trace list's feedback
filter, the OpenAI completion id as the response id, and the refusals: an answer the caller may
not see is a 404 like a missing one, another's answer it may see is a 403, empty or malformed
feedback is a 400/422 naming the field. Another's answer is a 403, whoever shows its id.
"""

from __future__ import annotations

from typing import Any

import openai

from ragtune.server.auth import KeyStore


def _ask(live: Any, key: str, question: str, **more: Any) -> dict[str, Any]:
    with live.client(key) as client:
        r = client.post("/collections/handbook/ask", json={"question": question, "generator": "extractive", **more})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_feedback_is_stored_with_the_trace_and_sent_as_an_evaluation_event(live: Any) -> None:
    answer = _ask(live, "a", "What is the budget of Project Aurora?")
    trace_id = answer["trace_id"]
    with live.client("a") as client:
        r = client.post("/feedback", json={"response_id": trace_id, "thumbs": "down", "label": "wrong-figure",
                                           "comment": "the budget is five million", "correction": "Five million."})
        assert r.status_code == 201, r.text
        assert r.json()["trace_id"] == trace_id and r.json()["thumbs"] == -1
        trace = client.get(f"/traces/{trace_id}").json()
        negative = client.get("/traces", params={"feedback": "negative", "since_hours": 1}).json()
        positive = client.get("/traces", params={"feedback": "positive"}).json()
        stats = client.get("/traces/stats", params={"since_hours": 1})
        series = client.get("/traces/series", params={"since_hours": 1, "bucket_minutes": 5})
        bad_bucket = client.get("/traces/series", params={"bucket_minutes": 0})
        mine = client.get("/traces", params={"kind": "ask", "abstained": answer["abstained"],
                                             "model": "extractive", "slower_than_ms": 0}).json()
    assert [(f["thumbs"], f["label"], f["correction"]) for f in trace["feedback"]] == [
        (-1, "wrong-figure", "Five million.")]
    (span,) = [s for s in trace["spans"] if s["name"] == "feedback"]
    root = next(s for s in trace["spans"] if s["parent_id"] is None)
    assert span["parent_id"] == root["span_id"]
    (event,) = span["events"]
    assert event["name"] == "gen_ai.evaluation.result"
    assert event["attributes"] == {"gen_ai.evaluation.name": "user_feedback", "gen_ai.evaluation.score.value": 0.0,
                                   "gen_ai.evaluation.score.label": "wrong-figure"}
    assert trace_id in [t["id"] for t in negative] and trace_id not in [t["id"] for t in positive]
    assert trace_id in [t["id"] for t in mine]
    assert stats.status_code == 200, stats.text
    assert stats.json()["feedback"]["negative"] >= 1 and stats.json()["requests"]["ask"]["requests"] >= 1
    assert series.status_code == 200 and bad_bucket.status_code == 422, (series.text, bad_bucket.text)
    buckets = series.json()
    assert sum(r["requests"] for r in buckets["requests"] if r["kind"] == "ask") == \
        stats.json()["requests"]["ask"]["requests"]
    assert sum(r["negative"] for r in buckets["feedback"]) == stats.json()["feedback"]["negative"]
    assert {"retrieval", "prompt"} <= {r["stage"] for r in buckets["stages"]}


def test_a_completion_id_names_its_answer(live: Any) -> None:
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key=live.keys["a"], max_retries=0)
    completion = client.chat.completions.create(
        model="handbook", messages=[{"role": "user", "content": "When does Aurora ship its first satellite?"}],
        extra_body={"generator": "extractive"})
    trace_id = (completion.model_extra or {})["ragtune"]["trace_id"]
    assert completion.id == f"chatcmpl-{trace_id}"
    with live.client("a") as http:
        r = http.post("/feedback", json={"response_id": completion.id, "thumbs": "up", "score": 0.9})
    assert r.status_code == 201, r.text
    assert r.json()["trace_id"] == trace_id


def test_feedback_on_unknown_hidden_or_foreign_answers_is_refused_clearly(live: Any) -> None:
    secret = _ask(live, "a", "What is the budget of Project Aurora?")["trace_id"]  # shows group a's document
    # shows the public document only
    public = _ask(live, "a", "When does the office open?", filters={"team": "all"})["trace_id"]
    # an observer sees a's traces, and still did not ask them
    both = KeyStore(live.engine.db).create("observer a+b", groups=["a", "b"], scopes=["read", "observe"]).key
    with live.client(both) as client:
        foreign = client.post("/feedback", json={"response_id": public, "thumbs": "up"})
        assert client.get(f"/traces/{public}").status_code == 200
    with live.client("b") as client:
        hidden = client.post("/feedback", json={"response_id": secret, "thumbs": "up"})
        unknown = client.post("/feedback", json={"response_id": "0" * 32, "thumbs": "up"})
        malformed = client.post("/feedback", json={"response_id": "not-an-id", "thumbs": "up"})
    assert hidden.status_code == 403 and "asked by someone else" in hidden.text
    assert unknown.status_code == 404 and malformed.status_code == 404
    assert foreign.status_code == 403 and "asked by someone else" in foreign.text
    with live.client("a") as client:
        empty = client.post("/feedback", json={"response_id": public})
        bad_score = client.post("/feedback", json={"response_id": public, "score": 7})
        extra = client.post("/feedback", json={"response_id": public, "thumbs": "sideways"})
        search = client.post("/collections/handbook/search", json={"query": "office"}).json()["trace_id"]
        not_an_answer = client.post("/feedback", json={"response_id": search, "thumbs": "up"})
        stored = client.get(f"/traces/{public}").json()["feedback"]
    assert empty.status_code == 400 and "empty feedback" in empty.text
    assert bad_score.status_code == 422 and "score" in bad_score.text
    assert extra.status_code == 422 and "thumbs" in extra.text
    assert not_an_answer.status_code == 400 and "not an answer" in not_an_answer.text
    assert stored == []  # nothing refused was stored
