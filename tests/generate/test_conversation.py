"""Conversations (issue 17): a follow-up is searched with the turns before it, the history is
checked with errors naming the input, and the rewrite falls back to the question when the model's
reply is not grounded in the conversation."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ragtune.engine import Ragtune
from ragtune.errors import ConfigError, GenerationError, LimitError, QueryError
from ragtune.generate.conversation import (
    ConversationOptions,
    as_conversation,
    conversation_query,
    read_conversation,
    rewrite_question,
)
from ragtune.models import Completion, Message, Principal
from tests.conversations import FOLLOW_UP, RIVERS, about, river_documents


@pytest.fixture
def rivers(rt: Ragtune) -> Ragtune:
    rt.ingest_documents(river_documents(), collection="rivers")
    return rt


class Scripted:
    """A generator that replies with fixed text (or fails), and keeps the prompts it was given."""

    name = "scripted"

    def __init__(self, reply: str | Exception) -> None:
        self.reply = reply
        self.prompts: list[list[Message]] = []

    def generate(self, messages: Sequence[Message], *, max_tokens: int = 256,
                 on_token: Callable[[str], None] | None = None) -> Completion:
        self.prompts.append(list(messages))
        if isinstance(self.reply, Exception):
            raise self.reply
        return Completion(self.reply, self.name, completion_tokens=3)


# -- searching with the conversation ---------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["bm25", "dense", "hybrid"])
def test_a_follow_up_finds_the_river_the_conversation_is_about(rivers: Ragtune, mode: str) -> None:
    """Alone, "it" could be any of the three rivers, so the question alone (``last``) ranks them the
    same whatever came before and is right for one at most; with the conversation, for all three."""
    last = Ragtune(rivers.settings.replace(conversation="last"), embedder=rivers.embedder, database=rivers.db)
    right = {"concat": 0, "last": 0}
    for river in RIVERS:
        for method, engine in (("concat", rivers), ("last", last)):
            result = engine.search(FOLLOW_UP, collection="rivers", mode=mode, top_k=1, history=about(river))
            right[method] += result.hits[0].uri == f"{river}.md"
    assert right == {"concat": 3, "last": right["last"]} and right["last"] <= 1


def test_ask_answers_the_question_and_traces_the_query_it_searched(rivers: Ragtune) -> None:
    answer = rivers.ask(FOLLOW_UP, collection="rivers", generator="extractive", history=about("danube"))
    assert answer.question == FOLLOW_UP
    assert answer.hits[0].uri == "danube.md"
    system = Principal.system()
    assert answer.trace_id is not None
    search = rivers.traces.get(answer.trace_id, system)["search"]  # the answer's retrieval span
    # BM25 read the question twice and the previous user turn once (weights 1 and decay 0.5)
    assert search["query"] == f"{FOLLOW_UP} {FOLLOW_UP} Tell me about the Danube river."
    assert search["params"]["conversation"] == {"method": "concat", "question": FOLLOW_UP, "turns": 1,
                                                "rewritten": None}


def test_the_dense_query_is_the_weighted_sum_of_the_turns(embedder: Any) -> None:
    """Against the formula computed here from the embedder's own vectors: weights 1, 0.5, 0.25."""
    history = [Message("user", "first question about rivers"), Message("assistant", "an answer"),
               Message("user", "second question about the Danube"), Message("system", "be brief")]
    got = conversation_query("and its length?", history, ConversationOptions(), embedder=embedder)
    vectors = embedder.embed_batch(["and its length?", "second question about the Danube",
                                    "first question about rivers"])
    expected = vectors[0] + 0.5 * vectors[1] + 0.25 * vectors[2]
    assert got.vector is not None
    np.testing.assert_allclose(got.vector, expected / np.linalg.norm(expected), atol=1e-5)
    assert got.text == "and its length? and its length? second question about the Danube"
    assert got.turns == 2 and got.method == "concat"
    # turns=1 keeps only the previous user turn; no earlier user turn, or "last": the question alone
    assert conversation_query("q?", history, ConversationOptions(turns=1), embedder=None).turns == 1
    alone = conversation_query("q?", [Message("assistant", "hello")], ConversationOptions(), embedder=embedder)
    assert (alone.text, alone.vector, alone.method) == ("q?", None, "last")
    assert conversation_query("q?", history, ConversationOptions(method="last"), embedder=embedder).text == "q?"


def test_an_empty_question_is_named(rivers: Ragtune) -> None:
    for call in (lambda: rivers.ask("  ", collection="rivers", generator="extractive"),
                 lambda: rivers.search("", collection="rivers", history=about("rhine"))):
        with pytest.raises(QueryError, match="the question is empty"):
            call()


