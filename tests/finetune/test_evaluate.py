"""Benchmark-driven evaluation: the metrics against reference implementations and tables of cases,
then base and tuned side by side on a real run (SmolLM2 + a LoRA adapter trained in the session)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ragtune.cli.main import app
from ragtune.errors import ConfigError, TrainingError
from ragtune.finetune.lora import scoring
from ragtune.finetune.lora.evaluate import EvalReport, eval_cases, evaluate_run, read_report, resolve_run
from ragtune.settings import Settings
from tests.finetune.tuned import WEATHER_TOOL, copy_run, tool_trainset
from tests.helpers import ProgressRecorder

runner = CliRunner()


# -- metrics --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("prediction", "reference"), [
    ("The secret word is pineapple.", "The secret word is pineapple."),
    ("the word is pineapple", "The secret word is pineapple."),
    ("Pineapple! The secret, word.", "The secret word is pineapple."),
    ("nothing in common", "The secret word is pineapple."),
    ("", "The secret word is pineapple."),
    ("Café au lait, s'il vous plaît 42", "cafe au lait 42 plait"),
    ("a b c d e f g", "g f e d c b a"),
    ("A cat sat on the mat and the cat was happy", "The cat sat on a mat; the cat is happy"),
])
def test_rouge_l_matches_the_rouge_score_package(prediction: str, reference: str) -> None:
    from rouge_score import rouge_scorer

    expected = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False).score(reference, prediction)["rougeL"]
    assert scoring.rouge_l(prediction, reference) == pytest.approx(expected.fmeasure)


def test_text_scores_reuse_the_squad_normalisation() -> None:
    scores = scoring.text_scores("the Secret word is Pineapple!", "Secret word is pineapple.")
    assert scores["exact_match"] == 1.0 and scores["token_f1"] == 1.0
    assert scoring.text_scores("pineapple", "The secret word is pineapple.")["token_f1"] == pytest.approx(0.4)


CALL = [{"name": "get_weather", "arguments": {"city": "Lisbon"}}]
TOOL_CASES = [
    # output, json_valid, schema_valid, name, args, args_f1
    ('{"arguments":{"city":"Lisbon"},"name":"get_weather"}', 1, 1, 1, 1, 1.0),
    ('```json\n{"name": "get_weather", "arguments": {"city": "Lisbon"}}\n```', 1, 1, 1, 1, 1.0),
    ('[{"type":"function","function":{"name":"get_weather","arguments":"{\\"city\\":\\"Lisbon\\"}"}}]', 1, 1, 1, 1, 1),
    ('Sure! {"name": "get_weather", "arguments": {"city": "Lisbon"}}', 0, 0, 1, 1, 1.0),
    ('{"arguments":{"city":" Lisbon"},"name":"get_weather"}', 1, 1, 1, 0, 0.0),
    ('{"arguments":{"town":"Lisbon"},"name":"get_weather"}', 1, 0, 1, 0, 0.0),
    ('{"arguments":{"city":"Lisbon"},"name":"get_forecast"}', 1, 0, 0, 0, 0.0),
    ('{"arguments":{"city":"Lisbon","units":"C"},"name":"get_weather"}', 1, 1, 1, 0, 2 / 3),
    ('{"arguments":{"city":3},"name":"get_weather"}', 1, 0, 1, 0, 0.0),
    ("It is sunny in Lisbon.", 0, 0, 0, 0, 0.0),
    ('{"arguments":{"city":"Lisbon"},"name":"get_weather"', 0, 0, 0, 0, 0.0),
]


@pytest.mark.parametrize(("output", "valid", "schema", "name", "args", "f1"), TOOL_CASES)
def test_tool_call_scores(output: str, valid: int, schema: int, name: int, args: int, f1: float) -> None:
    scores = scoring.tool_call_scores(output, CALL, [WEATHER_TOOL])
    assert scores == {"json_valid": valid, "schema_valid": schema, "tool_name_accuracy": name,
                      "tool_args_accuracy": args, "tool_args_f1": pytest.approx(f1)}


@pytest.mark.parametrize(("output", "valid", "schema"), [
    ('{"capital":"Rome","country":"Italy"}', 1, 1),
    ('{"country": "Italy", "capital": "Milan"}', 1, 1),  # right shape, wrong value: conformance only
    ('{"capital":"Rome"}', 1, 0),
    ('{"capital":1,"country":"Italy"}', 1, 0),
    ('["Rome", "Italy"]', 1, 0),
    ('JSON:\n{"capital":"Rome","country":"Italy"}', 0, 0),
])
def test_json_scores_check_an_inferred_schema(output: str, valid: int, schema: int) -> None:
    assert scoring.json_scores(output, {"capital": "Rome", "country": "Italy"}) == {"json_valid": valid,
                                                                                      "schema_valid": schema}


def test_cases_by_kind_with_the_tools_declared_in_the_prompt() -> None:
    cases = eval_cases(tool_trainset().eval)
    assert [c.kind for c in cases] == ["tool_call", "json", "text", "tool_call", "json"]
    weather = cases[0]
    assert weather.messages[0].role == "system" and "get_weather" in weather.messages[0].content
    assert weather.messages[-1].content == "What is the weather in Lisbon right now?"
    assert list(weather.calls) == [{"name": "get_weather", "arguments": {"city": "Lisbon"}}]
    assert json.loads(weather.reference) == {"arguments": {"city": "Lisbon"}, "name": "get_weather"}
    assert cases[1].value == {"capital": "Rome", "country": "Italy"} and cases[2].reference.endswith("pineapple.")


# -- a real run -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def evaluation_events() -> ProgressRecorder:
    return ProgressRecorder()


@pytest.fixture(scope="module")
def report(tool_run: Any, cache_dir: Path, evaluation_events: ProgressRecorder) -> EvalReport:
    """Base and tuned on the first three held-out rows (one of each kind), greedy, 24 new tokens."""
    return evaluate_run(tool_run.path, settings=Settings(cache_dir=cache_dir), limit=3, max_new_tokens=24,
                        progress=evaluation_events)


def test_evaluation_reports_the_cases_of_both_sides(report: EvalReport, evaluation_events: ProgressRecorder) -> None:
    events = evaluation_events.events
    assert {e.task for e in events} == {"evaluation"} and {e.total for e in events} == {6}
    evaluation_events.assert_monotone()
    assert [(e.done, e.detail) for e in events] == [(0, "base: held-out loss"), (1, "base"), (2, "base"), (3, "base"),
                                                    (3, "tuned: held-out loss"), (4, "tuned"), (5, "tuned"),
                                                    (6, "tuned")]


def test_tuned_beats_base_on_held_out_rows(report: EvalReport, tool_run: Any) -> None:
    base, tuned, delta = report.base_metrics, report.tuned_metrics, report.delta
    assert report.rows == 3 and report.cases == {"tool_call": 1, "json": 1, "text": 1}
    # Loss on the completion tokens only: the adapter learnt the replies.
    assert tuned["loss"] is not None and base["loss"] is not None and tuned["loss"] < base["loss"] / 2
    assert tuned["perplexity"] == pytest.approx(2.718281828 ** tuned["loss"])
    assert report.timings["base_loss_tokens"] == report.timings["tuned_loss_tokens"] > 0
    # The base model answers in prose; the tuned one emits the call and the JSON.
    assert base["json_valid"] == 0.0 and tuned["json_valid"] == 1.0 and tuned["schema_valid"] == 1.0
    assert base["tool_name_accuracy"] == 0.0 and tuned["tool_name_accuracy"] == 1.0
    assert tuned["token_f1"] == 1.0 and tuned["rouge_l"] == 1.0 and (base["token_f1"] or 0) < 1.0
    assert delta["loss"] is not None and delta["loss"] < 0 and delta["json_valid"] == 1.0
    # Same decoding on both sides, outputs kept per case.
    assert report.decoding == "greedy" and report.max_new_tokens == 24
    assert [d["kind"] for d in report.details] == ["tool_call", "json", "text"]
    assert report.details[2]["tuned"]["output"] == "The secret word is pineapple."
    # eval.json in the run folder holds the same report.
    stored = read_report(tool_run.path)
    assert stored is not None and stored.tuned_metrics == report.tuned_metrics and stored.rows_hash == report.rows_hash
    on_disk = json.loads((Path(tool_run.path) / "eval.json").read_text())
    assert set(on_disk["metrics"]) == {"base", "tuned", "delta"}


def test_cli_prints_base_tuned_and_delta(tool_run: Any, tmp_path: Path, database_url: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGTUNE_DATABASE_URL", database_url)  # the evaluation's trace goes there
    runs_dir = tmp_path / "project" / "runs"
    copy = copy_run(tool_run, runs_dir, "tools-copy")
    # By run id, one row, a tiny decoding budget; --json leaves out the per-case outputs.
    result = runner.invoke(app, ["tune", "eval", "tools-copy", "--limit", "1", "--max-new-tokens", "4", "--json",
                                 "--data-dir", str(tmp_path / "project")])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["rows"] == 1 and data["max_new_tokens"] == 4 and "details" not in data
    assert data["metrics"]["tuned"]["loss"] < data["metrics"]["base"]["loss"]
    assert read_report(copy.path) is not None
    # the evaluation is a trace naming the run, a span per side with its metrics
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        (root,) = conn.execute("SELECT * FROM spans WHERE kind = 'evaluation' AND parent_id IS NULL").fetchall()
        sides = conn.execute("SELECT * FROM spans WHERE trace_id = %s AND name = 'evaluate' ORDER BY start_time",
                             (root["trace_id"],)).fetchall()
    assert root["attributes"]["ragtune.run_id"] == copy.run_id
    assert root["attributes"]["ragtune.evaluation.type"] == "adapter"
    assert [s["attributes"]["ragtune.evaluation.side"] for s in sides] == ["base", "tuned"]
    assert [s["attributes"]["ragtune.evaluation.loss"] for s in sides] == [
        data["metrics"]["base"]["loss"], data["metrics"]["tuned"]["loss"]]
    # The table: one row per measured metric, base | tuned | delta.
    from rich.console import Console

    from ragtune.cli.tune_eval import report_table

    console = Console(width=160, record=True)
    console.print(report_table(read_report(copy.path)))
    text = console.export_text()
    assert all(col in text for col in ("metric", "base", "tuned", "delta", "loss", "tool_name_accuracy"))
    assert "rouge_l" not in text  # no text case in the first row


def test_failed_and_unevaluable_runs_are_refused(tool_run: Any, tmp_path: Path) -> None:
    failed = copy_run(tool_run, tmp_path / "runs", "tools-failed", status="failed", error="interrupted")
    with pytest.raises(TrainingError, match="failed: interrupted"):
        evaluate_run(failed.path)
    # A run killed mid-training (status running, nobody holding its lock) is marked failed and refused.
    killed = copy_run(tool_run, tmp_path / "runs", "tools-killed", status="running")
    with pytest.raises(TrainingError, match="only a completed run"):
        evaluate_run(killed.path)
    empty = copy_run(tool_run, tmp_path / "runs", "tools-empty")
    (Path(empty.path) / "data" / "eval.jsonl").write_text("")
    with pytest.raises(ConfigError, match="no held-out rows"):
        evaluate_run(empty.path)
    with pytest.raises(ConfigError, match="--limit"):
        evaluate_run(tool_run.path, limit=0)
    # Run references: a folder, an id, a name (its newest completed run); anything else is not found.
    assert resolve_run(empty.path, tmp_path / "runs") == Path(empty.path)
    assert resolve_run("tools-empty", tmp_path / "runs") == Path(empty.path)
    assert resolve_run("tools", tmp_path / "runs") == Path(empty.path)
    result = runner.invoke(app, ["tune", "eval", "nope", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "no training run 'nope'" in result.output
