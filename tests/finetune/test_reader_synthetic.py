"""Synthetic reader examples from a collection's own chunks, on real parts: PostgreSQL, MiniLM, the
packaged SmolLM2, the ``ragtune`` command.

The collection is a small invented town register whose sentences hold dates, numbers, names and a
quoted term. SmolLM2 writes the questions once for the module (generation is the slow part);
determinism and the bookkeeping are checked with ``BlankFiller``, a tiny real generator that turns
the blanked sentence into a question by rule, so its expected questions are known exactly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ragtune import LoadedDocument
from ragtune.errors import ConfigError, DatasetError, GenerationError, NotFoundError
from ragtune.finetune.reader import ReaderExample
from ragtune.finetune.reader_synthetic import (
    answer_candidates,
    check_question,
    chunk_group,
    synthetic_reader_examples,
    write_synthetic,
)
from ragtune.ingest.lexical import LexicalAnalyzer
from ragtune.models import Completion, Message
from ragtune.settings import Settings
from tests.cli.runner import invoke
from tests.helpers import ProgressRecorder

COLLECTION = "register"
DOCS = {
    "bridge.txt": "Veltria harbour records.\n\nThe Kessler Bridge over the river Aun was opened on 12 March 1932 by "
                  "mayor Anna Kessler. It carried 4,500 carts a day within a year of its opening.",
    "library.txt": "Veltria library notes.\n\nThe town library was founded in 1871 by the printer Tomas Wend. Its "
                   "reading room holds 38 tables and a map known as \"the blue chart\" among the staff.",
    "mill.txt": "Veltria industry notes.\n\nThe old paper mill on the Aun employed 212 workers in 1905. Most "
                "of its paper went by barge to the port of Ostrava each spring.",
    "choir.txt": "Veltria music notes.\n\nThe town choir sang at the opening of the Grand Hall in 1899. The "
                 "conductor Lena Marsh led the choir for twenty years.",
}


class BlankFiller:
    """A small real generator: the blanked sentence of the prompt with its blank replaced by the
    question word it was told to start with, as a question; "What" for names. ``fail_every``: every
    n-th call raises ``GenerationError``, as an unreachable endpoint does."""

    name = "blank-filler"

    def __init__(self, fail_every: int = 0) -> None:
        self.calls = 0
        self.fail_every = fail_every

    def generate(self, messages: Sequence[Message], *, max_tokens: int = 256,
                 on_token: Callable[[str], None] | None = None) -> Completion:
        self.calls += 1
        if self.fail_every and self.calls % self.fail_every == 0:
            raise GenerationError("blank-filler: connection refused")
        prompt = messages[-1].content
        sentence = prompt.split("\n")[0].removeprefix("Sentence: ").rstrip(".")
        start = re.search(r"Start with: (.*)", prompt)
        word = start.group(1) if start else "What"
        rest = sentence.replace("___", "").replace("  ", " ").strip()
        return Completion(text=f"{word} {rest[0].lower()}{rest[1:]}?", model=self.name)


@dataclass
class World:
    rt: Any
    settings: Settings
    smollm2: list[ReaderExample]
    events: ProgressRecorder


@pytest.fixture(scope="module")
def world(project: Settings, embedder: Any) -> Iterator[World]:
    from ragtune.engine import Ragtune

    rt = Ragtune(project, embedder=embedder)
    try:
        rt.ingest_documents([LoadedDocument(uri=uri, text=text) for uri, text in DOCS.items()], collection=COLLECTION)
        events = ProgressRecorder()
        # the engine resolves the generator as the CLI does; negatives=1: every question gets its pairing
        examples = synthetic_reader_examples(rt, COLLECTION, rt.generator("smollm2"), limit=2, negatives=1.0,
                                             progress=events)
        yield World(rt, project, examples, events)
    finally:
        rt.close()


def _chunks(rt: Any) -> dict[str, tuple[str, int]]:
    """Chunk text -> (uri, ordinal) of every chunk of the collection."""
    out = {}
    for uri in DOCS:
        _doc, _body, chunks = rt.document(uri, collection=COLLECTION)
        out.update({c.text: (uri, c.ordinal) for c in chunks})
    return out


def _check_examples(rt: Any, examples: list[ReaderExample]) -> None:
    chunks = _chunks(rt)
    positives = {e.question: e for e in examples if e.answer_start is not None}
    assert positives
    for e in examples:
        assert e.source == "synthetic" and e.kind == "span"
        assert e.context in chunks, "the context is a chunk of the collection"
        if e.answer_start is not None:
            assert e.context[e.answer_start:e.answer_start + len(e.answer)] == e.answer
            assert e.answer.lower() not in e.question.lower()
            assert e.group == chunk_group(*chunks[e.context])
        else:
            source = positives[e.question]
            assert e.answer == "" and e.group == source.group
            assert e.context != source.context and source.answer.lower() not in e.context.lower()


def test_smollm2_writes_questions_whose_answers_sit_at_their_offsets(world: World) -> None:
    examples = world.smollm2
    answerable = [e for e in examples if e.answer_start is not None]
    assert len(answerable) == 2
    _check_examples(world.rt, examples)
    assert any(e.answer_start is None for e in examples), "negatives=1.0 pairs every question with another chunk"
    assert len({e.question for e in answerable}) == len(answerable)
    world.events.assert_monotone()
    assert world.events.last("questions").done == 2 and world.events.last("questions").total == 2


def test_the_same_collection_gives_the_same_examples(world: World) -> None:
    first = write_synthetic(world.rt, COLLECTION, BlankFiller(), limit=6)
    again = write_synthetic(world.rt, COLLECTION, BlankFiller(), limit=6)
    assert first.examples == again.examples and first.tried == again.tried
    _check_examples(world.rt, first.examples)
    questions = [e.question for e in first.examples if e.answer_start is not None]
    assert len(questions) == 6
    # round robin over chunks, best kind first: each chunk's date or year is asked before any name
    assert sum(1 for q in questions[:4] if q.startswith(("When", "In what year"))) == 4, questions
    assert "When the Kessler Bridge over the river Aun was opened on by mayor Anna Kessler?" in questions
    # the default share: about half of the questions paired with another chunk
    assert 1 <= sum(1 for e in first.examples if e.answer_start is None) <= 5


def test_failed_generations_are_skipped_and_counted(world: World, caplog: pytest.LogCaptureFixture) -> None:
    run = write_synthetic(world.rt, COLLECTION, BlankFiller(fail_every=2), limit=3, negatives=0.0)
    assert run.answerable == 3 and run.rejected["generation_failed"] == 2 and run.tried == 5
    assert "connection refused" in caplog.text
    assert all(e.answer_start is not None for e in run.examples)


def test_an_unreachable_generator_is_a_dataset_error_that_says_why(world: World) -> None:
    from ragtune.generate.openai_compat import OpenAICompatibleGenerator

    closed = OpenAICompatibleGenerator("http://127.0.0.1:9/v1", "none", api_key="x", timeout=2.0, retries=0)
    with pytest.raises(DatasetError, match=r"register.*2 answer candidates tried.*generation_failed"):
        write_synthetic(world.rt, COLLECTION, closed, limit=1, max_tries=2)


def test_bad_inputs_are_clear_errors(world: World) -> None:
    rt = world.rt
    with pytest.raises(NotFoundError, match="no collection named 'nowhere'"):
        synthetic_reader_examples(rt, "nowhere", BlankFiller(), limit=2)
    with pytest.raises(ConfigError, match="limit=0"):
        synthetic_reader_examples(rt, COLLECTION, BlankFiller(), limit=0)
    with pytest.raises(ConfigError, match=r"negatives=1\.5"):
        synthetic_reader_examples(rt, COLLECTION, BlankFiller(), limit=2, negatives=1.5)
    rt.collection("empty-register", create=True)
    with pytest.raises(DatasetError, match="'empty-register' has no chunk"):
        synthetic_reader_examples(rt, "empty-register", BlankFiller(), limit=2)
    rt.ingest_documents([LoadedDocument(uri="plain.txt", text="nothing here has a date or a name or a number in "
                                                              "it, only plain words about plain things all day.")],
                        collection="plain-register")
    with pytest.raises(DatasetError, match="'plain-register' has no sentence with an answer candidate"):
        synthetic_reader_examples(rt, "plain-register", BlankFiller(), limit=2)


@pytest.mark.parametrize(("sentence", "expected"), [
    ("The bridge was opened on 12 March 1932 by the mayor.", [("date", "12 March 1932")]),
    ("The library was founded in 1871 by the printer Tomas Wend.", [("year", "1871"), ("names", "Tomas Wend")]),
    ("The mill employed 4,500 workers and 12% of them were children.", [("number", "4,500")]),
    ("Its staff call the old map \"the blue chart\" in the reading room.", [("quoted", "the blue chart")]),
    ("Barges took the paper to Ostrava's port every spring.", [("name", "Ostrava")]),
    ("Veltria is a town on a river with a bridge and a mill.", []),  # a capital at the start names nothing sure
    ("Step 2 of the plan was to paint the hall in spring.", []),  # a lone digit: list index or subscript
    ("Built in 1932.", []),  # too short to ask about
])
def test_answer_candidates(sentence: str, expected: list[tuple[str, str]]) -> None:
    found = answer_candidates(sentence)
    assert [(c.kind, c.text) for c in found] == expected
    assert all(sentence[c.start:c.start + len(c.text)] == c.text for c in found)


SENTENCE = "The town library was founded in 1871 by the printer Tomas Wend."


@pytest.mark.parametrize(("reply", "asks", "verdict"), [
    ("In what year was the town library founded?", "In what year", "ok"),
    ("Question: Who founded the town library?\nAnswer: Tomas Wend", None, "ok"),
    ("The answer is 1871.", "In what year", "not_a_question"),
    ("In what year was ___ founded?", "In what year", "copies_blank"),
    ("Was the library founded by a printer?", None, "not_wh"),
    ("Who founded the town library?", "In what year", "wrong_kind"),
    ("In what year did Tomas Wend found it, in 1871?", "In what year", "holds_answer"),
    ("In what year did the war end?", "In what year", "off_topic"),
    ("In what year " + "and then " * 15 + "the library?", "In what year", "too_long"),
])
def test_check_question(reply: str, asks: str | None, verdict: str) -> None:
    answer = "1871" if asks else "Tomas Wend"
    assert check_question(reply, SENTENCE, SENTENCE, answer, LexicalAnalyzer(), asks=asks)[0] == verdict


def test_cli_trains_a_reader_on_synthetic_examples_alone(world: World, tmp_path: Path, cache_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGTUNE_DATABASE_URL", world.settings.database_url)
    monkeypatch.setenv("RAGTUNE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RAGTUNE_CACHE_DIR", str(cache_dir))
    code, out, err = invoke("reader", "train", "-c", COLLECTION, "--synthetic", "1", "--generator", "smollm2",
                            "--no-public", "--max-steps", "2", "--calibration", "20", "--max-length", "96",
                            "--stride", "16", "--json")
    assert code == 0, out + err
    made = json.loads(out)
    synthetic = made["data"]["source"]["synthetic"]
    assert synthetic["collection"] == COLLECTION and synthetic["generator"] == "smollm2-135m-instruct"
    assert synthetic["answerable"] == 1 and synthetic["candidates_tried"] >= 1
    assert made["data"]["rows"] == 1 + synthetic["unanswerable"]
    assert made["data"]["synthetic_answer"] == 1
    assert made["data"]["source"]["public"] == []
    assert "synthetic examples of collection register" in made["data"]["split"]

    code, out, err = invoke("reader", "train", "--synthetic", "2", "--no-public")
    assert code == 2 and "--synthetic needs --collection" in err
    code, out, err = invoke("reader", "train", "-c", "nowhere", "--synthetic", "2", "--no-public")
    assert code == 2 and "no collection named 'nowhere'" in err and "Traceback" not in err
    code, out, err = invoke("reader", "train", "-c", COLLECTION, "--synthetic", "1", "--generator", "extractive",
                            "--no-public")
    assert code == 2 and "writes no text" in err
