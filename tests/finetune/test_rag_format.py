"""Training for the hybrid (issue 18, item 1): rows rendered as ``ask`` serves them, RAFT-style,
over a real collection (PostgreSQL, the packaged embedder, SmolLM2's tokenizer), and serving that
prompts a tuned adapter in the format it was trained on or refuses a mismatch, in the engine, the
CLI and over HTTP. Training itself through ``tune train --rag-format`` is in ``test_rag_format_cli``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from ragtune import LoadedDocument, Principal
from ragtune.engine import Ragtune
from ragtune.errors import ConfigError, DatasetError, ModelError, PromptFormatError
from ragtune.finetune.data.examples import Example
from ragtune.finetune.lora.rag_format import RagFormat, cite, holds, render_rows
from ragtune.generate.prompt import (
    CHAT_FORMAT,
    NO_ANSWER,
    PROMPT_FILE,
    SOURCES_FORMAT,
    SYSTEM_PROMPT,
    read_prompt_format,
    write_prompt_format,
)
from ragtune.models import PromptFormat
from tests.cli.runner import invoke
from tests.helpers import random_lora_adapter

DOCS = {
    "leave.md": "Every Zorblax employee receives 27 days of paid leave per year. Unused leave expires in March.",
    "travel.md": "Zorblax reimburses train travel in second class. Flights need the approval of a director.",
    "laptops.md": "Zorblax laptops are replaced every four years. A broken laptop is repaired by the help desk.",
    "canteen.md": "The Zorblax canteen opens at half past eleven and serves a vegetarian dish every day.",
    "parking.md": "Zorblax staff park on level minus two of the north garage; visitors park on level zero.",
    "badges.md": "A lost Zorblax badge is blocked by security and a new badge costs twelve euros.",
}
ROWS = [
    ("How many days of paid leave does a Zorblax employee get?", "27 days."),
    ("Who approves flights at Zorblax?", "A director"),
    ("How often are Zorblax laptops replaced?", "Every four years."),
    ("When does the Zorblax canteen open?", "At half past eleven."),
    ("Where do Zorblax staff park?", "On level minus two of the north garage."),
    ("What does a new Zorblax badge cost?", "Twelve euros."),
    ("What is the Zorblax pension age?", "Sixty-seven."),  # no document holds it: left out
]


def _rows() -> list[Example]:
    return [Example(i + 1, [{"role": "system", "content": "You are the Zorblax helper."},
                            {"role": "user", "content": q}, {"role": "assistant", "content": a}])
            for i, (q, a) in enumerate(ROWS)]


@pytest.fixture(scope="module")
def tokenizer(cache_dir: Path) -> Any:
    from transformers import AutoTokenizer

    from ragtune.generate.local import packaged_smollm2

    return AutoTokenizer.from_pretrained(str(packaged_smollm2(cache_dir)))


def _count(tokenizer: Any) -> Any:
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _ingest(rt: Ragtune) -> None:
    rt.ingest_documents([LoadedDocument(uri=u, text=t) for u, t in DOCS.items()], collection="zorblax")


def _search(rt: Ragtune) -> Any:
    return lambda q, k: rt.search(q, collection="zorblax", top_k=k, principal=Principal.system()).hits


def test_holds_and_cite() -> None:
    assert holds("The Denver Broncos won Super Bowl 50.", "the denver broncos")
    assert not holds("The Denver Broncos won.", "Carolina Panthers")
    assert not holds("anything", "  ")
    long_answer = "Unused paid leave expires at the end of March every year for all staff"
    assert holds("All staff: unused paid leave expires every year at the end of March.", long_answer)
    assert not holds("Paid leave is 27 days.", long_answer)
    assert cite("Paris", 2) == "Paris [2]"
    assert cite("It is Paris. It was Lutetia!", 3) == "It is Paris [3]. It was Lutetia [3]!"


def test_rows_are_rendered_as_ask_prompts_with_the_gold_source_cited(settings: Any, embedder: Any,
                                                                     tokenizer: Any) -> None:
    with Ragtune(settings, embedder=embedder) as rt:
        _ingest(rt)
        fmt = RagFormat("zorblax", top_k=3, gold_share=1.0, depth=6)
        rendered = render_rows(_rows(), fmt, _search(rt), count_tokens=_count(tokenizer), context_window=2048)
    assert rendered.counts["no_gold_found"] == 1 and rendered.counts["with_gold"] == 6, rendered.counts
    assert [e.line for e in rendered.examples] == [1, 2, 3, 4, 5, 6]
    for example, (question, answer) in zip(rendered.examples, ROWS, strict=False):
        system, user, reply = example.messages
        assert system == {"role": "system", "content": SYSTEM_PROMPT}  # ask's, not the row's own
        assert user["content"].startswith("<sources>\n") and user["content"].endswith(f"Question: {question}")
        blocks = user["content"].split('<source id="')[1:]
        assert len(blocks) == 3
        cited = int(reply["content"].rsplit("[", 1)[1].split("]")[0])
        # the cited number is the block holding the answer, and only that block holds it
        assert [holds(b, answer) for b in blocks] == [i + 1 == cited for i in range(3)], (blocks, reply)
        assert reply["content"].replace(f" [{cited}]", "") == answer


def test_the_gold_keeps_its_retrieved_rank_unless_placed_at_random(settings: Any, embedder: Any,
                                                                   tokenizer: Any) -> None:
    with Ragtune(settings, embedder=embedder) as rt:
        _ingest(rt)
        search = _search(rt)
        ranked = render_rows(_rows(), RagFormat("zorblax", top_k=3, gold_share=1.0, depth=6), search,
                             count_tokens=_count(tokenizer), context_window=2048)
        shuffled = render_rows(_rows(), RagFormat("zorblax", top_k=3, gold_share=1.0, depth=6, gold_position="random"),
                               search, count_tokens=_count(tokenizer), context_window=2048)
        order = {q: [h.chunk.text for h in search(q, 6)] for q, _ in ROWS}

    def ranks(example: Example) -> list[int]:
        """The retrieved rank of each source shown, in the order shown."""
        question = example.messages[1]["content"].rsplit("Question: ", 1)[1]
        blocks = example.messages[1]["content"].split('<source id="')[1:]
        return [next(r for r, text in enumerate(order[question]) if text[:40] in block) for block in blocks]

    assert ranked.counts["with_gold"] == shuffled.counts["with_gold"] == 6
    assert all(ranks(e) == sorted(ranks(e)) for e in ranked.examples), [ranks(e) for e in ranked.examples]
    assert any(ranks(e) != sorted(ranks(e)) for e in shuffled.examples), [ranks(e) for e in shuffled.examples]
    assert ranked.prompt_format(RagFormat("zorblax")).details["gold_position"] == "rank"


def test_without_the_gold_source_the_target_is_the_abstention(settings: Any, embedder: Any, tokenizer: Any) -> None:
    with Ragtune(settings, embedder=embedder) as rt:
        _ingest(rt)
        none = render_rows(_rows(), RagFormat("zorblax", top_k=3, gold_share=0.0, depth=6), _search(rt),
                           count_tokens=_count(tokenizer), context_window=2048)
        again = render_rows(_rows(), RagFormat("zorblax", top_k=3, gold_share=0.5, depth=6), _search(rt),
                            count_tokens=_count(tokenizer), context_window=2048)
        same = render_rows(_rows(), RagFormat("zorblax", top_k=3, gold_share=0.5, depth=6), _search(rt),
                           count_tokens=_count(tokenizer), context_window=2048)
        # at random places the gold often comes after a distractor that fills the budget
        tight = render_rows(_rows(), RagFormat("zorblax", top_k=3, gold_share=1.0, depth=6, context_tokens=64,
                                               max_tokens=1, gold_position="random"), _search(rt),
                            count_tokens=_count(tokenizer),
                            context_window=0)
    assert none.counts["abstain"] == 6 and none.counts["with_gold"] == 0
    for example, (_, answer) in zip(none.examples, ROWS, strict=False):
        assert example.messages[-1]["content"] == NO_ANSWER
        assert not holds(example.messages[1]["content"].split("Question:")[0], answer)
    # RAFT's share: seeded per row, the same prompts on every run
    assert [e.messages for e in again.examples] == [e.messages for e in same.examples]
    assert 0 < again.counts["with_gold"] < 6
    # a budget too small for the gold source's answer sentence turns its rows into abstentions
    assert tight.counts["gold_cut"] > 0 and tight.counts["abstain"] == tight.counts["gold_cut"]


def test_bad_rows_and_settings_are_refused_naming_them() -> None:
    with pytest.raises(ConfigError, match="depth"):
        RagFormat("c", top_k=5, depth=3)
    with pytest.raises(ConfigError, match="gold_share"):
        RagFormat("c", gold_share=1.5)
    with pytest.raises(ConfigError, match=r"gold_position='middle'.*rank, random"):
        RagFormat("c", gold_position="middle")
    pair = Example(4, [{"role": "user", "content": "q"}], chosen={"role": "assistant", "content": "a"},
                   rejected={"role": "assistant", "content": "b"})
    with pytest.raises(DatasetError, match=r"line 4: .*preference"):
        render_rows([pair], RagFormat("c"), lambda q, k: [], count_tokens=len, context_window=0)
    lonely = Example(9, [{"role": "user", "content": "a question without an answer"}])
    with pytest.raises(DatasetError, match="line 9"):
        render_rows([lonely], RagFormat("c"), lambda q, k: [], count_tokens=len, context_window=0)


# -- serving: the format an adapter was trained on -------------------------------------------------
@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A real PEFT LoRA adapter for the packaged SmolLM2 (random weights: the format is what is tested)."""
    return random_lora_adapter(tmp_path_factory.mktemp("runs") / "format-run" / "adapter", cache_dir)