# -- the history, checked ------------------------------------------------------------------------------
@pytest.mark.parametrize(("history", "message"), [
    ("Tell me about the Rhine", "history is not a conversation"),
    ({"role": "user", "content": "hi"}, "history is not a conversation"),
    ([["user", "hi"]], r"history\[0\] is not a message"),
    ([{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}], r"history\[1\]: role must be one of"),
    ([{"role": "user"}], r"history\[0\]: content must be non-empty text"),
    ([{"role": "user", "content": "   "}], r"history\[0\]: content must be non-empty text"),
    ([{"role": "user", "content": 42}], r"history\[0\]: content must be non-empty text"),
    ([{"role": "user", "content": "a\x00b"}], r"history\[0\]: content holds a NUL character"),
])
def test_a_bad_history_is_refused_naming_the_message(history: Any, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        as_conversation(history)


def test_the_history_is_capped_by_the_settings(rivers: Ragtune) -> None:
    small = Ragtune(rivers.settings.replace(max_history_messages=2, max_history_chars=100), embedder=rivers.embedder,
                    database=rivers.db)
    with pytest.raises(LimitError, match="more than 2 messages") as many:
        small.search(FOLLOW_UP, collection="rivers", history=[*about("rhine"), *about("danube")])
    assert many.value.limit == "max_history_messages"
    with pytest.raises(LimitError, match="more than 100 characters"):
        small.search(FOLLOW_UP, collection="rivers", history=[{"role": "user", "content": "x" * 101}])
    with pytest.raises(ConfigError, match=r"retrieval\.conversation="):
        rivers.settings.replace(conversation="guess")


def test_history_files_in_three_shapes(tmp_path: Path) -> None:
    messages = about("thames")
    shapes = {"list.json": json.dumps(messages), "object.json": json.dumps({"messages": messages}),
              "lines.jsonl": "\n".join(json.dumps(m) for m in messages) + "\n"}
    for name, text in shapes.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        assert read_conversation(tmp_path / name) == [Message(m["role"], m["content"]) for m in messages], name


@pytest.mark.parametrize(("text", "message"), [
    ("", "is empty"),
    ("Tell me about the Rhine.\n", "is not a conversation: line 1 is not JSON"),
    ('{"role": "user", "content": "hi"}\nnot json\n', "is not a conversation: line 2 is not JSON"),
    ('{"question": "hi"}', 'is not a conversation: a JSON object needs a "messages" list'),
    ('"just text"', "is not a conversation: expected a list of messages, got str"),
    ('["hi", "there"]', r"\[0\] is not a message"),
    ('[{"role": "bot", "content": "hi"}]', r"\[0\]: role must be one of"),
])
def test_a_history_file_that_is_not_a_conversation_is_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "chat.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(QueryError, match=message) as refused:
        read_conversation(path)
    assert f"history file {path}" in str(refused.value)
    with pytest.raises(QueryError, match=re.escape(f"history file {tmp_path / 'nowhere.json'} does not exist")):
        read_conversation(tmp_path / "nowhere.json")


# -- the rewrite ---------------------------------------------------------------------------------------
def test_a_rewrite_grounded_in_the_conversation_replaces_the_pronoun() -> None:
    history = as_conversation(about("danube"))
    model = Scripted("The Danube river is long and")
    assert rewrite_question(FOLLOW_UP, history, model) == "Where does the Danube river flow into the sea?"
    # the model was asked what the question's pronoun refers to, after the three examples
    assert 'Last question: Where does it flow into the sea?\nWhat does "it" refer to?' in model.prompts[0][-1].content
    assert len(model.prompts[0]) == 8
    assert rewrite_question("What is its length?", history, Scripted("Danube")) == "What is Danube's length?"
    assert rewrite_question("And the length?", history, Scripted("Danube")) == "And the length? (Danube)"


@pytest.mark.parametrize("reply", ["The Amazon", "It", "the", "", "Yes.", GenerationError("endpoint down")])
def test_a_rewrite_not_grounded_in_the_conversation_leaves_the_question(reply: str | Exception) -> None:
    history = as_conversation(about("danube"))
    assert rewrite_question(FOLLOW_UP, history, Scripted(reply)) is None
    asked = conversation_query(FOLLOW_UP, history, ConversationOptions(method="rewrite"), embedder=None,
                               generator=Scripted(reply))
    assert (asked.text, asked.rewritten, asked.method) == (FOLLOW_UP, None, "rewrite")


def test_rewrite_methods_search_the_rewritten_question(rivers: Ragtune) -> None:
    model = Scripted("Danube")
    for method, text in (("rewrite", "Where does Danube flow into the sea?"),
                         ("rewrite+concat", "Where does Danube flow into the sea? Where does Danube flow into the sea? "
                                            "Tell me about the Danube river.")):
        asked = rivers.conversation_query(FOLLOW_UP, about("danube"), method=method, generator=model)
        assert (asked.text, asked.rewritten) == (text, "Where does Danube flow into the sea?")
    extractive = Ragtune(rivers.settings.replace(conversation="rewrite", generator="extractive"),
                         embedder=rivers.embedder, database=rivers.db)
    with pytest.raises(ConfigError, match="needs a generator to rewrite with"):
        extractive.search(FOLLOW_UP, collection="rivers", history=about("danube"))


@pytest.mark.slow
def test_the_local_model_resolves_the_pronoun(smollm2: Any) -> None:
    """The real SmolLM2 with the real prompt (greedy, so the same reply every run)."""
    rewritten = rewrite_question(FOLLOW_UP, as_conversation(about("danube")), smollm2)
    assert rewritten is not None and "Danube" in rewritten and "it" not in rewritten.split()
