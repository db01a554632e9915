"""``ragtune ask --history`` and ``ragtune chat`` (issue 17): a follow-up is searched with the
conversation before it; a history file that is not a conversation is refused naming the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ragtune.engine import Ragtune
from ragtune.models import Principal
from ragtune.settings import Settings
from tests.cli.runner import invoke
from tests.conversations import FOLLOW_UP, about, river_documents


@pytest.fixture
def rivers(env: dict[str, str], embedder: Any) -> Any:
    """The rivers collection in the project the CLI opens (the test database, the working folder)."""
    rt = Ragtune(Settings.load(), embedder=embedder)
    rt.ingest_documents(river_documents(), collection="rivers")
    yield rt
    rt.close()


def test_ask_with_a_history_file_searches_the_follow_up(rivers: Ragtune, tmp_path: Path) -> None:
    for river in ("danube", "thames"):
        history = tmp_path / f"{river}.json"
        history.write_text(json.dumps(about(river)), encoding="utf-8")
        code, out, err = invoke("ask", FOLLOW_UP, "-c", "rivers", "-g", "extractive", "--history", str(history),
                                "--json")
        assert code == 0, err
        answer = json.loads(out)
        assert answer["question"] == FOLLOW_UP and answer["sources"][0]["uri"] == f"{river}.md"


@pytest.mark.parametrize(("text", "reason"), [
    ("Where does the Rhine rise?\n", "is not a conversation: line 1 is not JSON"),
    ('{"turns": []}', 'is not a conversation: a JSON object needs a "messages" list'),
    ('[{"role": "narrator", "content": "Once upon a time"}]', "[0]: role must be one of"),
])
def test_a_history_file_that_is_not_a_conversation_is_named(rivers: Ragtune, tmp_path: Path, text: str,
                                                          reason: str) -> None:
    path = tmp_path / "notes.txt"
    path.write_text(text, encoding="utf-8")
    code, _, err = invoke("ask", FOLLOW_UP, "-c", "rivers", "-g", "extractive", "--history", str(path))
    assert code == 2 and f"history file {path}" in err and reason in err, err


def test_an_empty_question_is_named(rivers: Ragtune) -> None:
    code, _, err = invoke("ask", "  ", "-c", "rivers", "-g", "extractive")
    assert code == 2 and "the question is empty" in err, err


def test_chat_keeps_the_conversation_until_exit(rivers: Ragtune) -> None:
    typed = f"Tell me about the Thames river.\n\n{FOLLOW_UP}\nexit\nTell me about the Danube river.\n"
    code, out, err = invoke("chat", "-c", "rivers", "-g", "extractive", "--no-stream", input=typed)
    assert code == 0, err
    assert out.count("sources") == 2  # one table per question; the blank line and what follows exit are not asked
    system = Principal.system()
    # each answer's search is a span of its trace
    asked = rivers.traces.visible(system, kind="ask", collection="rivers")[:2]
    follow_up, first = (rivers.traces.get(t["id"], system)["search"] for t in asked)
    assert first["query"] == "Tell me about the Thames river." and "conversation" not in first["params"]
    # the second question was searched with the first (its answer is in the conversation too, as an
    # assistant turn, which the concat method does not search by)
    assert follow_up["query"] == f"{FOLLOW_UP} {FOLLOW_UP} Tell me about the Thames river."
    assert follow_up["params"]["conversation"]["turns"] == 1
    thames = rivers.search("Cotswolds Oxford Kent", collection="rivers", mode="bm25", top_k=1).hits[0].chunk.id
    assert follow_up["results"][0]["chunk_id"] == thames
    assert len(rivers.traces.visible(system, kind="ask", collection="rivers")) == 2


def test_chat_starts_from_a_history_file_and_ends_at_the_end_of_input(rivers: Ragtune, tmp_path: Path) -> None:
    history = tmp_path / "before.jsonl"
    history.write_text("\n".join(json.dumps(m) for m in about("danube")) + "\n", encoding="utf-8")
    code, out, err = invoke("chat", "-c", "rivers", "-g", "extractive", "--history", str(history), input=FOLLOW_UP)
    assert code == 0, err
    system = Principal.system()
    newest = rivers.traces.visible(system, kind="ask", collection="rivers")[0]
    latest = rivers.traces.get(newest["id"], system)["search"]  # the answer's search span
    assert "Tell me about the Danube river." in latest["query"] and "danube.md" in out
