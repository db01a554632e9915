"""The trained reader, end to end on real parts: MiniLM fine-tuned here on a small synthetic task
(``tests.helpers.train_tiny_reader``), the artefact store, the real PostgreSQL and embedder.

It must learn (held-out people's cities), answer through ``-g reader`` with a span whose document
offsets are exact, make the one abstention decision for every generator and say which signal
decided, and give clear errors for a missing reader, bad examples and an empty question."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from ragtune import LoadedDocument
from ragtune.engine import Ragtune
from ragtune.errors import ConfigError, DatasetError, ModelError, NotFoundError, QueryError
from ragtune.finetune.reader import ReaderExample, features, split_of, user_examples
from ragtune.generate.reader import Abstention, Reader, ReaderNet, reader_store
from ragtune.store.artefacts import MANIFEST
from tests.cli.runner import invoke
from tests.helpers import person_fact, train_tiny_reader


@pytest.fixture(scope="module")
def tiny_reader(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("reader") / "data"
    return Path(train_tiny_reader(data_dir).path)


@pytest.fixture
def people(rt: Ragtune) -> Ragtune:
    docs = [LoadedDocument(uri=f"people/{i}.txt", text="Staff register.\n\n" + person_fact(i)[3])
            for i in range(16, 20)]
    docs.append(LoadedDocument(uri="canteen.txt", text="The canteen serves soup on Mondays. Coffee is free."))
    rt.ingest_documents(docs, collection="people")
    return rt


def _with_thresholds(tmp_path: Path, folder: Path, **thresholds: float) -> Path:
    """A copy of the reader with other abstention thresholds (to make each signal decide)."""
    copy = tmp_path / "reader-copy"
    shutil.copytree(folder, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["thresholds"].update(thresholds)
    (copy / MANIFEST).write_text(json.dumps(manifest))
    return copy


def test_the_reader_learns_spans_of_people_it_never_saw(tiny_reader: Path) -> None:
    reader = Reader(tiny_reader)
    found = 0
    for i in range(16, 24):  # trained on people 0-15 only
        name, city, _, text = person_fact(i)
        span = reader.read(f"Where was {name} born?", ["The canteen serves soup on Mondays.", text])
        assert span is not None
        passage = ["The canteen serves soup on Mondays.", text][span.passage]
        assert passage[span.start:span.end] == span.text  # offsets are exact
        found += span.text == city
    assert found >= 7, f"found {found}/8 cities"


def test_the_manifest_records_data_split_and_calibrated_thresholds(tiny_reader: Path) -> None:
    manifest = json.loads((tiny_reader / MANIFEST).read_text())
    assert manifest["kind"] == "ragtune-reader"
    assert manifest["data"]["rows"] == 64 and manifest["data"]["sha256"]
    assert "held_out" in manifest["data"] and "split" in manifest["data"]
    validation = manifest["metrics"]["validation"]
    assert validation["questions"] == 24 and validation["out_of_collection"] == 8
    # calibrated on the held-out people: answerable ones answered, the others abstained
    assert validation["overall_f1"] >= 0.8
    thresholds = manifest["thresholds"]
    assert set(thresholds) == {"support_below", "no_answer_above"}
    assert 0.05 < thresholds["support_below"] <= 0.3


def test_ask_with_the_reader_cites_the_span_at_exact_document_offsets(people: Ragtune, tiny_reader: Path) -> None:
    name, city, _, _ = person_fact(17)
    answer = people.ask(f"Where was {name} born?", collection="people", generator="reader",
                        reader=str(tiny_reader))
    assert not answer.abstained and answer.decided_by is None
    assert answer.model.startswith("reader:")
    assert answer.span is not None and answer.span.text == city
    assert answer.text == f"{city} [{answer.span.source}]"
    _, body, _ = people.document(answer.span.uri, collection="people")
    assert answer.span.uri == "people/17.txt"
    assert body[answer.span.start:answer.span.end] == city
    assert body[answer.span.sentence_start:answer.span.sentence_end] == answer.span.sentence
    assert city in answer.span.sentence and answer.span.sentence.endswith(".")
    assert answer.citations and answer.citations[0].uri == "people/17.txt"
    assert answer.relevance is not None and 0 < answer.relevance <= 1
    assert "read" in answer.timings_ms


def test_the_answer_says_which_signal_decided_to_abstain(people: Ragtune, tiny_reader: Path, tmp_path: Path) -> None:
    name = person_fact(18)[0]
    strict_support = _with_thresholds(tmp_path / "a", tiny_reader, support_below=0.999)
    answer = people.ask(f"Where was {name} born?", collection="people", generator="extractive",
                        reader=str(strict_support))
    assert answer.abstained and answer.decided_by == "retrieval" and answer.span is None
    strict_reader = _with_thresholds(tmp_path / "b", tiny_reader, support_below=0.0, no_answer_above=-100.0)
    answer = people.ask(f"Where was {name} born?", collection="people", generator="extractive",
                        reader=str(strict_reader))
    assert answer.abstained and answer.decided_by == "reader"
    # the same rule for every generator: the extractive answer abstains by the reader's stored rule too
    answer = people.ask(f"When did {name} die?", collection="people", generator="extractive",
                        reader=str(tiny_reader))
    assert answer.abstained and answer.decided_by in ("reader", "retrieval")
    answer = people.ask(f"Where was {name} born?", collection="people", generator="extractive",
                        reader=str(tiny_reader))
    assert not answer.abstained and answer.span is not None and answer.relevance is not None


def test_abstention_rule() -> None:
    rule = Abstention(support_below=0.3, no_answer_above=1.0)
    assert rule.decide(0.2, -5.0) == "retrieval"
    assert rule.decide(0.5, 2.0) == "reader"
    assert rule.decide(0.5, 0.5) is None
    assert rule.decide(0.5, None) is None


def test_the_project_reader_is_used_by_default_once_trained(people: Ragtune) -> None:
    assert people.reader_model() is None  # "auto" with none trained: the support threshold decides
    with pytest.raises((ConfigError, NotFoundError), match="ragtune reader train"):
        people.ask("Where was Ada Brook born?", collection="people", generator="reader")
    train_tiny_reader(people.settings.data_dir, steps=2)
    assert people.reader_model() is not None
    answer = people.ask("Where was Ada Brook born?", collection="people", generator="extractive")
    assert "reader_no_answer" in answer.usage


def test_bad_inputs_are_clear_errors(tmp_path: Path, people: Ragtune, tiny_reader: Path) -> None:
    bad = tmp_path / "examples.jsonl"
    bad.write_text('{"question": "Where?", "context": "In Ghent.", "answer": "Ghent"}\n{"question": 1}\n')
    with pytest.raises(DatasetError, match=r"examples\.jsonl:2"):
        user_examples(bad)
    bad.write_text('{"question": "Where?", "context": "In Ghent.", "answer": "Paris"}\n')
    with pytest.raises(DatasetError, match="does not occur in its context"):
        user_examples(bad)
    broken = tmp_path / "broken"
    broken.mkdir()
    with pytest.raises(ModelError, match=r"no manifest\.json"):
        Reader(broken)
    with pytest.raises(QueryError):
        people.ask("   ", collection="people", generator="reader", reader=str(tiny_reader))
    with pytest.raises(ConfigError, match="train_reader publishes readers"):
        from ragtune.finetune.reader import train_reader
        from ragtune.generate.answerability import answerability_store

        train_reader([ReaderExample("q", "c", 0, "c")], answerability_store(tmp_path), calibration=[])


def test_windows_keep_an_answer_far_into_a_long_passage(tiny_reader: Path) -> None:
    net = ReaderNet.load(tiny_reader)
    filler = "The register lists many rooms and corridors of the old building. " * 12
    name, city, _, text = person_fact(20)
    example = ReaderExample(f"Where was {name} born?", filler + text, len(filler) + text.index(city), city)
    feats = features(net, [example])
    assert len(feats) >= 2, "a passage longer than the window is read in several windows"
    with_answer = [f for f in feats if f.start > 0]
    assert with_answer, "the window holding the answer is labelled with it"
    reader = Reader(tiny_reader)
    span = reader.read(example.question, [example.context])
    assert span is not None and span.text == city


def test_the_public_split_is_by_article_and_question(cache_dir: Path) -> None:
    assert {split_of(f"article {i}") for i in range(40)} == {"train", "validation", "test"}
    assert split_of("Normans") == split_of("Normans")


def test_cli_trains_on_own_examples_lists_and_recalibrates_versions(tmp_path: Path, cache_dir: Path,
                                                                    database_url: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGTUNE_DATABASE_URL", database_url)
    monkeypatch.setenv("RAGTUNE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RAGTUNE_CACHE_DIR", str(cache_dir))
    rows = [{"question": e.question, "context": e.context, "answer": e.answer}
            for e in __import__("tests.helpers", fromlist=["x"]).tiny_reader_examples(range(4))]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    code, out, err = invoke("reader", "train", "--examples", str(path), "--no-public", "--max-steps", "2",
                            "--calibration", "20", "--max-length", "96", "--stride", "16", "--json")
    assert code == 0, out + err
    made: dict[str, Any] = json.loads(out)
    assert made["data"]["rows"] == len(rows) and made["version"] == 1
    assert made["thresholds"]["support_below"] >= 0
    code, out, err = invoke("reader", "list", "--json")
    assert code == 0 and json.loads(out)[0]["version"] == 1
    # a new rule needs no new training: the same network, thresholds chosen again, next version
    code, out, err = invoke("reader", "calibrate", "--calibration", "20", "--json")
    assert code == 0, out + err
    again: dict[str, Any] = json.loads(out)
    assert again["version"] == 2 and again["recalibrated_from"] == "reader/v1"
    assert again["data"]["sha256"] == made["data"]["sha256"] and again["hyperparameters"] == made["hyperparameters"]
    assert set(again["thresholds"]) == {"support_below", "no_answer_above"}
    assert again["metrics"]["validation"]["questions"] == made["metrics"]["validation"]["questions"]
    weights = [(tmp_path / "data" / "models" / "reader" / f"v{v}" / "model.safetensors").read_bytes() for v in (1, 2)]
    assert weights[0] == weights[1]
    code, out, err = invoke("reader", "calibrate", "--reader", "v9")
    assert code != 0 and "version 9" in out + err
    code, out, err = invoke("reader", "train", "--examples", str(tmp_path / "missing.jsonl"), "--no-public")
    assert code != 0 and "missing.jsonl" in out + err
    assert reader_store(tmp_path / "data").versions()[-1].version == 2, "a failed training publishes nothing"
