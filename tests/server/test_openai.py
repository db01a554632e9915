"""The official ``openai`` Python client, unchanged, against the server over real HTTP."""

from __future__ import annotations

from typing import Any

import numpy as np
import openai
import pytest

QUESTION = "What is the budget of Project Aurora?"


def _client(live: Any, key: str | None) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key=live.keys.get(key or "", key or "missing"),
                         max_retries=0, timeout=60)


def test_chat_completion_answers_with_cited_sources(live: Any) -> None:
    client = _client(live, "a")
    completion = client.chat.completions.create(
        model="handbook", max_tokens=8,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}])
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content and choice.finish_reason == "stop"
    assert completion.model == "handbook" and completion.usage and 0 < completion.usage.completion_tokens <= 8
    extra: dict[str, Any] = completion.model_extra or {}
    assert extra["ragtune"]["trace_id"] and extra["ragtune"]["abstained"] is False
    assert all(s["uri"] in ("aurora.md", "office.md") for s in extra["sources"])


def test_chat_completion_streams(live: Any) -> None:
    client = _client(live, "a")
    stream = client.chat.completions.create(model="ragtune", max_tokens=6, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body={"collection": "handbook", "top_k": 3},
                                            messages=[{"role": "user", "content": QUESTION}])
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 2
    final = next(c for c in chunks if c.choices and c.choices[0].finish_reason == "stop")
    assert "sources" in (final.model_extra or {})
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 6


def test_chat_completion_with_the_extractive_generator_and_group_acls(live: Any) -> None:
    """Group b's key never gets group a's content through the OpenAI endpoint either."""
    for key, visible in (("a", True), ("b", False)):
        completion = _client(live, key).chat.completions.create(
            model="handbook", messages=[{"role": "user", "content": QUESTION}],
            extra_body={"filters": {"team": ["a", "b", "all"]}, "top_k": 5, "generator": "extractive"})
        text = completion.model_dump_json()
        assert ("four million" in text) is visible and ("aurora.md" in text) is visible


def test_errors_reach_the_client_as_its_own_exceptions(live: Any) -> None:
    with pytest.raises(openai.AuthenticationError) as missing:
        _client(live, None).models.list()
    assert "API key" in str(missing.value)
    with pytest.raises(openai.AuthenticationError):
        _client(live, "revoked").models.list()
    with pytest.raises(openai.NotFoundError) as unknown:
        _client(live, "a").chat.completions.create(model="no-such-collection",
                                                   messages=[{"role": "user", "content": "hi"}])
    assert "no collection named" in str(unknown.value)
    with pytest.raises(openai.BadRequestError) as too_many:
        _client(live, "a").chat.completions.create(model="handbook", messages=[{"role": "user", "content": "hi"}],
                                                   extra_body={"top_k": 10_000})
    assert "server.max_top_k" in str(too_many.value)


def test_embeddings_match_the_embedder(live: Any) -> None:
    client = _client(live, "a")
    texts = ["The office opens at nine.", "Aurora ships in March."]
    default = client.embeddings.create(model="ragtune", input=texts)  # the client asks for base64
    floats = client.embeddings.create(model=live.settings.ingest.embedder, input=texts, encoding_format="float")
    expected = live.engine.embedder.embed_batch(texts)
    for response in (default, floats):
        got = np.array([d.embedding for d in response.data], dtype=np.float32)
        assert got.shape == (2, 384) and np.allclose(got, expected, atol=1e-5)
        assert response.usage.prompt_tokens > 0
    single = client.embeddings.create(model="ragtune", input="one text")
    assert len(single.data) == 1
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="x")


def test_models_lists_collections_and_the_embedder(live: Any) -> None:
    models = {m.id: m for m in _client(live, "b").models.list()}
    assert "handbook" in models and live.settings.ingest.embedder in models
    assert models["handbook"].owned_by == "ragtune"
