"""One engine behind every edge: the same question through ``ragtune ask --json``, ``rt.ask`` and
``POST /collections/{c}/ask`` (and the same search through ``ragtune search --json``, ``rt.search``
and ``POST /collections/{c}/search``) gives the same sources, scores, abstention decision and answer,
with the collection's trained reranker and the project's answerability model resolved by the
engine for all three. Real PostgreSQL, real models (a tiny reranker and answerability model trained
here), the extractive generator (deterministic), a reader key of group ``a``."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ragtune.engine import Ragtune
from ragtune.evaluate.datasets import load_dataset
from ragtune.finetune.answerability import split_by_group, squad_examples, train_answerability
from ragtune.finetune.rerankers.mining import Triple
from ragtune.finetune.rerankers.training import train_reranker
from ragtune.generate.answerability import answerability_store
from ragtune.models import LoadedDocument, Principal
from ragtune.retrieve.rerank import reranker_store
from ragtune.settings import Settings
from ragtune.testing.serve import serve_in_thread
from tests.cli.runner import invoke
from tests.helpers import train_tiny_reader

COLLECTION = "handbook"
GROUP_A = [
    LoadedDocument(uri="leave.md", text="Parental leave lasts sixteen weeks at full pay. Request it from HR "
                   "at least eight weeks before the leave starts.", metadata={"team": "hr"}),
    LoadedDocument(uri="sick.md", text="Sick leave needs a doctor's note after three days. Sick leave is paid "
                   "in full for the first month.", metadata={"team": "hr"}),
]
PUBLIC = [LoadedDocument(uri="office.md", text="The office opens at nine in the morning on weekdays. "
                         "Visitors sign in at the front desk.", metadata={"team": "all"})]
GROUP_B = [LoadedDocument(uri="secret.md", text="Parental leave for the board lasts forty weeks; the vault "
                          "code is zebra-42.", metadata={"team": "board"})]
QUESTIONS = ("How long is parental leave?", "When does the office open?", "What is the vault code?")
VARIANTS = {  # name -> (CLI flags, engine keywords, request fields)
    "plain": ((), {}, {}),
    "rerank": (("--rerank",), {"reranker": True}, {"rerank": True}),
    "answerability": (("--rerank", "--answerability", "latest"), {"reranker": True, "answerability": True},
                      {"rerank": True, "answerability": True}),
    "reader": (("-g", "reader"), {"generator": "reader"}, {"generator": "reader"}),
}


@dataclass
class World:
    rt: Ragtune
    url: str
    key: str
    principal: Principal


@pytest.fixture(scope="module")
def world(module_database_url: str, cache_dir: Path, embedder: Any,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from ragtune.server.app import create_app
    from ragtune.server.auth import KeyStore

    data_dir = tmp_path_factory.mktemp("parity") / "data"
    settings = Settings.of(data_dir=data_dir, database_url=module_database_url, cache_dir=cache_dir,
                           generator="extractive", reader="none", server={"rate_limit": 0})
    # the collection's reranker and the project's answerability model, trained small and fast
    topics = ("parental leave", "sick leave", "annual leave", "study leave", "jury duty", "a sabbatical")
    train_reranker([Triple(f"how long is {t}", f"{t} lasts sixteen weeks.", f"{t} forms are on paper.")
                    for t in topics], reranker_store(data_dir, COLLECTION), epochs=1, batch_size=6,
                   learning_rate=1e-4, max_length=32)
    examples = squad_examples(load_dataset("squad", cache_dir / "packages"))
    train, held_out = split_by_group(examples)
    rng = random.Random(1)
    rows = [*rng.sample([e for e in train if e.answerable], 8), *rng.sample([e for e in train if not e.answerable], 8)]
    train_answerability(rows, answerability_store(data_dir), validation=[*held_out[:6],
                        *[e for e in held_out if not e.answerable][:6]], batch_size=8, max_length=64, source="test")
    # the project's reader, trained small on another task: only the reader variant, which asks for it
    # (`-g reader`), answers and abstains by it; the others keep the support threshold (reader=none)
    train_tiny_reader(data_dir, steps=8)
    with Ragtune(settings, embedder=embedder) as rt:
        rt.ingest_documents(GROUP_A, collection=COLLECTION, acl=["a"])
        rt.ingest_documents(PUBLIC, collection=COLLECTION, acl=[])
        rt.ingest_documents(GROUP_B, collection=COLLECTION, acl=["b"])
        key = KeyStore(rt.db).create("reader a", groups=["a"], scopes=["read"]).key
        with serve_in_thread(create_app(rt, settings, auth=True), settings) as url:
            yield World(rt, url, key, Principal(id="parity", groups=frozenset({"a"})))


@pytest.fixture
def cli_env(world: World, cache_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RAGTUNE_DATABASE_URL", str(world.rt.settings.database_url))
    monkeypatch.setenv("RAGTUNE_DATA_DIR", str(world.rt.settings.data_dir))
    monkeypatch.setenv("RAGTUNE_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("RAGTUNE_GENERATION_GENERATOR", "extractive")
    monkeypatch.setenv("RAGTUNE_GENERATION_READER", "none")
    monkeypatch.chdir(tmp_path)


def _post(world: World, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{world.url}{path}", json=body, timeout=120,
                          headers={"Authorization": f"Bearer {world.key}"})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def _cli(*args: str) -> dict[str, Any]:
    code, out, err = invoke(*args)
    assert code == 0, out + err
    result: dict[str, Any] = json.loads(out)
    return result


def _answer(fields: dict[str, Any]) -> dict[str, Any]:
    """What must agree: the answer, the decision, the citations and the sources with their scores
    (trace ids, timings and the principal's id differ by design)."""
    return {
        "answer": fields["answer"], "abstained": fields["abstained"], "grounded": fields["grounded"],
        "model": fields["model"],
        "citations": [(c["number"], c["uri"], c["chunk_id"], c["start"], c["end"]) for c in fields["citations"]],
        "sources": [(s["rank"], s["uri"], s["chunk_id"], pytest.approx(s["score"], abs=1e-5))
                    for s in fields["sources"]],
        "support": pytest.approx(fields["usage"]["question_support"], abs=1e-3),
        "answerable": pytest.approx(fields["usage"].get("answerable_probability"), abs=1e-3),
        "decided_by": fields["decided_by"],
        "no_answer": pytest.approx(fields["usage"].get("reader_no_answer"), abs=1e-3),
        "span": None if fields["span"] is None else (fields["span"]["uri"], fields["span"]["start"],
                                                     fields["span"]["end"], fields["span"]["text"]),
    }


def _hits(result: dict[str, Any]) -> dict[str, Any]:
    return {"mode": result["mode"],
            "hits": [(h["rank"], h["uri"], h["chunk_id"], pytest.approx(h["score"], abs=1e-5),
                      sorted(h["scores"])) for h in result["hits"]]}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_ask_is_the_same_through_the_cli_the_python_api_and_http(world: World, cli_env: None, variant: str) -> None:
    flags, keywords, fields = VARIANTS[variant]
    seen_uris: set[str] = set()
    judged = 0
    for question in QUESTIONS:
        api = _answer_fields(world.rt.ask(question, collection=COLLECTION, principal=world.principal,
                                          **{"generator": "extractive", **keywords}))
        http = _post(world, f"/collections/{COLLECTION}/ask",
                     {"question": question, "generator": "extractive", **fields})
        cli = _cli("ask", question, "--collection", COLLECTION, "--as-group", "a", "--generator", "extractive",
                   "--json", *flags)
        assert _answer(cli) == _answer(api) == _answer(http), question
        seen_uris |= {s["uri"] for s in api["sources"]}
        judged += "answerable_probability" in api["usage"]
    assert "secret.md" not in seen_uris  # group b's document reaches no edge
    assert {"leave.md", "office.md"} <= seen_uris
    # the model ran for every question the support check let through, and only when asked for
    assert (judged > 0) == (variant == "answerability")


@pytest.mark.parametrize("variant", ["plain", "rerank"])
def test_search_is_the_same_through_the_cli_the_python_api_and_http(world: World, cli_env: None,
                                                                    variant: str) -> None:
    flags, keywords, fields = VARIANTS[variant]
    for query in QUESTIONS:
        api = world.rt.search(query, collection=COLLECTION, top_k=5, principal=world.principal, **keywords)
        http = _post(world, f"/collections/{COLLECTION}/search", {"query": query, "top_k": 5, **fields})
        cli = _cli("search", query, "--collection", COLLECTION, "--as-group", "a", "--top-k", "5", "--json", *flags)
        api_json = {"mode": api.mode, "hits": [{"rank": h.rank, "uri": h.uri, "chunk_id": h.chunk.id,
                                                "score": h.score, "scores": h.scores_by_source} for h in api.hits]}
        assert _hits(cli) == _hits(api_json) == _hits(http), query
        assert api.hits and all(h.uri != "secret.md" for h in api.hits)
        assert (api.mode == "hybrid+rerank") == (variant == "rerank")
        assert all(("rerank" in h.scores_by_source) == (variant == "rerank") for h in api.hits)


def test_the_configured_reranker_and_answerability_model_apply_without_asking(world: World) -> None:
    """Settings choose the parts: an engine whose settings name them uses them on every call, and an
    explicit false turns them off."""
    configured = world.rt.settings.replace(reranker="latest", answerability="v1")
    with Ragtune(configured, embedder=world.rt.embedder) as rt:
        found = rt.search(QUESTIONS[0], collection=COLLECTION, principal=world.principal)
        assert found.mode.endswith("+rerank")
        unranked = rt.search(QUESTIONS[0], collection=COLLECTION, principal=world.principal, reranker=False)
        assert unranked.mode == "hybrid"
        answer = rt.ask(QUESTIONS[0], collection=COLLECTION, principal=world.principal, generator="extractive")
        assert "answerable_probability" in answer.usage or answer.abstained
        # the same model object serves every call: loaded once, by its folder
        assert rt.reranker(True, collection=COLLECTION) is rt.reranker("latest", collection=COLLECTION)
        assert rt.answerability_model() is rt.answerability_model("v1")


def test_unknown_parts_are_clear_errors(world: World) -> None:
    from ragtune.errors import ConfigError, NotFoundError

    with pytest.raises(NotFoundError, match="reranker named 'nowhere'"):
        world.rt.search("x", collection="nowhere", reranker=True)
    with pytest.raises(NotFoundError, match="no version 9"):
        world.rt.search("x", collection=COLLECTION, reranker="v9")
    with pytest.raises(ConfigError, match="version is written vN"):
        world.rt.reranker("trained:handbook@2")
    with pytest.raises(ConfigError, match="unknown reranker"):
        world.rt.reranker("cohere-rerank-3")


def _answer_fields(answer: Any) -> dict[str, Any]:
    from ragtune.generate.answer import answer_fields

    # through JSON, as the other two edges send it
    result: dict[str, Any] = json.loads(json.dumps(answer_fields(answer), default=str))
    return result


def test_the_server_serves_the_generators_it_is_told_to(world: World) -> None:
    """Besides the configured generator and extractive, a request may name a generator listed in
    ``server.generators`` (here a plugin's); any other is refused before anything runs."""
    from ragtune.plugins import Plugins
    from ragtune.server.app import create_app
    from ragtune.testing import EchoGenerator

    plugins = Plugins.load(entry_points=False)
    plugins.generators.register("echo:", lambda name, settings: EchoGenerator(name))
    settings = world.rt.settings.replace(server={"generators": "echo:parrot, echo:myna", "auth": "off"})
    with Ragtune(settings, embedder=world.rt.embedder, plugins=plugins) as rt, \
            serve_in_thread(create_app(rt, settings, auth=False), settings) as url:
        def ask(generator: str) -> httpx.Response:
            return httpx.post(f"{url}/collections/{COLLECTION}/ask", timeout=60,
                              json={"question": QUESTIONS[0], "generator": generator})

        served = ask("echo:myna")
        assert served.status_code == 200, served.text
        assert served.json()["model"] == "myna"
        refused = ask("echo:crow")
        assert refused.status_code == 400
        assert "not served here" in refused.json()["detail"] and "echo:parrot" in refused.json()["detail"]