def _variant(adapter: Path, where: Path, trained: PromptFormat | None) -> Path:
    folder = where / "adapter"
    shutil.copytree(adapter, folder)
    if trained is not None:
        write_prompt_format(folder, trained)
    return folder


def test_the_prompt_format_record_round_trips_and_bad_records_are_named(tmp_path: Path) -> None:
    trained = PromptFormat(SOURCES_FORMAT, "Answer from the sources.", {"collection": "kb", "top_k": 5})
    write_prompt_format(tmp_path, trained)
    assert read_prompt_format(tmp_path) == trained
    assert read_prompt_format(tmp_path / "elsewhere") is None
    (tmp_path / PROMPT_FILE).write_text('{"format": "alpaca"}', encoding="utf-8")
    with pytest.raises(ModelError, match="unknown prompt format 'alpaca'"):
        read_prompt_format(tmp_path)
    (tmp_path / PROMPT_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelError, match=PROMPT_FILE):
        read_prompt_format(tmp_path)


def test_ask_prompts_an_adapter_in_its_trained_format_and_refuses_a_chat_one(
        settings: Any, embedder: Any, adapter: Path, tmp_path: Path) -> None:
    own_system = SYSTEM_PROMPT + " Keep it under ten words."
    rag = _variant(adapter, tmp_path / "rag", PromptFormat(SOURCES_FORMAT, own_system))
    chat = _variant(adapter, tmp_path / "chat", PromptFormat(CHAT_FORMAT, "You are the Zorblax helper."))
    unknown = _variant(adapter, tmp_path / "plain", None)
    question = ROWS[0][0]
    with Ragtune(settings.replace(generator="smollm2", generator_adapter=rag), embedder=embedder) as rt:
        _ingest(rt)
        answer = rt.ask(question, collection="zorblax", max_tokens=4)
        assert answer.prompt[0].content == own_system  # the system message it was trained with
        trace = rt.traces.get(answer.trace_id or 0, Principal.system())
        assert trace["params"]["prompt"][0]["content"] == own_system
    with Ragtune(settings.replace(generator="smollm2", generator_adapter=unknown), embedder=embedder) as rt:
        assert rt.ask(question, collection="zorblax", max_tokens=4).prompt[0].content == SYSTEM_PROMPT
    with Ragtune(settings.replace(generator="smollm2", generator_adapter=chat), embedder=embedder) as rt:
        searched: list[str] = []
        search = rt.search
        rt.search = lambda q, **kw: searched.append(q) or search(q, **kw)  # type: ignore[method-assign]
        with pytest.raises(PromptFormatError, match=r"trained on plain chat prompts.*--rag-format"):
            rt.ask(question, collection="zorblax", max_tokens=4)
        assert searched == []  # refused before the search
        # the extractive answerer and the reader have no prompt format to mismatch
        assert rt.ask(question, collection="zorblax", generator="extractive").text


