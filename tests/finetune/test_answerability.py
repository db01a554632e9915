"""The answerability model: SQuAD 2.0 examples split by article, a real (tiny) training run of
MiniLM, its stored threshold, and abstention through ``ask`` on the real PostgreSQL."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from ragtune import LoadedDocument, Principal
from ragtune.engine import Ragtune
from ragtune.errors import ConfigError, DatasetError, ModelError
from ragtune.evaluate.datasets import load_dataset
from ragtune.finetune.answerability import (
    AnswerabilityExample,
    abstention_prf,
    choose_threshold,
    examples_hash,
    split_by_group,
    squad_examples,
    train_answerability,
)
from ragtune.generate.answerability import SPLIT_RULE, AnswerabilityModel, answerability_store, load_answerability
from ragtune.retrieve.rerank import reranker_store
from tests.helpers import ProgressRecorder


@pytest.fixture(scope="module")
def examples(cache_dir: Path) -> list[AnswerabilityExample]:
    return squad_examples(load_dataset("squad", cache_dir / "packages"))


@pytest.fixture(scope="module")
def small(examples: list[AnswerabilityExample]) -> list[AnswerabilityExample]:
    train, _ = split_by_group(examples)
    rng = random.Random(1)
    return [*rng.sample([e for e in train if e.answerable], 12),
            *rng.sample([e for e in train if not e.answerable], 12)]


@pytest.fixture(scope="module")
def training_events() -> ProgressRecorder:
    """What the training below reported."""
    return ProgressRecorder()


@pytest.fixture(scope="module")
def trained(examples: list[AnswerabilityExample], small: list[AnswerabilityExample],
            tmp_path_factory: pytest.TempPathFactory, training_events: ProgressRecorder) -> Path:
    _, held_out = split_by_group(examples)
    validation = [*held_out[:10], *[e for e in held_out if not e.answerable][:10]]
    data_dir = tmp_path_factory.mktemp("project")
    return train_answerability(small, answerability_store(data_dir), validation=validation, batch_size=8,
                               max_length=64, source="test", progress=training_events).path


def test_squad_examples_are_split_by_article(cache_dir: Path, examples: list[AnswerabilityExample]) -> None:
    dataset = load_dataset("squad", cache_dir / "packages")
    assert len(examples) == len(dataset.queries) + len(dataset.unanswerable)
    assert sum(not e.answerable for e in examples) == len(dataset.unanswerable)
    train, held_out = split_by_group(examples)
    assert {e.group for e in train}.isdisjoint({e.group for e in held_out})
    assert len(train) + len(held_out) == len(examples)
    for half in (train, held_out):
        assert {e.answerable for e in half} == {True, False}
        assert 0.25 < len(half) / len(examples) < 0.75


def test_threshold_choice_and_auc_match_a_reference() -> None:
    from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

    rng = random.Random(3)
    labels = [rng.random() < 0.5 for _ in range(400)]
    probs = [min(1.0, max(0.0, rng.gauss(0.6 if y else 0.4, 0.2))) for y in labels]
    chosen = choose_threshold(probs, labels)
    assert chosen["roc_auc"] == pytest.approx(roc_auc_score(labels, probs), abs=1e-4)
    # abstaining is the positive class for precision and recall
    p, r, f1, _ = precision_recall_fscore_support([not y for y in labels], [q < chosen["threshold"] for q in probs],
                                                  average="binary", zero_division=0)
    assert (chosen["precision"], chosen["recall"], chosen["f1"]) == pytest.approx((p, r, f1), abs=1e-4)
    grid = [round(0.05 * i, 2) for i in range(1, 20)]
    assert chosen["f1"] == pytest.approx(max(abstention_prf(probs, labels, t)[2] for t in grid), abs=1e-4)


def test_training_publishes_a_loadable_model_with_its_threshold(trained: Path, small: list[AnswerabilityExample],
                                                               examples: list[AnswerabilityExample],
                                                               training_events: ProgressRecorder) -> None:
    manifest = json.loads((trained / "manifest.json").read_text())
    assert trained.name == "v1" and trained.parent.name == "answerability" and trained.parent.parent.name == "models"
    assert (manifest["kind"], manifest["format"], manifest["version"]) == ("ragtune-answerability", 1, 1)
    assert manifest["data"] == {"sha256": examples_hash(small), "rows": 24, "held_out": 20, "source": "test",
                                "split": SPLIT_RULE, "unanswerable": 12}
    assert manifest["metrics"]["train_loss"]["steps"] == 3
    # one "training" event per step, ending at the total, with the step's loss (the first is recorded)
    assert [(e.task, e.done, e.total) for e in training_events.events] == [("training", s, 3) for s in (1, 2, 3)]
    assert round(training_events.events[0].metrics["loss"], 4) == manifest["metrics"]["train_loss"]["first"]
    assert all(e.detail == f"loss {e.metrics['loss']:.3f}" for e in training_events.events)
    assert set(manifest["metrics"]["held_out"]) == {"precision", "recall", "f1", "roc_auc"}
    assert 0.05 <= manifest["thresholds"]["abstain_below"] <= 0.95
    assert manifest["hyperparameters"]["max_length"] == 64
    latest = load_answerability(trained.parent.parent.parent)
    assert latest.path == trained and latest.threshold == manifest["thresholds"]["abstain_below"]
    model = AnswerabilityModel(trained)
    question, passage = examples[0].question, examples[0].passage
    p = model.probability(question, [passage, "An unrelated passage about tides."])
    assert 0.0 < p < 1.0
    # the best of the first ``passages`` passages
    both = AnswerabilityModel(trained, passages=2)
    assert both.probability(question, [passage, "tides"]) == pytest.approx(
        max(both.net.probabilities([question, question], [passage, "tides"])), abs=1e-6)
    assert model.probability(question, []) == 0.0


def test_abstention_through_ask(rt: Ragtune, trained: Path) -> None:
    rt.ingest_documents([LoadedDocument(uri="leave.md", text="Every Zorblax employee receives 27 days of paid "
                                                            "leave per year. Unused leave expires in March.")])
    question = "How many days of paid leave do Zorblax employees get?"
    always = AnswerabilityModel(trained, threshold=1.0)  # every probability is below 1: abstain
    answer = rt.ask(question, generator="extractive", answerability=always)
    assert answer.abstained and 0.0 < answer.usage["answerable_probability"] < 1.0
    never = AnswerabilityModel(trained, threshold=0.0)
    answer = rt.ask(question, generator="extractive", answerability=never)
    assert not answer.abstained and "27 days" in answer.text
    assert answer.trace_id is not None
    params = rt.traces.get(answer.trace_id, Principal.system())["params"]
    assert params["answerability"] == {"model": never.name, "threshold": 0.0}
    assert params["usage"]["answerable_probability"] == answer.usage["answerable_probability"]


def test_bad_answerability_models_are_clear_errors(tmp_path: Path, trained: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        AnswerabilityModel(tmp_path / "missing")
    with pytest.raises(ModelError, match=r"no manifest\.json"):
        AnswerabilityModel(tmp_path)
    manifest = json.loads((trained / "manifest.json").read_text())
    old = tmp_path / "old"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps({**manifest, "format": 0}))
    with pytest.raises(ModelError, match="train it again"):
        AnswerabilityModel(old)
    with pytest.raises(ConfigError, match="threshold"):
        AnswerabilityModel(trained, threshold=1.5)
    only_answerable = [AnswerabilityExample("q", "p", True, "a")] * 4
    with pytest.raises(DatasetError, match="both answerable and unanswerable"):
        train_answerability(only_answerable, answerability_store(tmp_path), validation=only_answerable)
    with pytest.raises(ConfigError, match="publishes answerability models, not rerankers"):
        train_answerability(only_answerable, reranker_store(tmp_path, "docs"), validation=only_answerable)
