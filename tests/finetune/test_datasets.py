"""Fine-tuning datasets: the three real LLaMA-Factory demo files, hand-written bad inputs, versions,
atomicity, the split, leakage, access (ACLs of versions and rows), and the ``ragtune data`` commands
(real PostgreSQL, real tokenizer).

Expectations are computed here from the raw files (with plain ``json`` and the tokenizer itself),
not copied from the validator's output.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ragtune.errors import DatasetError, DatasetValidationError, NotFoundError, PermissionDeniedError
from ragtune.evaluate.packages import fetch_package, read_member
from ragtune.finetune.data.access import ADMINS_ONLY, row_acl
from ragtune.finetune.data.examples import Example
from ragtune.finetune.data.formats import parse_bytes
from ragtune.finetune.data.lengths import TemplateTokenCounter
from ragtune.finetune.data.store import DatasetStore
from ragtune.finetune.data.versions import ImportOptions, require_valid, row_hash
from ragtune.models import Principal, ProgressEvent
from ragtune.store.database import Database

LLAMAFACTORY = "llamafactory==0.9.5"
DEMOS = {"alpaca": "data/alpaca_en_demo.json", "glaive": "data/glaive_toolcall_en_demo.json",
         "dpo": "data/dpo_en_demo.json"}
SYSTEM = Principal.system()  # the operator's reads: every version, every row


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three demo files written out of the sdist (read as members, never extracted)."""
    archive = fetch_package(LLAMAFACTORY, sdist=True)
    folder = tmp_path_factory.mktemp("llamafactory")
    for key, member in DEMOS.items():
        (folder / f"{key}.json").write_bytes(read_member(archive, member))
    return folder


@pytest.fixture(scope="session")
def raw(demo_dir: Path) -> dict[str, list[dict[str, Any]]]:
    return {key: json.loads((demo_dir / f"{key}.json").read_text(encoding="utf-8")) for key in DEMOS}


@pytest.fixture(scope="session")
def counter(cache_dir: Path) -> TemplateTokenCounter:
    return TemplateTokenCounter.for_base("smollm2", cache_dir)


@pytest.fixture
def store(database_url: str, cache_dir: Path, counter: TemplateTokenCounter) -> Iterator[DatasetStore]:
    db = Database(database_url)
    try:
        yield DatasetStore(db, cache_dir=cache_dir, counters={"smollm2": counter})
    finally:
        db.close()