def test_the_cli_names_the_mismatch(settings: Any, embedder: Any, adapter: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    chat = _variant(adapter, tmp_path / "chat", PromptFormat(CHAT_FORMAT))
    with Ragtune(settings, embedder=embedder) as rt:
        _ingest(rt)
    monkeypatch.setenv("RAGTUNE_DATABASE_URL", str(settings.database_url))
    monkeypatch.setenv("RAGTUNE_CACHE_DIR", str(settings.resolved_cache_dir))
    monkeypatch.chdir(tmp_path)
    code, _out, err = invoke("ask", ROWS[0][0], "-c", "zorblax", "-g", "smollm2", "--adapter", str(chat),
                            "--max-tokens", "4", "--json")
    assert code != 0
    assert "trained on plain chat prompts" in err and "--rag-format" in err, err
    assert json.loads((chat / PROMPT_FILE).read_text())["format"] == CHAT_FORMAT


def test_tune_train_rag_format_through_the_cli_and_ask_serves_the_adapter(
        settings: Any, embedder: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One optimiser step through ``ragtune tune train --rag-format -c``: the run trains on the
    rendered rows, its adapter records the sources format, and ``ask`` serves it with that prompt."""
    with Ragtune(settings, embedder=embedder) as rt:
        _ingest(rt)
    rows = tmp_path / "zorblax.jsonl"
    rows.write_text("".join(json.dumps({"messages": e.messages}) + "\n" for e in _rows()), encoding="utf-8")
    monkeypatch.setenv("RAGTUNE_DATABASE_URL", str(settings.database_url))
    monkeypatch.setenv("RAGTUNE_CACHE_DIR", str(settings.resolved_cache_dir))
    monkeypatch.chdir(tmp_path)
    code, _out, err = invoke("tune", "train", "--data", str(rows), "--rag-format")
    assert code != 0 and "--rag-format needs --collection" in err
    code, _out, err = invoke("tune", "train", "--data", str(rows), "-c", "zorblax")
    assert code != 0 and "add --rag-format" in err
    code, _out, err = invoke("tune", "train", "--data", str(rows), "--rag-format", "-c", "nope")
    assert code != 0 and "nope" in err
    code, out, err = invoke("tune", "train", "--data", str(rows), "--rag-format", "-c", "zorblax", "--rag-top-k", "3",
                            "--gold-share", "1", "--max-steps", "1", "--batch-size", "2", "--max-length", "768",
                            "--json")
    assert code == 0, err
    assert "6 answered with the gold source cited" in err and "1 left out" in err, err
    record = json.loads(out)
    adapter = Path(record["adapter"])
    trained = read_prompt_format(adapter)
    assert trained is not None and trained.name == SOURCES_FORMAT and trained.system == SYSTEM_PROMPT
    assert trained.details["collection"] == "zorblax" and trained.details["top_k"] == 3
    assert record["train_rows"] == 6  # the row no source answers is not trained on
    stored = [json.loads(line) for line in (adapter.parent / "data" / "train.jsonl").read_text().splitlines()]
    assert all(r["messages"][0]["content"] == SYSTEM_PROMPT and "<sources>" in r["messages"][1]["content"]
               for r in stored)
    code, out, err = invoke("ask", ROWS[2][0], "-c", "zorblax", "-g", "smollm2", "--adapter", str(adapter),
                            "--max-tokens", "4", "--json")
    assert code == 0, err
    assert json.loads(out)["lineage"]["adapter"]["path"] == str(adapter.resolve())


def test_an_adapter_is_rendered_with_the_chat_template_it_was_trained_with(adapter: Path, tmp_path: Path,
                                                                            cache_dir: Path) -> None:
    from ragtune.generate.local import TransformersGenerator, packaged_smollm2
    from ragtune.models import Message

    base = packaged_smollm2(cache_dir)
    asked = [Message("user", "What is 2 + 2?")]
    plain = TransformersGenerator(base, adapter=_variant(adapter, tmp_path / "plain", None)).render(asked)
    trained = _variant(adapter, tmp_path / "templated", None)
    (trained / "chat_template.jinja").write_text(
        "{% for m in messages %}<<{{ m['role'] }}>> {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<<assistant>> {% endif %}", encoding="utf-8")
    rendered = TransformersGenerator(base, adapter=trained).render(asked)
    assert rendered == "<<user>> What is 2 + 2?\n<<assistant>> " and "<|im_start|>" in plain
