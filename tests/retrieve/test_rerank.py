"""CrossEncoderReranker over a real (tiny) trained cross-encoder, checked against the model itself."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from ragtune.errors import ConfigError, ModelError
from ragtune.finetune.reranker import Triple, base_model_path, train_reranker
from ragtune.models import Chunk, Hit
from ragtune.protocols import Reranker
from ragtune.retrieve.rerank import CrossEncoderReranker

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
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    triples = [Triple(f"how long is {topic}", f"{topic} lasts sixteen weeks.", f"{topic} forms are on paper.")
               for topic in ("parental leave", "sick leave", "annual leave", "study leave", "a sabbatical",
                             "jury duty", "bereavement leave", "a secondment")]
    out = tmp_path_factory.mktemp("rerankers") / "hr"
    return train_reranker(triples, out, epochs=1, batch_size=8, learning_rate=1e-4, max_length=32).path


def hits() -> list[Hit]:
    return [
        Hit(chunk=Chunk(ordinal=0, text=t, start=0, end=len(t), id=100 + i, document_id=i), score=1.0 - i / 10,
            rank=i + 1, uri=f"doc{i}.md", document_id=i, metadata={"n": i},
            scores_by_source={"dense": 0.5 - i / 100, "bm25": 3.0 - i / 10})
        for i, t in enumerate(TEXTS)
    ]


def reference_scores(path: Path, query: str, texts: list[str]) -> list[float]:
    from sentence_transformers import CrossEncoder
    from torch import nn

    model = CrossEncoder(str(path), device="cpu", activation_fn=nn.Identity())
    return [float(s) for s in model.predict([(query, t) for t in texts], show_progress_bar=False)]


def test_reranks_the_first_top_n_and_keeps_the_rest_in_order(trained: Path) -> None:
    reranker = CrossEncoderReranker(trained, top_n=4, batch_size=3)
    assert isinstance(reranker, Reranker)
    assert reranker._model is None  # nothing loaded before first use
    original = hits()
    query = "how long is parental leave"
    out = reranker.rerank(query, original)
    assert original == hits()  # the input is left alone

    expected = reference_scores(trained, query, TEXTS[:4])
    head = out[:4]
    assert sorted(h.chunk.id for h in head) == [100, 101, 102, 103]
    for h in head:
        assert h.score == pytest.approx(expected[h.chunk.id - 100], abs=1e-5)
        before = original[h.chunk.id - 100]
        assert h.scores_by_source == {**before.scores_by_source, "rerank": h.score}
        assert h.chunk == before.chunk and h.uri == before.uri and h.metadata == before.metadata
    assert [h.score for h in head] == sorted((h.score for h in head), reverse=True)
    assert [h.rank for h in out] == list(range(1, len(TEXTS) + 1))
    # hits after top_n: same order, same scores, no rerank score, only renumbered
    assert out[4:] == [dataclasses.replace(h, rank=i) for i, h in enumerate(original[4:], start=5)]


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
