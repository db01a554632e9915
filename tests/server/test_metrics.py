"""Prometheus metrics (issue 19): ``GET /metrics`` on a real server, scraped over HTTP and read
with ``prometheus_client``'s own parser, after real searches and answers (the real embedder, the
real SmolLM2 for a generated answer). Only a key with the ``observe`` (or ``admin``) scope reads
them."""

from __future__ import annotations

from typing import Any

import pytest

from ragtune.server.auth import KeyStore


def _scrape(live: Any, key: str) -> dict[str, list[Any]]:
    from prometheus_client.parser import text_string_to_metric_families

    with live.client(key) as client:
        r = client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {f.name: f.samples for f in text_string_to_metric_families(r.text)}


def _value(samples: dict[str, list[Any]], family: str, sample: str, **labels: str) -> float:
    return sum(s.value for s in samples.get(family, []) if s.name == sample
               and all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.fixture(scope="module")
def observer(live: Any) -> str:
    return KeyStore(live.engine.db).create("prometheus", scopes=["observe"]).key


def test_metrics_count_requests_stages_tokens_and_answers(live: Any, observer: str) -> None:
    before = _scrape(live, observer)
    with live.client("a") as client:
        for _ in range(3):
            assert client.post("/collections/handbook/search", json={"query": "Aurora budget"}).status_code == 200
        r = client.post("/collections/handbook/ask", json={"question": "What is the budget of Project Aurora?",
                                                            "max_tokens": 8})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert client.post("/collections/nowhere/search", json={"query": "x"}).status_code == 404
    live.engine.tracing.flush()
    after = _scrape(live, observer)

    def grew(family: str, sample: str, **labels: str) -> float:
        return _value(after, family, sample, **labels) - _value(before, family, sample, **labels)

    route = "/collections/{collection}/search"
    assert grew("ragtune_http_requests", "ragtune_http_requests_total", route=route, method="POST", status="200") == 3
    assert grew("ragtune_http_requests", "ragtune_http_requests_total", route=route, status="404") == 1
    assert grew("ragtune_http_request_seconds", "ragtune_http_request_seconds_count", route=route) == 4
    # from the spans: three searches, the one that failed (its span ends with the error) and the
    # answer's own retrieval; the answer's generation and its outcome
    assert grew("ragtune_stage_seconds", "ragtune_stage_seconds_count", stage="retrieval") == 5
    assert grew("ragtune_stage_seconds", "ragtune_stage_seconds_count", stage="generate") == 1
    assert grew("ragtune_generation_tokens", "ragtune_generation_tokens_total", direction="output") == \
        answer["usage"]["completion_tokens"] > 0
    outcome = "abstained" if answer["abstained"] else "answered"
    assert grew("ragtune_answers", "ragtune_answers_total", outcome=outcome) == 1
    assert grew("ragtune_answers_grounded", "ragtune_answers_grounded_total") == float(answer["grounded"])
    # the span exporter's own counts
    assert _value(after, "ragtune_spans_exported", "ragtune_spans_exported_total", destination="postgresql") > 0
    assert _value(after, "ragtune_spans_dropped", "ragtune_spans_dropped_total", destination="postgresql") == 0


def test_metrics_need_the_observe_scope(live: Any, observer: str) -> None:
    with live.client("a") as client:  # a reader of documents is not an operator
        r = client.get("/metrics")
    assert r.status_code == 403 and "observe" in r.text
    with live.client() as client:
        assert client.get("/metrics").status_code == 401
    assert _scrape(live, "admin")  # admin implies observe