def _jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def _chat(user: str, assistant: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def _norm(*parts: str) -> str:
    return " ".join(" ".join(parts).lower().split())


def _table_counts(store: DatasetStore) -> tuple[int, int]:
    with store.db.connection() as conn:
        row = conn.execute("SELECT (SELECT count(*) FROM datasets) AS d, (SELECT count(*) FROM dataset_rows) AS r"
                           ).fetchone()
    assert row is not None
    return int(row["d"]), int(row["r"])


# -- the real demo files ------------------------------------------------------------------------
def test_alpaca_demo(store: DatasetStore, demo_dir: Path, raw: dict[str, list[dict[str, Any]]],
                     counter: TemplateTokenCounter) -> None:
    records = raw["alpaca"]
    result = store.import_file(demo_dir / "alpaca.json", name="alpaca")
    info, report = result.dataset, result.dataset.report
    assert result.created and info.version == 1 and info.format == "alpaca"
    assert info.row_count == len(records) == 999 and report["dropped"] == 0
    assert info.train_rows + info.eval_rows == len(records)
    assert info.schema["kind"] == "sft" and info.schema["fields"] == sorted({k for r in records for k in r})

    # Exact duplicates: rows whose instruction, input and output are the same text.
    groups = Counter(_norm(r["instruction"], r["input"], r["output"]) for r in records)
    assert report["duplicates"]["exact_groups"] == sum(1 for n in groups.values() if n > 1)
    assert report["duplicates"]["exact_extra_rows"] == sum(n - 1 for n in groups.values() if n > 1)

    # Emails, counted with a plain pattern over the raw fields.
    emails = sum(len(re.findall(r"[\w.+%-]+@[\w-]+(?:\.[\w-]+)+", r[k])) for r in records for k in r)
    assert report["pii"]["by_kind"].get("EMAIL_ADDRESS", 0) == emails > 0

    # Token lengths: the tokenizer's own chat template, tokenized in one call per row.
    tok = counter.tokenizer
    lengths = [len(tok(tok.apply_chat_template(
        [{"role": "user", "content": "\n".join(p for p in (r["instruction"], r["input"]) if p)},
         {"role": "assistant", "content": r["output"]}], tokenize=False), add_special_tokens=False)["input_ids"])
        for r in records]
    lens = report["lengths"]
    assert (lens["max"], lens["min"], lens["total_tokens"]) == (max(lengths), min(lengths), sum(lengths))
    assert lens["context_window"] == 8192 and lens["over"] == sum(1 for n in lengths if n > 8192)
    assert sum(b["rows"] for b in lens["histogram"]) == len(records)
    assert report["balance"]["roles"] == {"user": 999, "assistant": 999}

    stored = store.rows(info, principal=SYSTEM)
    assert [m["content"] for m in stored[0].messages] == [records[0]["instruction"], records[0]["output"]]
    assert [e.messages[-1]["content"] for e in stored] == [r["output"] for r in records]
    assert len(store.rows(info, "eval", principal=SYSTEM)) == info.eval_rows
    assert info.valid == (not report["blocking"])


def test_glaive_toolcall_demo(store: DatasetStore, demo_dir: Path, raw: dict[str, list[dict[str, Any]]],
                              counter: TemplateTokenCounter) -> None:
    records = raw["glaive"]
    info = store.import_file(demo_dir / "glaive.json", name="glaive",
                             options=ImportOptions(format="sharegpt")).dataset
    report = info.report
    assert info.row_count == len(records) == 300 and info.schema["tools"] and info.schema["tool_calls"]
    turns = Counter(t["from"] for r in records for t in r["conversations"])
    calls = Counter(json.loads(t["value"])["name"] for r in records for t in r["conversations"]
                    if t["from"] == "function_call")
    balance = report["balance"]
    assert balance["tool_calls"] == dict(calls)
    assert balance["roles"] == {"user": turns["human"], "assistant": turns["gpt"] + turns["function_call"],
                                "tool": turns["observation"]}
    assert balance["rows_with_tools"] == sum(1 for r in records if json.loads(r["tools"] or "[]"))

    # Over-length rows: the raw turns alone already exceed the context; every other row is far below.
    tok = counter.tokenizer
    raw_tokens = {}
    line_of = [e.line for e in parse_bytes((demo_dir / "glaive.json").read_bytes(), source="g").examples]
    for line, r in zip(line_of, records, strict=True):
        texts = [t["value"] for t in r["conversations"]] + [r["tools"]]
        raw_tokens[line] = sum(len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"])
    expected_over = sorted(line for line, n in raw_tokens.items() if n > 8192)
    assert not [n for n in raw_tokens.values() if 8192 - 1500 < n <= 8192]  # no row close enough to be unsure
    assert [o["line"] for o in report["lengths"]["over_rows"]] == expected_over and expected_over
    assert not info.valid and any("longer than 8192 tokens" in r for r in info.reasons)
    with pytest.raises(DatasetValidationError, match="longer than 8192") as caught:
        require_valid(info)
    assert caught.value.reasons == info.reasons
    assert require_valid(info, force=True) == info.reasons

    # A limit that fits every row makes a new, valid version (the options changed, not the file).
    again = store.import_file(demo_dir / "glaive.json", name="glaive",
                              options=ImportOptions(format="sharegpt", max_tokens=max(raw_tokens.values()) + 2000))
    assert again.created and again.dataset.version == 2 and again.dataset.valid
    assert require_valid(again.dataset) == ()
    stored = store.rows(again.dataset, principal=SYSTEM)
    first_call = next(m for m in stored[0].messages if m.get("tool_calls"))
    first_raw = next(t for t in records[0]["conversations"] if t["from"] == "function_call")
    assert first_call["tool_calls"][0]["function"] == json.loads(first_raw["value"])
    assert stored[0].tools == [{"type": "function", "function": f} for f in json.loads(records[0]["tools"])]


def test_dpo_demo(store: DatasetStore, demo_dir: Path, raw: dict[str, list[dict[str, Any]]]) -> None:
    records = raw["dpo"]
    info = store.import_file(demo_dir / "dpo.json", name="dpo").dataset
    assert info.format == "sharegpt" and info.schema["kind"] == "preference" and info.row_count == len(records)
    pref = info.report["balance"]["preference"]
    assert pref["pairs"] == len(records)
    assert pref["chosen_longer"] == sum(1 for r in records if len(r["chosen"]["value"]) > len(r["rejected"]["value"]))
    systems = sum(1 for r in records for t in r["conversations"] if t["from"] == "system")
    assert info.report["balance"]["roles"]["system"] == systems
    stored = store.rows(info, principal=SYSTEM)
    assert [e.chosen["content"] for e in stored if e.chosen] == [r["chosen"]["value"] for r in records]
    assert [e.rejected["content"] for e in stored if e.rejected] == [r["rejected"]["value"] for r in records]


# -- bad input ----------------------------------------------------------------------------------
BAD_LINES = {
    "malformed": 2, "empty": 3, "duplicate": 4, "pii": 5, "long": 6, "bad_role": 7, "no_messages": 9,
}
EMAIL, CARD, IBAN = "ann.lee@example.org", "4111 1111 1111 1111", "DE89 3704 0044 0532 0130 00"


def _bad_file(path: Path) -> Path:
    first = _chat("What is the capital of France?", "Paris is the capital of France.")
    return _jsonl(path, [
        first,                                                               # 1
        '{"messages": [{"role": "user", "content": "unterminated"',          # 2 malformed JSON
        _chat("Say something.", "   \n  "),                                  # 3 whitespace-only output
        first,                                                               # 4 duplicate of line 1
        _chat(f"Refund {EMAIL}, card {CARD}", f"Sent to IBAN {IBAN}."),      # 5 PII
        _chat("Repeat the words.", " ".join(f"word{i}" for i in range(9000))),  # 6 over the context
        {"messages": [{"role": "wizard", "content": "hi"}]},                 # 7 unknown role
        "",                                                                  # 8 blank, ignored
        {"prompt": "no messages at all"},                                    # 9 wrong schema
    ])


def test_bad_input_is_reported_line_by_line(store: DatasetStore, tmp_path: Path) -> None:
    path = _bad_file(tmp_path / "bad.jsonl")
    info = store.import_file(path, name="bad", options=ImportOptions(eval_fraction=0.0)).dataset
    r = info.report
    assert r["records"] == 8 and r["rows"] == 5 and r["dropped"] == 3
    assert [e["line"] for e in r["schema_errors"]] == [BAD_LINES["malformed"], BAD_LINES["bad_role"],
                                                       BAD_LINES["no_messages"]]
    assert "invalid JSON" in r["schema_errors"][0]["message"] and "wizard" in r["schema_errors"][1]["message"]
    assert r["empty_outputs"] == {"turns": 1, "rows": 1, "lines": [BAD_LINES["empty"]]}
    assert [o["line"] for o in r["lengths"]["over_rows"]] == [BAD_LINES["long"]]
    assert r["lengths"]["over_rows"][0]["tokens"] > 9000  # at least one token per word
    assert r["duplicates"]["exact_examples"] == [[1, BAD_LINES["duplicate"]]]
    assert r["pii"]["by_kind"] == {"CREDIT_CARD": 1, "EMAIL_ADDRESS": 1, "IBAN_CODE": 1}
    assert {e["line"] for e in r["pii"]["examples"]} == {BAD_LINES["pii"]} and not r["pii"]["redacted"]
    assert EMAIL not in json.dumps(r)  # the report locates PII, it does not copy it
    assert not info.valid and len(info.reasons) == 3
    for words in ("schema errors", "empty or whitespace-only", "longer than 8192"):
        assert any(words in reason for reason in info.reasons), (words, info.reasons)
    stored = {e.line: e for e in store.rows(info, principal=SYSTEM)}
    assert sorted(stored) == [1, 3, 4, 5, 6] and EMAIL in stored[5].messages[0]["content"]

    redacted = store.import_file(path, name="bad", options=ImportOptions(eval_fraction=0.0, redact_pii=True))
    assert redacted.created and redacted.dataset.version == 2 and redacted.dataset.report["pii"]["redacted"]
    row = next(e for e in store.rows(redacted.dataset, principal=SYSTEM) if e.line == BAD_LINES["pii"])
    assert row.messages[0]["content"] == "Refund <EMAIL_ADDRESS>, card <CREDIT_CARD>"
    assert row.messages[1]["content"] == "Sent to IBAN <IBAN_CODE>."


def test_a_pii_policy_screens_rows_and_leaves_out_refused_ones(store: DatasetStore, tmp_path: Path) -> None:
    from ragtune.govern.pii import PiiPolicy

    path = _jsonl(tmp_path / "people.jsonl", [
        _chat(f"Write to {EMAIL} please.", "Done."),                       # 1 redacted
        _chat("What is the capital of France?", "Paris."),                  # 2 kept as it is
        _chat(f"Charge card {CARD}.", "Charged."),                           # 3 refused
    ])
    policy = PiiPolicy({"EMAIL_ADDRESS": "redact", "CREDIT_CARD": "refuse"})
    info = store.import_file(path, name="people", options=ImportOptions(eval_fraction=0.0, pii_policy=policy)).dataset
    rows = {e.line: e for e in store.rows(info, principal=SYSTEM)}
    assert sorted(rows) == [1, 2]
    assert rows[1].messages[0]["content"] == "Write to <EMAIL_ADDRESS> please."
    assert info.report["pii"]["policy"] == {"refused": 1, "refused_rows": [{"line": 3, "entities": ["CREDIT_CARD"]}]}
    with store.db.connection() as conn:
        stored = conn.execute("SELECT string_agg(messages::text, ' ') AS t FROM dataset_rows").fetchone()
    assert stored is not None and EMAIL not in stored["t"] and CARD not in stored["t"]
    # the same file under another policy is a new version, not the old one again
    other = store.import_file(path, name="people", options=ImportOptions(
        eval_fraction=0.0, pii_policy=PiiPolicy({"EMAIL_ADDRESS": "flag"})))
    assert other.created and other.dataset.version == 2


def test_json_list_rows_keep_the_line_they_start_on(store: DatasetStore, tmp_path: Path) -> None:
    rows = [{"instruction": f"Task {i}", "input": "", "output": f"Answer {i}"} for i in range(5)]
    del rows[3]["output"]
    text = json.dumps(rows, indent=2)
    path = tmp_path / "list.json"
    path.write_text(text, encoding="utf-8")
    starts = [n for n, line in enumerate(text.splitlines(), start=1) if line == "  {"]
    info = store.import_file(path, name="list").dataset
    assert [e.line for e in store.rows(info, principal=SYSTEM)] == starts[:3] + starts[4:]
    assert info.report["schema_errors"] == [{"line": starts[3], "message": "missing 'output'"}]


@pytest.mark.parametrize("content, match", [
    (b"", "no valid rows"),
    (b'[{"instruction": "a", "output": "b"},\n {"instruction": ]', "line 2"),
    (b'{"x": 1}\n{"y": 2}\n', "cannot tell the format"),
    (b'{"messages": [{"role": "user", "content": "hi"}]}\n', "no assistant turn"),
])
def test_unusable_files_store_nothing(store: DatasetStore, tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=match):
        store.import_file(path, name="x")
    assert _table_counts(store) == (0, 0)


def test_formats_normalise_to_one_chat_form() -> None:
    chat = {"messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in "}, {"type": "text", "text": "Oslo?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "4 C"},
        {"role": "assistant", "content": "4 C in Oslo."}],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]}
    alpaca = {"instruction": "Translate", "input": "chat", "output": "cat", "system": "You translate.",
              "history": [["Translate chien", "dog"]]}
    sharegpt = {"conversations": [{"from": "human", "value": "Weather in Oslo?"},
                                  {"from": "function_call", "value": "{\"name\": \"weather\", \"arguments\": "
                                                                     "{\"city\": \"Oslo\"}}"},
                                  {"from": "observation", "value": "4 C"},
                                  {"from": "gpt", "value": "4 C in Oslo."}],
                "tools": "[{\"name\": \"weather\", \"parameters\": {\"type\": \"object\"}}]"}
    openai_dpo = {"input": {"messages": [{"role": "user", "content": "Hi"}]},
                  "preferred_output": [{"role": "assistant", "content": "Hello!"}],
                  "non_preferred_output": [{"role": "assistant", "content": "Go away."}]}
    call = {"type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}
    weather = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]

    def one(record: dict[str, Any]) -> Any:
        parsed = parse_bytes(json.dumps(record).encode(), source="t")
        assert parsed.issues == [], parsed.issues
        return parsed.format, parsed.examples[0].content()

    assert one(chat) == ("chat", {"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [call]}, {"role": "tool", "content": "4 C"},
        {"role": "assistant", "content": "4 C in Oslo."}], "tools": weather})
    assert one(sharegpt) == ("sharegpt", {"messages": [
        {"role": "user", "content": "Weather in Oslo?"}, {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "4 C"}, {"role": "assistant", "content": "4 C in Oslo."}], "tools": weather})
    assert one(alpaca) == ("alpaca", {"messages": [
        {"role": "system", "content": "You translate."}, {"role": "user", "content": "Translate chien"},
        {"role": "assistant", "content": "dog"}, {"role": "user", "content": "Translate\nchat"},
        {"role": "assistant", "content": "cat"}]})
    assert one(openai_dpo) == ("chat", {"messages": [{"role": "user", "content": "Hi"}],
                                        "chosen": {"role": "assistant", "content": "Hello!"},
                                        "rejected": {"role": "assistant", "content": "Go away."}})
    bad_args = {**chat, "messages": [*chat["messages"][:2], {"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "weather", "arguments": "{city: Oslo}"}}]}]}
    issues = parse_bytes(json.dumps(bad_args).encode(), source="t").issues
    assert len(issues) == 1 and "arguments of 'weather' is not valid JSON" in issues[0].message
    assert parse_bytes(json.dumps(chat).encode(), source="t", format="alpaca").issues[0].message == \
        "missing 'instruction'"


# -- versions, atomicity, split -----------------------------------------------------------------
def test_versions_and_noop_reimport(store: DatasetStore, tmp_path: Path) -> None:
    rows = [_chat(f"Question {i} about {w}?", f"Answer {i}: {w} is fine.") for i, w in
            enumerate(["rivers", "mountains", "deserts", "forests"])]
    path = _jsonl(tmp_path / "v.jsonl", rows)
    first = store.import_file(path, name="v")
    assert first.created and first.dataset.version == 1
    assert _table_counts(store) == (1, 4)
    same = store.import_file(path, name="v")
    assert not same.created and same.dataset.id == first.dataset.id and _table_counts(store) == (1, 4)
    _jsonl(path, [*rows, _chat("Question 4 about oceans?", "Answer 4: oceans are fine.")])
    second = store.import_file(path, name="v")
    assert second.created and second.dataset.version == 2 and second.dataset.row_count == 5
    assert second.dataset.content_hash != first.dataset.content_hash
    assert [(i.name, i.version) for i in store.versions(principal=SYSTEM)] == [("v", 1), ("v", 2)]
    assert store.get("v", principal=SYSTEM).version == 2 and store.get("v", 1, principal=SYSTEM).row_count == 4
    with pytest.raises(NotFoundError, match=r"no version 3 \(versions: \[1, 2\]\)"):
        store.get("v", 3, principal=SYSTEM)
    assert store.remove("v", 1, principal=SYSTEM) == 1 and _table_counts(store) == (1, 5)
    assert store.remove("v", principal=SYSTEM) == 1 and _table_counts(store) == (0, 0)
    with pytest.raises(NotFoundError, match="no dataset named 'v'"):
        store.get("v", principal=SYSTEM)


def test_a_failed_import_leaves_nothing(store: DatasetStore, demo_dir: Path) -> None:
    written: list[tuple[str, int, int | None]] = []

    def interrupt(event: ProgressEvent) -> None:
        written.append((event.task, event.done, event.total))
        raise KeyboardInterrupt  # after the first batch of rows is in the transaction

    with pytest.raises(KeyboardInterrupt):
        store.import_file(demo_dir / "dpo.json", name="dpo", progress=interrupt)
    assert written == [("rows", 256, 300)] and _table_counts(store) == (0, 0)
    result = store.import_file(demo_dir / "dpo.json", name="dpo")
    assert result.created and result.dataset.version == 1 and _table_counts(store) == (1, 300)


def test_split_depends_only_on_row_content(store: DatasetStore, demo_dir: Path,
                                           raw: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    records = raw["alpaca"]
    forward = store.import_file(demo_dir / "alpaca.json", name="fwd").dataset
    backward = store.import_file(_jsonl(tmp_path / "rev.jsonl", records[::-1]), name="rev").dataset

    def assignment(info: Any) -> dict[str, str]:
        return {row_hash(e): s for e, s in zip(store.rows(info, principal=SYSTEM), store.splits(info, principal=SYSTEM),
                                               strict=True)}

    assert assignment(forward) == assignment(backward)
    # Expected 10 % of 999 rows: within five standard deviations (sqrt(999 * 0.1 * 0.9) = 9.5).
    assert abs(forward.eval_rows - 99.9) < 5 * 9.5 and forward.eval_rows == backward.eval_rows
    # Exact copies share a split, so they never leak between train and eval.
    by_text: dict[str, set[str]] = {}
    for e, s in zip(store.rows(forward, principal=SYSTEM), store.splits(forward, principal=SYSTEM), strict=True):
        by_text.setdefault(json.dumps(e.content(), sort_keys=True), set()).add(s)
    assert all(len(s) == 1 for s in by_text.values())


def _filler(i: int, n: int = 30) -> str:
    return " ".join(f"w{(i * 7919 + j * 104729) % 1000003}" for j in range(n))


def test_leakage_between_splits_and_into_eval_sets(store: DatasetStore, tmp_path: Path) -> None:
    base = "The quarterly report shows revenue grew in every region while costs stayed flat " + _filler(0)
    variants = [_chat(f"Summarise: {base} variant{i}", f"Revenue grew; costs flat ({i}).") for i in range(40)]
    info = store.import_file(_jsonl(tmp_path / "near.jsonl", variants), name="near",
                             options=ImportOptions(eval_fraction=0.5)).dataset
    held = info.eval_rows
    assert 0 < held < 40
    assert info.report["duplicates"]["near_rows"] == 40 and info.report["duplicates"]["exact_groups"] == 0
    assert info.report["leakage"]["eval_rows"] == held and not info.valid
    assert any("eval row(s) near-duplicate a train row" in r for r in info.reasons)

    benchmark = [_chat(f"Question {_filler(i)}", f"Answer {_filler(i + 100)}") for i in range(1, 4)]
    bench = store.import_file(_jsonl(tmp_path / "bench.jsonl", benchmark), name="bench",
                              options=ImportOptions(eval_set=True)).dataset
    assert bench.eval_set and bench.eval_rows == 3 and bench.train_rows == 0 and bench.valid

    copied = benchmark[1]["messages"]
    training = [_chat(f"Topic {_filler(i + 200)}", f"Reply {_filler(i + 300)}") for i in range(10)]
    training.append(_chat(copied[0]["content"] + " please", copied[1]["content"]))
    train = store.import_file(_jsonl(tmp_path / "train.jsonl", training), name="train",
                              options=ImportOptions(eval_fraction=0.0)).dataset
    found = train.report["leakage"]["eval_sets"]["bench"]
    assert found["train_rows"] == 1 and found["examples"][0]["line"] == 11
    assert found["examples"][0]["other_line"] == 2 and not train.valid
    assert any("eval set 'bench'" in r for r in train.reasons)


@pytest.mark.parametrize("kwargs, match", [
    ({"format": "csv"}, "unknown dataset format 'csv'"),
    ({"eval_fraction": 1.0}, "eval_fraction must be in"),
    ({"max_tokens": 0}, "max_tokens must be positive"),
    ({"near_duplicate_threshold": 1.5}, "near_duplicate_threshold"),
])
def test_import_options_are_checked_at_construction(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(DatasetError, match=match):
        ImportOptions(**kwargs)


# -- access ---------------------------------------------------------------------------------------
def _reader(*groups: str) -> Principal:
    return Principal(id="reader:" + ",".join(groups), groups=frozenset(groups))


def _example(i: int, topic: str) -> Example:
    return Example(i, [{"role": "user", "content": f"What does note {i} say about {topic}?"},
                       {"role": "assistant", "content": f"Note {i} says {topic} {_filler(i, 8)}."}])


def _reads_every_document(principal: Principal, document_acls: list[tuple[str, ...]]) -> bool:
    """The reference rule: a principal reads a row made from documents iff it reads each of them."""
    return principal.admin or all(not acl or principal.groups & set(acl) for acl in document_acls)


# Rows made from documents: the ACLs of each row's documents ('()' a public document).
SOURCES: list[list[tuple[str, ...]] | None] = [
    None,                               # 1 not from documents: as the dataset
    [()],                               # 2 one public document
    [("a",)],                           # 3 one document for a
    [("a", "b"), ("b", "c")],           # 4 common group b
    [("a",), ("b",)],                   # 5 no common group: only principals in a and b may read both
    [("a",), ()],                       # 6 a public document restricts nothing
    [("a", "b"), ("a", "b", "c"), ("b",)],  # 7 common group b
]


def test_row_acl_is_what_every_source_document_admits() -> None:
    assert [row_acl(s or ()) for s in SOURCES] == [None, (), ("a",), ("b",), (ADMINS_ONLY,), ("a",), ("b",)]
    assert row_acl([("b", "a"), ("a", "b")]) == ("a", "b")


def test_rows_made_from_documents_inherit_their_acls(store: DatasetStore) -> None:
    examples = [_example(i, "budgets") for i in range(1, len(SOURCES) + 1)]
    info = store.import_examples(examples, name="from-docs", source="test:documents", source_acls=SOURCES,
                                 options=ImportOptions(eval_fraction=0.0, acl=())).dataset
    assert info.schema["row_acls"] and info.row_count == len(SOURCES)
    with store.db.connection() as conn:
        stored = [r["acl"] for r in conn.execute(
            "SELECT acl FROM dataset_rows WHERE dataset_id = %s ORDER BY ordinal", (info.id,))]
    assert stored == [None, [], ["a"], ["b"], [ADMINS_ONLY], ["a"], ["b"]]

    # Every principal over the groups a, b, c (and principals carrying the sentinel itself): never a
    # row the reference refuses; exactly the reference for principals in at most one group; in
    # general, the rows where one of its groups admits it to every document (the safe side).
    principals = [_reader(*g) for g in ([], ["a"], ["b"], ["c"], ["a", "b"], ["a", "c"], ["b", "c"],
                                        ["a", "b", "c"], [ADMINS_ONLY], [ADMINS_ONLY, "c"])]
    for principal in [*principals, SYSTEM]:
        seen = [e.line for e in store.rows(info, principal=principal)]
        expected = [i for i, src in enumerate(SOURCES, start=1) if _reads_every_document(principal, src or [])]
        one_group = [i for i, src in enumerate(SOURCES, start=1) if principal.admin or any(
            _reads_every_document(_reader(g), src or []) for g in principal.groups | {"(none)"})]
        assert set(seen) <= set(expected) and seen == one_group, principal
        if len(principal.groups - {ADMINS_ONLY}) <= 1:
            assert seen == expected, principal
        assert len(store.splits(info, principal=principal)) == len(seen)
        view = store.get("from-docs", principal=principal)
        assert view.row_count == len(seen) and view.train_rows == len(seen)
        if len(seen) < len(SOURCES):  # a report over all rows would count and locate the hidden ones
            assert view.report.keys() == {"withheld"} and "lengths" not in view.schema
        else:
            assert view.report == info.report
    # Documents for a-or-b and b-or-c: a principal in a and c may read both, but the row is b's only.
    assert [e.line for e in store.rows(info, principal=_reader("a", "b"))] == [1, 2, 3, 4, 6, 7]
    assert [e.line for e in store.rows(info, principal=_reader("a", "c"))] == [1, 2, 3, 6]

    # The same rows from documents with other ACLs are other content: a new version.
    changed = store.import_examples(examples, name="from-docs", source="test:documents",
                                    source_acls=[None] * len(SOURCES), options=ImportOptions(eval_fraction=0.0, acl=()))
    assert changed.created and changed.dataset.version == 2 and not changed.dataset.schema["row_acls"]
    with pytest.raises(DatasetError, match="2 source ACL lists for 7 examples"):
        store.import_examples(examples, name="from-docs", source="t", source_acls=SOURCES[:2])


def test_a_hidden_version_is_reported_as_missing(store: DatasetStore, tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "hr.jsonl", [_chat(f"Salary of employee {i}?", f"It is {1000 + i} euros.")
                                          for i in range(6)])
    hr, eng, nobody = _reader("hr"), _reader("eng"), _reader()
    first = store.import_file(path, name="pay").dataset
    assert first.acl is None  # the default: admins only
    for principal in (hr, eng, nobody):
        assert store.versions(principal=principal) == [] and store.eval_sets(principal=principal) == {}
        assert store.rows(first, principal=principal) == [] and store.splits(first, principal=principal) == []
        for version in (None, 1):
            with pytest.raises(NotFoundError) as hidden:
                store.get("pay", version, principal=principal)
            with pytest.raises(NotFoundError) as missing:
                store.get("absent", version, principal=principal)
            assert str(hidden.value) == str(missing.value).replace("absent", "pay") == "no dataset named 'pay'"

    # The same bytes with another ACL: no new version, the version's ACL changes.
    again = store.import_file(path, name="pay", options=ImportOptions(acl=("hr",)))
    assert not again.created and again.acl_changed and again.dataset.version == 1 and again.dataset.acl == ("hr",)
    assert not store.import_file(path, name="pay", options=ImportOptions(acl=("hr",))).acl_changed
    assert [i.version for i in store.versions(principal=hr)] == [1] and store.versions(principal=eng) == []
    assert len(store.rows(store.get("pay", principal=hr), principal=hr)) == 6

    # Each version has its own ACL: a public version 2 leaves version 1 to hr, and a reader that
    # cannot read version 1 is told of the versions it can read only.
    _jsonl(path, [_chat("Office hours?", "Nine to five.")])
    second = store.import_file(path, name="pay", options=ImportOptions(acl=()))
    assert second.created and second.dataset.version == 2
    assert store.get("pay", principal=eng).version == 2 and store.get("pay", principal=hr).version == 2
    assert store.get("pay", 1, principal=hr).version == 1
    with pytest.raises(NotFoundError, match=r"^dataset 'pay' has no version 1 \(versions: \[2\]\)$"):
        store.get("pay", 1, principal=eng)
    assert [(i.name, i.version) for i in store.versions(principal=nobody)] == [("pay", 2)]


def test_acl_changes_and_removal_need_an_admin(store: DatasetStore, tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [_chat(f"Q{i} {_filler(i, 5)}?", f"A{i}.") for i in range(4)])
    store.import_file(path, name="d", options=ImportOptions(acl=("hr",)))
    hr, eng = _reader("hr"), _reader("eng")
    for act in (lambda p: store.set_acl("d", (), principal=p), lambda p: store.remove("d", principal=p)):
        with pytest.raises(PermissionDeniedError, match="only an admin may"):
            act(hr)  # it can read the dataset, so it learns it is refused
        with pytest.raises(NotFoundError, match=r"^no dataset 'd'$"):
            act(eng)  # it cannot: as if there were none
    assert store.get("d", principal=SYSTEM).acl == ("hr",)
    assert store.set_acl("d", ["eng", "hr", "eng"], principal=SYSTEM) == 1
    assert store.get("d", principal=eng).acl == ("eng", "hr")
    assert store.set_acl("d", None, principal=SYSTEM) == 1 and store.versions(principal=eng) == []
    with pytest.raises(NotFoundError, match=r"^no dataset 'd' version 7$"):
        store.set_acl("d", (), principal=SYSTEM, version=7)
    for bad, match in (("hr,eng", "not the string"), (["hr eng"], "invalid group name"), ([ADMINS_ONLY], "invalid")):
        with pytest.raises(DatasetError, match=match):
            store.set_acl("d", bad, principal=SYSTEM)
        with pytest.raises(DatasetError, match=match):
            ImportOptions(acl=bad)  # type: ignore[arg-type]
    assert store.remove("d", principal=SYSTEM) == 1


def test_the_report_does_not_name_eval_sets_the_reader_cannot_read(store: DatasetStore, tmp_path: Path) -> None:
    benchmark = [_chat(f"Question {_filler(i)}", f"Answer {_filler(i + 100)}") for i in range(1, 4)]
    store.import_file(_jsonl(tmp_path / "secret.jsonl", benchmark), name="secret-bench",
                      options=ImportOptions(eval_set=True))  # admins only
    copied = benchmark[1]["messages"]
    training = [_chat(f"Topic {_filler(i + 200)}", f"Reply {_filler(i + 300)}") for i in range(6)]
    training.append(_chat(copied[0]["content"] + " please", copied[1]["content"]))
    train = store.import_file(_jsonl(tmp_path / "train.jsonl", training), name="train",
                              options=ImportOptions(eval_fraction=0.0, acl=())).dataset
    # Imports check leakage against every eval set, whoever may read it.
    assert train.report["leakage"]["eval_sets"]["secret-bench"]["examples"][0]["other_line"] == 2
    assert not train.valid

    reader = _reader("eng")
    seen = store.get("train", principal=reader)
    assert "secret-bench" not in json.dumps(seen.__dict__) and not seen.valid
    hidden = seen.report["leakage"]["eval_sets"]
    assert hidden == {"hidden eval set 1": {"pairs": 1, "train_rows": 1, "examples": [{"line": 7}]}}
    assert seen.reasons == ("1 train row(s) near-duplicate hidden eval set 1",)
    assert [i.reasons for i in store.versions(principal=reader)] == [seen.reasons]
    assert store.get("train", principal=SYSTEM).reasons == ("1 train row(s) near-duplicate eval set 'secret-bench'",)

    store.set_acl("secret-bench", ["eng"], principal=SYSTEM)
    assert store.get("train", principal=reader).report == train.report


# -- the command --------------------------------------------------------------------------------
def test_data_commands(database_url: str, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ragtune.cli.main import app

    monkeypatch.setenv("RAGTUNE_DATABASE_URL", database_url)
    monkeypatch.setenv("RAGTUNE_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    path = _bad_file(tmp_path / "bad.jsonl")

    result = runner.invoke(app, ["data", "import", str(path), "--name", "bad", "--format", "chat", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["created"] and payload["version"] == 1 and payload["valid"] is False
    assert [e["line"] for e in payload["report"]["schema_errors"]] == [2, 7, 9]

    result = runner.invoke(app, ["data", "import", str(path), "--name", "bad", "--format", "chat"])
    assert result.exit_code == 0 and "unchanged" in result.stdout and "invalid" in result.stdout
    assert "line 2: invalid JSON" in result.stdout and "line 7: messages[0]: unknown role 'wizard'" in result.stdout

    result = runner.invoke(app, ["data", "list", "--json"])
    assert [(d["name"], d["version"], d["row_count"]) for d in json.loads(result.stdout)] == [("bad", 1, 5)]
    result = runner.invoke(app, ["data", "show", "bad", "--version", "1", "--json"])
    assert json.loads(result.stdout)["report"]["empty_outputs"]["lines"] == [3]
    result = runner.invoke(app, ["data", "show", "nope"])
    assert result.exit_code == 2 and "no dataset named 'nope'" in result.stderr
    result = runner.invoke(app, ["data", "import", str(path), "--name", "bad", "--eval-fraction", "1.5"])
    assert result.exit_code == 2 and "eval_fraction" in result.stderr
    assert payload["acl"] is None  # admins only by default
    result = runner.invoke(app, ["data", "acl", "bad", "--acl", "hr, eng"])
    assert result.exit_code == 0 and "1 version(s) of bad now readable by eng,hr" in result.stdout
    assert json.loads(runner.invoke(app, ["data", "show", "bad", "--json"]).stdout)["acl"] == ["eng", "hr"]
    assert "readable by eng,hr" in " ".join(runner.invoke(app, ["data", "show", "bad"]).stdout.split())
    result = runner.invoke(app, ["data", "import", str(path), "--name", "bad", "--format", "chat", "--public"])
    assert result.exit_code == 0 and "unchanged" in result.stdout
    assert "now readable by public" in " ".join(result.stdout.split())
    assert json.loads(runner.invoke(app, ["data", "list", "--json"]).stdout)[0]["acl"] == []
    for args in (["data", "acl", "bad"], ["data", "acl", "bad", "--public", "--admins-only"],
                 ["data", "import", str(path), "--name", "bad", "--acl", "hr", "--public"],
                 ["data", "acl", "bad", "--acl", " , "]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "--" in result.output, (args, result.output)
    result = runner.invoke(app, ["data", "acl", "nope", "--public"])
    assert result.exit_code == 2 and "no dataset 'nope'" in result.stderr
    result = runner.invoke(app, ["data", "acl", "bad", "--admins-only"])
    assert result.exit_code == 0 and "now readable by admins only" in result.stdout
    # A new version gets the import's ACL and leaves the older one's alone, which the import points out.
    _jsonl(tmp_path / "good.jsonl", [_chat("What is 2 + 2?", "4.")])
    result = runner.invoke(app, ["data", "import", str(tmp_path / "good.jsonl"), "--name", "bad", "--acl", "eng"])
    flat = " ".join(result.stdout.split())
    assert result.exit_code == 0 and "version 2" in flat and "readable by eng" in flat
    assert "note: version 1 is readable by admins only (change with `ragtune data acl bad`)" in flat
    listed = json.loads(runner.invoke(app, ["data", "list", "--json"]).stdout)
    assert [(d["version"], d["acl"]) for d in listed] == [(1, None), (2, ["eng"])]
    result = runner.invoke(app, ["data", "rm", "bad"])
    assert result.exit_code == 0 and "removed 2 version(s)" in result.stdout
    assert json.loads(runner.invoke(app, ["data", "list", "--json"]).stdout) == []
