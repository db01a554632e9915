"""Models by name through the OpenAI-compatible API (issue 18, item 3), with the official ``openai``
client over real HTTP: ``/v1/models`` lists the served generators (a registered model by its
``registry:NAME@ALIAS``) apart from the collections and the embedder; a chat completion chooses the
model by ``model`` and the collection by ``collection`` or ``MODEL+kb:COLLECTION``; the answer and
its trace record the registered version, alias and adapter hash; a server without auth takes any
key. The registered model is the session's real LoRA run (``tool_run``), registered in the real
MLflow registry on the module's PostgreSQL database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from ragtune.models import Principal
from tests.helpers import adapter_sha256
from tests.server.conftest import running

QUESTION = "What is the budget of Project Aurora?"
SERVED = "registry:acme@production"


@pytest.fixture(scope="module")
def acme(tool_run: Any, server_settings: Any) -> Any:
    """The session's LoRA run registered as model ``acme``, version 1, promoted to production, and
    as ``acme-chat``. The run trained on plain chat rows, so its adapter records the ``chat`` prompt
    format, which ``ask`` refuses (``acme-chat`` shows it); ``acme``'s copy records the sources
    format instead, because the naming and lineage tested with it need a model ``ask`` serves
    (``tests/finetune/test_rag_format.py`` trains a real one)."""
    from ragtune.finetune.lifecycle.registry import ModelRegistry
    from ragtune.generate.prompt import SOURCES_FORMAT, SYSTEM_PROMPT, write_prompt_format
    from ragtune.models import PromptFormat
    from tests.finetune.tuned import copy_run

    registry = ModelRegistry(server_settings)
    chat = copy_run(tool_run, server_settings.data_dir / "runs", "acme-chat-run")
    registry.promote("acme-chat", registry.register(chat.path, "acme-chat").version)
    run = copy_run(tool_run, server_settings.data_dir / "runs", "acme-run")
    write_prompt_format(Path(run.adapter), PromptFormat(SOURCES_FORMAT, SYSTEM_PROMPT))
    version = registry.register(run.path, "acme")
    registry.promote("acme", version.version)
    return registry.version("acme", version.version)


@pytest.fixture(scope="module")
def open_server(engine: Any, server_settings: Any, acme: Any) -> Iterator[str]:
    """A server without auth that serves, besides its configured SmolLM2, the production version of
    ``acme`` (listed by its alias) and ``ghost`` (listed, never registered)."""
    from ragtune.server.app import create_app

    settings = server_settings.replace(server={"generators": f"{SERVED}, registry:ghost, registry:acme-chat",
                                               "auth": "off"})
    with running(create_app(engine, settings, auth=False, start_worker=False), settings) as url:
        yield url


def _client(url: str, key: str = "sk-anything") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=300)


def _lineage(acme: Any, tool_run: Any) -> dict[str, Any]:
    """What the server shows of the answer's lineage: no folders of the server."""
    return {"generator": SERVED, "base": tool_run.base, "base_sha256": tool_run.base_hash,
            "adapter": {"sha256": adapter_sha256(acme.adapter), "label": "acme/1", "registry": "acme/1",
                        "alias": "production", "run_id": "acme-run"}}


def test_models_lists_served_generators_apart_from_collections(open_server: str, acme: Any, engine: Any) -> None:
    listed = list(_client(open_server).models.list())
    kinds = [m.model_extra["ragtune_kind"] for m in listed if m.model_extra]
    assert kinds == sorted(kinds, key=["generator", "collection", "embedder"].index)  # generators first
    by_id = {m.id: m.model_extra or {} for m in listed}
    generators = [m.id for m in listed if by_id[m.id]["ragtune_kind"] == "generator"]
    assert generators == ["smollm2", SERVED, "registry:ghost@production", "registry:acme-chat@production", "extractive",
                          "reader"]
    assert by_id["smollm2"]["ragtune_default"] is True and by_id[SERVED]["ragtune_default"] is False
    assert by_id[SERVED]["ragtune_registry"] == {
        "name": "acme", "version": 1, "alias": "production", "run_id": "acme-run", "base": acme.base,
        "adapter_sha256": adapter_sha256(acme.adapter)}
    ghost = by_id["registry:ghost@production"]["ragtune_registry"]
    assert ghost["version"] is None and "ghost" in ghost["error"]
    assert by_id["handbook"]["ragtune_kind"] == "collection"
    assert by_id[engine.settings.ingest.embedder]["ragtune_kind"] == "embedder"
    assert "registry:acme/1" not in by_id  # a version nobody listed is not served


