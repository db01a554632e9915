"""Task specs and the metrics they declare (issue 18): parsing and its errors, macro-F1 against
scikit-learn, per-row JSON scores, and ``eval answers`` with a spec on a real engine (a BEIR folder
of support tickets whose gold answers are JSON, answered by a planted generator)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ragtune.engine import Ragtune
from ragtune.errors import ConfigError
from ragtune.evaluate.answers import evaluate_answers
from ragtune.evaluate.datasets import load_beir
from ragtune.evaluate.task_metrics import MISSING, json_task_scores, macro_f1, score_json_task
from ragtune.evaluate.task_spec import FieldSpec, load_task_spec
from tests.ticket_triage import GOLD, REPLIES, SPEC, SPEC_TOML, TICKETS, Planted


# -- the spec ---------------------------------------------------------------------------------------
def test_a_spec_reads_the_same_from_json_toml_and_inline(tmp_path: Path) -> None:
    (tmp_path / "spec.json").write_text(json.dumps(SPEC), encoding="utf-8")
    (tmp_path / "spec.toml").write_text(SPEC_TOML, encoding="utf-8")
    inline, from_json = load_task_spec(SPEC), load_task_spec(tmp_path / "spec.json")
    from_toml = load_task_spec(str(tmp_path / "spec.toml"))
    assert (inline.source, from_json.source, from_toml.source) == ("<inline>", str(tmp_path / "spec.json"),
                                                                   str(tmp_path / "spec.toml"))
    assert replace(from_toml, source="<inline>") == replace(from_json, source="<inline>") == inline
    assert inline.fields == (FieldSpec("category", ("accuracy",)), FieldSpec("priority", ("accuracy", "exact")),
                             FieldSpec("summary", ("f1",)))
    assert inline.field_metric_names() == [
        "field.category.accuracy", "field.category.macro_f1", "field.priority.accuracy", "field.priority.exact",
        "field.priority.macro_f1", "field.summary.f1"]
    assert load_task_spec({"task": "text"}).task == "text" and load_task_spec(inline) is inline


_SCHEMA = {"type": "object", "properties": {"category": {"enum": ["a", "b"]}}}
BAD_SPECS = [
    # (file name, content, what the message must say)
    ("broken.json", '{"task": "json", "schema": {', "not valid JSON"),
    ("broken.toml", 'task = "json"\n[schema\n', "not valid TOML"),
    ("list.json", "[1, 2]", "expected an object"),
    ("unknown-key.json", {"task": "json", "schema": _SCHEMA, "metrics": ["f1"]}, "unknown key(s) 'metrics'"),
    ("task.json", {"task": "classification"}, "task must be one of json, text, tool_call"),
    ("no-schema.json", {"task": "json", "fields": {}}, "needs a JSON Schema"),
    ("bad-schema.json", {"schema": {"type": "objekt"}}, "not a valid JSON Schema at type"),
    ("field.json", {"schema": _SCHEMA, "fields": {"priority": "accuracy"}},
     "field 'priority' is not a property of the schema (its top-level properties: category)"),
    ("metric.json", {"schema": _SCHEMA, "fields": {"category": ["accuracy", "recall"]}},
     "field 'category': unknown metric(s) 'recall'; expected exact, f1, accuracy"),
    ("metric-type.json", {"schema": _SCHEMA, "fields": {"category": 3}}, "expected a metric or a list"),
    ("name.json", {"schema": {"properties": {"a.b": {}}}, "fields": {"a.b": "exact"}}, "not usable in a metric name"),
    ("array.json", {"schema": {"type": "array"}, "fields": {"category": "exact"}}, "need an object schema"),
    ("text.json", {"task": "text", "schema": _SCHEMA}, "a text task takes no schema"),
    ("date.toml", 'task = "json"\n[schema]\nconst = 2024-01-31\n', "the schema holds a value that is not JSON"),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_a_bad_spec_is_a_config_error_naming_the_file_and_the_problem(tmp_path: Path, name: str, content: Any,
                                                                      message: str) -> None:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_task_spec(path)
    assert str(raised.value).startswith(f"task spec {path}: ") and message in str(raised.value)


def test_a_missing_spec_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"task spec .*nope\.json: cannot be read"):
        load_task_spec(tmp_path / "nope.json")


# -- metrics ----------------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from("abce")), min_size=1, max_size=30))
def test_macro_f1_is_scikit_learns(pairs: list[tuple[str, str]]) -> None:
    from sklearn.metrics import f1_score

    gold, predicted = zip(*pairs, strict=True)
    assert macro_f1(pairs) == pytest.approx(f1_score(gold, predicted, average="macro", zero_division=0))


def test_macro_f1_of_nothing_is_none() -> None:
    assert macro_f1([]) is None


TICKET = {"category": "billing", "priority": "P2", "summary": "duplicate charge on the March invoice"}
ROW_CASES = [
    # reply, json_valid, schema_valid, category, priority, summary F1
    ('{"category":"billing","priority":"P2","summary":"duplicate charge on the March invoice"}', 1, 1, 1, 1, 1.0),
    # SQuAD normalisation: 4 of the gold's 5 tokens ("on", not "the"), all 4 predicted right
    ('{"summary":"Duplicate charge, March invoice!","priority":"P2","category":"billing"}', 1, 1, 1, 1, 8 / 9),
    ('{"category":"refund","priority":"P2","summary":"duplicate charge"}', 1, 0, 0, 1, 4 / 7),  # enum violated
    ('{"category":"billing","priority":"p2","summary":"x"}', 1, 0, 1, 0, 0.0),  # no normalisation of classes
    ('{"category":"billing","priority":"P2"}', 1, 0, 1, 1, 0.0),  # a required field missing
    ('{"category":"billing","priority":"P2","summary":"s","extra":1}', 1, 0, 1, 1, 0.0),
    ('Triage: {"category":"billing","priority":"P3","summary":"charge"}', 0, 0, 1, 0, 1 / 3),  # fields read leniently
    ("billing, P2", 0, 0, 0, 0, 0.0),
]


@pytest.mark.parametrize(("reply", "valid", "schema", "category", "priority", "f1"), ROW_CASES)
def test_json_task_scores_of_one_reply(reply: str, valid: int, schema: int, category: int, priority: int,
                                       f1: float) -> None:
    scores = json_task_scores(load_task_spec(SPEC), reply, TICKET)
    assert scores == {"json_valid": valid, "schema_valid": schema, "field.category.accuracy": category,
                      "field.priority.accuracy": priority, "field.priority.exact": priority,
                      "field.summary.f1": pytest.approx(f1)}


def test_a_field_the_reference_lacks_is_not_scored_on_that_row() -> None:
    spec = load_task_spec({"schema": {"type": "object", "properties": {"a": {}, "b": {}}},
                           "fields": {"a": "exact", "b": ["exact", "f1"]}})
    assert json_task_scores(spec, '{"a": [1, 2], "b": "x"}', {"a": [1, 2]}) == {
        "json_valid": 1.0, "schema_valid": 1.0, "field.a.exact": 1.0}


def test_valid_json_with_wrong_fields_shows_in_the_task_metrics() -> None:
    """The issue's report: replies that all parse, category right on 2 of 6, priority always P3."""
    metrics, confusion = score_json_task(load_task_spec(SPEC), REPLIES, GOLD)
    assert metrics["json_valid"] == 1.0
    assert metrics["schema_valid"] == pytest.approx(5 / 6)  # "refund" is not in the enum
    assert metrics["field.category.accuracy"] == pytest.approx(2 / 6)
    assert metrics["field.priority.accuracy"] == metrics["field.priority.exact"] == pytest.approx(2 / 6)
    # Always "P3": right only where the gold is P3, so one class of three has F1 > 0.
    assert metrics["field.priority.macro_f1"] == pytest.approx((0 + 0 + 2 * 2 / (2 * 2 + 4)) / 3)
    assert metrics["field.category.macro_f1"] == pytest.approx(0.25)
    assert 0 < (metrics["field.summary.f1"] or 0) < 1
    assert confusion["priority"] == {"P1": {"P3": 2}, "P2": {"P3": 2}, "P3": {"P3": 2}}
    assert confusion["category"] == {"account": {"billing": 1, "bug": 1}, "billing": {"billing": 1, "refund": 1},
                                     "bug": {"account": 1, "bug": 1}}
    # A reply that is not JSON predicts no class at all.
    _, prose = score_json_task(load_task_spec(SPEC), ["P3, billing"] * 6, GOLD)
    assert prose["category"] == {"account": {MISSING: 2}, "billing": {MISSING: 2}, "bug": {MISSING: 2}}


