"""CrossEncoderReranker over a real (tiny) trained reranker, checked against the network itself."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from ragtune.errors import ConfigError, ModelError
from ragtune.finetune.minilm import base_model_path
from ragtune.finetune.rerankers.mining import Triple
from ragtune.finetune.rerankers.training import train_reranker
from ragtune.models import Chunk, Hit
from ragtune.protocols import Reranker
from ragtune.retrieve.rerank import CrossEncoderReranker, reranker_store
from tests.helpers import ProgressRecorder

TEXTS = [
    "Parental leave is sixteen weeks at full pay.",
    "Submit expense receipts within thirty days.",
    "The office is closed on public holidays.",
    "Parental leave requests go to the people team.",
    "Laptops are replaced every three years.",
    "Leave balances are shown on the intranet.",
    "Parking permits are issued at the front desk.",
]


@pytest.fixture(scope="module")
def training_events() -> ProgressRecorder:
    """What the training below reported (the one trained reranker of these tests)."""
    return ProgressRecorder()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, training_events: ProgressRecorder) -> Path:
    triples = [Triple(f"how long is {topic}", f"{topic} lasts sixteen weeks.", f"{topic} forms are on paper.")
               for topic in ("parental leave", "sick leave", "annual leave", "study leave", "a sabbatical",
                             "jury duty", "bereavement leave", "a secondment")]
    store = reranker_store(tmp_path_factory.mktemp("project"), "hr")
    return train_reranker(triples, store, epochs=2, batch_size=8, learning_rate=1e-4, max_length=32,
                          progress=training_events).path


def test_training_reports_each_step_with_its_loss(trained: Path, training_events: ProgressRecorder) -> None:
    curve = json.loads((trained / "manifest.json").read_text())["metrics"]["loss_curve"]
    events = training_events.of("training")
    assert [(e.done, e.total) for e in events] == [(1, 2), (2, 2)]  # 8 questions a step, 2 epochs
    assert [round(e.metrics["loss"], 4) for e in events] == [loss for _, loss in curve]
    assert all(e.detail == f"loss {e.metrics['loss']:.3f}" for e in events)
    training_events.assert_monotone()


def hits() -> list[Hit]:
    return [
        Hit(chunk=Chunk(ordinal=0, text=t, start=0, end=len(t), id=100 + i, document_id=i), score=1.0 - i / 10,
            rank=i + 1, uri=f"doc{i}.md", document_id=i, metadata={"n": i},
            scores_by_source={"dense": 0.5 - i / 100, "bm25": 3.0 - i / 10})
        for i, t in enumerate(TEXTS)
    ]


def reference_scores(path: Path, query: str, texts: list[str]) -> list[float]:
    """The scaled cosine of the mean-pooled query and text token states, computed here from the
    saved encoder and head with transformers directly, one pair at a time (no padding)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    head = json.loads((path / "head.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    encoder = AutoModel.from_pretrained(str(path)).eval()
    out = []
    for text in texts:
        batch = tokenizer(query, text, truncation="only_second", max_length=head["max_length"], return_tensors="pt")
        with torch.no_grad():
            states = encoder(**batch).last_hidden_state[0]
        second = batch["token_type_ids"][0].bool()
        cos = torch.nn.functional.cosine_similarity(states[~second].mean(0), states[second].mean(0), dim=0)
        out.append(float(cos) * float(torch.tensor(head["log_scale"]).exp()))
    return out


def test_reranks_the_first_top_n_and_keeps_the_rest_in_order(trained: Path) -> None:
    reranker = CrossEncoderReranker(trained, top_n=4, batch_size=3)
    assert isinstance(reranker, Reranker)
    assert not reranker.loaded  # nothing loaded before first use
    original = hits()
    query = "how long is parental leave"
    out = reranker.rerank(query, original)
    assert original == hits()  # the input is left alone

    expected = reference_scores(trained, query, TEXTS[:4])
    head = out[:4]
    assert sorted(h.chunk.id for h in head) == [100, 101, 102, 103]
    for h in head:
        assert h.score == pytest.approx(expected[h.chunk.id - 100], abs=1e-4)
        before = original[h.chunk.id - 100]
        assert h.scores_by_source == {**before.scores_by_source, "rerank": h.score}  # no fusion weight
        assert h.chunk == before.chunk and h.uri == before.uri and h.metadata == before.metadata
    assert [h.score for h in head] == sorted((h.score for h in head), reverse=True)
    assert [h.rank for h in out] == list(range(1, len(TEXTS) + 1))
    # hits after top_n: same order, same scores, no rerank score, only renumbered
    assert out[4:] == [dataclasses.replace(h, rank=i) for i, h in enumerate(original[4:], start=5)]


def test_fusion_weight_adds_the_rerank_score_to_the_retrievers(trained: Path, tmp_path: Path) -> None:
    import shutil

    weighted = tmp_path / "weighted"
    shutil.copytree(trained, weighted)
    manifest = json.loads((weighted / "manifest.json").read_text())
    (weighted / "manifest.json").write_text(json.dumps({**manifest, "thresholds": {"fusion_weight": 0.5}}))
    query = "how long is parental leave"
    original = hits()[:5]
    rerank = reference_scores(trained, query, [h.chunk.text for h in original])
    out = CrossEncoderReranker(weighted, top_n=5).rerank(query, original)

    def z(values: list[float]) -> list[float]:
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
        return [(v - mean) / std for v in values]

    expected = {h.chunk.id: a + 0.5 * b for h, a, b in zip(original, z([h.score for h in original]), z(rerank),
                                                            strict=True)}
    assert [h.chunk.id for h in out] == sorted(expected, key=lambda i: -expected[i])
    for h in out:
        assert h.score == pytest.approx(expected[h.chunk.id], abs=1e-4)
        assert h.scores_by_source["rerank"] == pytest.approx(rerank[h.chunk.id - 100], abs=1e-4)
    # weight 0 keeps the retriever's order exactly, without running the model
    (weighted / "manifest.json").write_text(json.dumps({**manifest, "thresholds": {"fusion_weight": 0.0}}))
    idle = CrossEncoderReranker(weighted, top_n=5)
    assert idle.rerank(query, original) == [dataclasses.replace(h, rank=i) for i, h in enumerate(original, start=1)]
    assert not idle.loaded


def test_a_widened_reranker_rescores_more_hits_with_the_same_model(trained: Path) -> None:
    narrow = CrossEncoderReranker(trained, top_n=2)
    assert narrow.widened(2) is narrow and narrow.widened(1) is narrow
    wide = narrow.widened(5)
    assert (wide.top_n, narrow.top_n) == (5, 2)
    out = wide.rerank("how long is parental leave", hits()[:5])
    assert all("rerank" in h.scores_by_source for h in out)
    assert narrow.loaded and wide.model is narrow.model  # loaded once, for both


def test_top_n_larger_than_the_hits_and_no_hits(trained: Path) -> None:
    reranker = CrossEncoderReranker(trained, top_n=50)
    out = reranker.rerank("parking", hits()[:3])
    assert len(out) == 3 and all("rerank" in h.scores_by_source for h in out)
    assert reranker.rerank("parking", []) == []


def test_bad_folders_are_model_errors_naming_the_path(tmp_path: Path, trained: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelError, match=f"reranker folder {missing} does not exist"):
        CrossEncoderReranker(missing)
    # a sentence-transformers folder (the bi-encoder itself) is not a trained reranker
    with pytest.raises(ModelError, match=f"{base_model_path()} is not a trained ragtune reranker"):
        CrossEncoderReranker(base_model_path())
    wrong_kind = tmp_path / "other"
    wrong_kind.mkdir()
    (wrong_kind / "manifest.json").write_text(json.dumps({"kind": "lora-adapter"}))
    with pytest.raises(ModelError, match="not a ragtune reranker manifest"):
        CrossEncoderReranker(wrong_kind)
    old = tmp_path / "old"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps({**json.loads((trained / "manifest.json").read_text()),
                                                   "format": 1}))
    with pytest.raises(ModelError, match=rf"{old} is a reranker of format 1.*train it again"):
        CrossEncoderReranker(old)  # at construction, before any model is loaded
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text((trained / "manifest.json").read_text())
    reranker = CrossEncoderReranker(broken)  # the manifest is fine; the model is missing
    with pytest.raises(ModelError, match=f"cannot load the reranker in {broken}"):
        reranker.rerank("q", hits())


@pytest.mark.parametrize(("options", "message"), [
    ({"top_n": 0}, "top_n must be at least 1, got 0"),
    ({"batch_size": -1}, "batch_size must be at least 1, got -1"),
])
def test_invalid_options_are_refused_at_construction(trained: Path, options: dict[str, int], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CrossEncoderReranker(trained, **options)