def test_a_registered_model_answers_by_name_and_its_lineage_is_recorded(
        open_server: str, acme: Any, tool_run: Any, engine: Any, server_settings: Any) -> None:
    expected = _lineage(acme, tool_run)
    registered_from = server_settings.data_dir / "runs" / "acme-run" / "adapter"
    assert expected["adapter"]["sha256"] == adapter_sha256(registered_from)  # the registered copy: same bytes
    # ... and not the session run's: that records the chat prompt format, which the hash covers
    assert expected["adapter"]["sha256"] != adapter_sha256(tool_run.adapter)
    completion = _client(open_server).chat.completions.create(
        model=SERVED, max_tokens=8, extra_body={"collection": "handbook"},
        messages=[{"role": "user", "content": QUESTION}])
    assert completion.model == SERVED and completion.choices[0].message.content
    extra = (completion.model_extra or {})["ragtune"]
    assert extra["collection"] == "handbook" and extra["generator"] == f"{SERVED} (acme/1)"
    assert extra["lineage"] == expected
    assert all(s["uri"] in ("aurora.md", "office.md", "borealis.md") for s in (completion.model_extra or {})["sources"])
    # The trace holds the same lineage; over HTTP without the server's folders, in the store with them.
    shown = httpx.get(f"{open_server}/traces/{extra['trace_id']}", timeout=60).json()
    assert shown["params"]["lineage"] == expected and shown["collection"] == "handbook"
    stored = engine.traces.get(extra["trace_id"], Principal.system())["params"]["lineage"]
    assert stored["adapter"] == {**expected["adapter"], "path": acme.adapter}

    # The same model by another spelling and the collection in ``model``, streamed.
    stream = _client(open_server).chat.completions.create(
        model="registry:acme+kb:handbook", max_tokens=4, stream=True,
        messages=[{"role": "user", "content": QUESTION}])
    final = next(c for c in stream if c.choices and c.choices[0].finish_reason == "stop")
    assert final.model == "registry:acme+kb:handbook"
    assert (final.model_extra or {})["ragtune"]["lineage"] == expected


def test_models_that_are_not_served_are_refused_by_name(open_server: str, acme: Any) -> None:
    client = _client(open_server)
    ask = [{"role": "user", "content": QUESTION}]
    for model in ("registry:acme/1", "registry:nope@production", "registry:acme+kb:handbook+kb:x"):
        with pytest.raises(openai.NotFoundError) as refused:
            client.chat.completions.create(model=model, messages=ask, max_tokens=4)
        assert repr(model.rsplit("+kb:", 1)[0]) in str(refused.value) and "server.generators" in str(refused.value)
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-4o", messages=ask, max_tokens=4)
    assert "no collection named 'gpt-4o', and no model of that name" in str(unknown.value)
    with pytest.raises(openai.NotFoundError, match="no collection named 'nope'"):
        client.chat.completions.create(model=f"{SERVED}+kb:nope", messages=ask, max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="name it once"):
        client.chat.completions.create(model=f"{SERVED}+kb:handbook", messages=ask, max_tokens=4,
                                       extra_body={"collection": "other"})
    with pytest.raises(openai.BadRequestError, match="name different generators"):
        client.chat.completions.create(model=SERVED, messages=ask, max_tokens=4, extra_body={"generator": "smollm2"})
    with pytest.raises(openai.NotFoundError, match="no version with alias 'production'"):
        client.chat.completions.create(model="registry:ghost+kb:handbook", messages=ask, max_tokens=4)
    # a model trained on plain chat rows is not given retrieved sources: 400, naming the fix
    with pytest.raises(openai.BadRequestError) as mismatch:
        client.chat.completions.create(model="registry:acme-chat+kb:handbook", messages=ask, max_tokens=4)
    assert mismatch.value.status_code == 400 and (mismatch.value.body or {}).get("code") == "prompt_format_mismatch"
    assert "trained on plain chat prompts" in str(mismatch.value) and "--rag-format" in str(mismatch.value)


def test_a_collection_as_model_still_works(open_server: str) -> None:
    completion = _client(open_server).chat.completions.create(
        model="handbook", messages=[{"role": "user", "content": QUESTION}], extra_body={"generator": "extractive"})
    extra = (completion.model_extra or {})["ragtune"]
    assert completion.model == "handbook" and extra["collection"] == "handbook"
    assert extra["lineage"] == {"generator": "extractive", "base": None, "base_sha256": None, "adapter": None}


def test_without_auth_any_key_or_none_is_taken(open_server: str, engine: Any, server_settings: Any,
                                               keys: dict[str, str]) -> None:
    for headers in ({}, {"Authorization": "Bearer sk-anything"}, {"Authorization": "Bearer EMPTY"},
                    {"X-API-Key": "not-a-key"}, {"Authorization": f"Bearer {keys['a']}"}):
        r = httpx.get(f"{open_server}/v1/models", headers=headers, timeout=60)
        assert r.status_code == 200, (headers, r.text)
    # A key of ours is still checked there: its groups apply, and a revoked one is refused, never
    # quietly turned into the operator.
    seen = {m["id"] for m in httpx.get(f"{open_server}/v1/models", timeout=60,
                                       headers={"Authorization": f"Bearer {keys['a']}"}).json()["data"]}
    assert "handbook" in seen
    revoked = httpx.get(f"{open_server}/v1/models", headers={"Authorization": f"Bearer {keys['revoked']}"}, timeout=60)
    assert revoked.status_code == 401 and "revoked" in revoked.json()["detail"]
    # With auth on, nothing changes: a key that is not ours is malformed.
    from ragtune.server.app import create_app

    with running(create_app(engine, server_settings, auth=True, start_worker=False), server_settings) as url:
        with pytest.raises(openai.AuthenticationError, match="malformed API key"):
            _client(url).models.list()
        assert len(_client(url, keys["b"]).models.list().data) > 0