# -- eval answers with a spec, on a real engine ----------------------------------------------------------
@pytest.fixture
def tickets_beir(tmp_path: Path) -> Path:
    """The tickets as a BEIR folder: each ticket a document and a query, its gold triage the answer."""
    root = tmp_path / "tickets"
    (root / "qrels").mkdir(parents=True)
    ids = [f"t{i}" for i in range(1, len(TICKETS) + 1)]
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{q}", "title": "Ticket", "text": text}) + "\n"
                                               for q, text in zip(ids, TICKETS, strict=True)), encoding="utf-8")
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": text, "answers": [gold]}) + "\n"
                                                for q, (text, (gold, _)) in zip(ids, TICKETS.items(), strict=True)),
                                        encoding="utf-8")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\td{q}\t1\n" for q in ids),
                                             encoding="utf-8")
    return root


def test_beir_queries_may_carry_gold_answers(tickets_beir: Path) -> None:
    ds = load_beir(tickets_beir)
    assert json.loads(ds.answers["t1"][0]) == GOLD[0] and len(ds.answers) == 6


@pytest.fixture
def planted_rt(settings: Any, embedder: Any) -> Iterator[Ragtune]:
    """An engine whose plugins add the planted generators (``planted`` and a prose-only ``prose``)."""
    from ragtune.plugins import Plugins

    plugins = Plugins.load(entry_points=False)
    plugins.generators.register("planted", lambda name, settings: Planted(name))
    plugins.generators.register("prose", lambda name, settings: Planted(name, prose=True))
    with Ragtune(settings, embedder=embedder, plugins=plugins) as rt:
        yield rt


