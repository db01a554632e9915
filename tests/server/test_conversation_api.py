"""Conversations over HTTP (issue 17): ``history`` in ``POST /collections/{c}/ask`` and the earlier
messages of ``/v1/chat/completions`` are what retrieval reads a follow-up by; bad ones are refused."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from ragtune.models import Principal
from tests.conversations import FOLLOW_UP, RIVERS, about, river_documents


@pytest.fixture(scope="module")
def rivers(live: Any) -> Any:
    live.engine.ingest_documents(river_documents(), collection="rivers", acl=[])
    return live


def _search_trace(live: Any, ask_trace_id: str) -> dict[str, Any]:
    """The answer's retrieval span, as the trace shows it."""
    return dict(live.engine.traces.get(ask_trace_id, Principal.system())["search"])


def test_ask_with_history_searches_the_follow_up(rivers: Any) -> None:
    with rivers.client("a") as client:
        for river in RIVERS:
            r = client.post("/collections/rivers/ask", json={"question": FOLLOW_UP, "generator": "extractive",
                                                             "history": about(river)})
            assert r.status_code == 200, r.text
            answer = r.json()
            assert answer["question"] == FOLLOW_UP and answer["sources"][0]["uri"] == f"{river}.md"
    trace = _search_trace(rivers, answer["trace_id"])
    assert trace["params"]["conversation"]["question"] == FOLLOW_UP and "Thames" in trace["query"]


def _chunk_of(live: Any, river: str) -> int:
    return int(live.engine.search(river, collection="rivers", mode="bm25", top_k=1).hits[0].chunk.id)


def _problem(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    return str(r.json()["detail"])


@pytest.mark.parametrize(("history", "detail"), [
    ([{"role": "robot", "content": "beep"}], "history.0.role: Input should be 'system', 'user' or 'assistant'"),
    ([{"role": "user", "content": ""}], "history.0.content: String should have at least 1 character"),
    ([{"role": "user", "content": "x" * 20_001}], "history.0.content: String should have at most 20000"),
    ([{"role": "user", "content": "hi", "name": "x"}], "history.0.name: Extra inputs are not permitted"),
    ([{"role": "user", "content": "hi"}] * 201, "history: List should have at most 200 items"),
    ("Tell me about the Rhine river.", "history: Input should be a valid list"),
])
def test_a_bad_history_is_refused_naming_it(rivers: Any, history: Any, detail: str) -> None:
    with rivers.client("a") as client:
        r = client.post("/collections/rivers/ask", json={"question": FOLLOW_UP, "generator": "extractive",
                                                         "history": history})
    assert _problem(r, 422).startswith(detail)


def test_the_history_is_capped_by_the_characters_setting(rivers: Any) -> None:
    """Within the schema's per-message limit, the whole conversation is capped by max_history_chars."""
    history = [{"role": "user", "content": "x" * 20_000}] * 6  # 120,000 characters
    with rivers.client("a") as client:
        r = client.post("/collections/rivers/ask", json={"question": FOLLOW_UP, "generator": "extractive",
                                                         "history": history})
    assert "max_history_chars" in _problem(r, 400) and r.json()["limit"] == "max_history_chars"


def test_chat_completions_search_the_last_message_with_the_earlier_ones(rivers: Any) -> None:
    client = openai.OpenAI(base_url=f"{rivers.url}/v1", api_key=rivers.keys["a"], max_retries=0, timeout=60)
    for river in RIVERS:
        completion = client.chat.completions.create(
            model="rivers", extra_body={"generator": "extractive"},
            messages=[{"role": "system", "content": "Answer briefly."}, *about(river),
                      {"role": "user", "content": FOLLOW_UP}])
        extra: dict[str, Any] = completion.model_extra or {}
        trace = _search_trace(rivers, extra["ragtune"]["trace_id"])
        assert trace["results"][0]["chunk_id"] == _chunk_of(rivers, river)
    assert trace["query"] == f"{FOLLOW_UP} {FOLLOW_UP} Tell me about the Thames river."
    # one message only: a plain search, as before conversations
    single = client.chat.completions.create(model="rivers", extra_body={"generator": "extractive"},
                                            messages=[{"role": "user", "content": FOLLOW_UP}])
    plain = _search_trace(rivers, (single.model_extra or {})["ragtune"]["trace_id"])
    assert plain["query"] == FOLLOW_UP and "conversation" not in plain["params"]