def test_eval_answers_with_a_json_spec_reports_fields(planted_rt: Ragtune, tickets_beir: Path) -> None:
    result = evaluate_answers(planted_rt, f"beir:{tickets_beir}", generators=["planted", "prose"], limit=6,
                              task_spec=SPEC)
    assert result["task"]["source"] == "<inline>" and result["task"]["fields"]["priority"] == ["accuracy", "exact"]
    planted, prose = result["generators"]["planted"], result["generators"]["prose"]
    assert planted["questions"] == 6 and planted["abstained"] == 0  # every ticket answered, none abstained
    expected, confusion = score_json_task(load_task_spec(SPEC), REPLIES, GOLD)
    assert {k: planted[k] for k in expected} == expected and planted["confusion"] == confusion
    assert planted["schema_valid"] == pytest.approx(5 / 6)
    assert planted["field.category.accuracy"] == pytest.approx(2 / 6)
    assert prose["json_valid"] == 0.0 and prose["field.category.accuracy"] == 0.0
    assert set(prose["confusion"]["priority"]["P1"]) == {MISSING}


def test_eval_answers_refuses_a_json_spec_without_json_golds_before_indexing(rt: Ragtune) -> None:
    with pytest.raises(ConfigError, match=r"task spec <inline>: a json task needs gold answers that are JSON, but "
                                          r"question '.+' of squad has"):
        evaluate_answers(rt, "squad", generators=["extractive"], limit=2, subset_corpus=True, task_spec=SPEC)
    with pytest.raises(ConfigError, match="a tool_call task is evaluated by `ragtune tune eval`"):
        evaluate_answers(rt, "squad", generators=["extractive"], limit=2, task_spec={"task": "tool_call"})
    assert rt.collections() == []  # nothing was indexed
