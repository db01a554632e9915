"""``tune eval`` with a task spec and on a registered evaluation set (issue 18): planted replies that
are valid JSON with wrong fields must show in the report, and ``ragtune tune eval --set NAME
--task-spec FILE`` end to end on the session's real LoRA run (SmolLM2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from ragtune.cli.common import confusion_tables
from ragtune.cli.main import app
from ragtune.cli.tune_eval import report_table
from ragtune.errors import ConfigError
from ragtune.evaluate.task_metrics import MISSING
from ragtune.evaluate.task_spec import load_task_spec
from ragtune.finetune.data.examples import Example, canonical_json
from ragtune.finetune.data.store import DatasetStore
from ragtune.finetune.data.versions import ImportOptions
from ragtune.finetune.lora.evaluate import Comparison, EvalReport, compare, read_report, rows_hash
from ragtune.settings import Settings
from ragtune.store.database import Database
from tests.finetune.tuned import capital, copy_run, secret
from tests.ticket_triage import SPEC, TICKETS, Planted

runner = CliRunner()


def ticket_rows() -> list[Example]:
    return [Example(i, [{"role": "user", "content": f"Triage this ticket as JSON: {text}"},
                        {"role": "assistant", "content": canonical_json(gold)}])
            for i, (text, (gold, _)) in enumerate(TICKETS.items(), start=1)]


def as_report(result: Comparison, rows: list[Example], spec: Any = None) -> EvalReport:
    """The report ``evaluate_run`` would write for this comparison (no run folder needed)."""
    return EvalReport(run_id="planted", run_dir="", base="prose", adapter="planted", rows=len(rows),
                      rows_hash=rows_hash(rows), cases={"json": len(result.cases)}, max_new_tokens=64,
                      base_metrics=result.base.metrics, tuned_metrics=result.tuned.metrics, details=result.details,
                      task=spec.to_dict() if spec else None,
                      confusion={"base": result.base.confusion, "tuned": result.tuned.confusion})


def rendered(*tables: Any) -> str:
    """The tables as plain words: box drawing and runs of spaces as one space."""
    console = Console(width=200, record=True)
    for table in tables:
        console.print(table)
    text = "".join(" " if "\u2500" <= ch <= "\u257f" else ch for ch in console.export_text())
    return " ".join(text.split())


def test_planted_valid_json_with_wrong_fields_shows_in_the_report() -> None:
    rows = ticket_rows()
    # Without a spec, the issue as reported: every reply parses and fits the inferred schema.
    blind = compare(rows, Planted("prose", prose=True), Planted())
    assert blind.tuned.metrics["json_valid"] == blind.tuned.metrics["schema_valid"] == 1.0
    assert not any(name.startswith("field.") for name in blind.tuned.metrics)

    spec = load_task_spec(SPEC)
    result = compare(rows, Planted("prose", prose=True), Planted(), spec=spec)
    tuned, base = result.tuned.metrics, result.base.metrics
    assert tuned["json_valid"] == 1.0 and tuned["schema_valid"] == pytest.approx(5 / 6)  # "refund" breaks the enum
    assert tuned["field.category.accuracy"] == pytest.approx(2 / 6)
    assert tuned["field.priority.accuracy"] == tuned["field.priority.exact"] == pytest.approx(2 / 6)
    assert tuned["field.priority.macro_f1"] == pytest.approx(1 / 6)  # always "P3": one class of three, F1 0.5
    assert tuned["field.category.macro_f1"] == pytest.approx(0.25)
    assert base["json_valid"] == 0.0 and base["field.category.accuracy"] == 0.0 and base["field.summary.f1"] == 0.0
    assert result.tuned.confusion["priority"] == {"P1": {"P3": 2}, "P2": {"P3": 2}, "P3": {"P3": 2}}
    assert result.base.confusion["category"] == {"account": {MISSING: 2}, "billing": {MISSING: 2},
                                                 "bug": {MISSING: 2}}
    # Per case, the field scores sit beside the output.
    refund = result.details[3]["tuned"]
    assert '"refund"' in refund["output"] and refund["schema_valid"] == 0.0 and refund["field.category.accuracy"] == 0

    report = as_report(result, rows, spec)
    assert report.delta["field.category.accuracy"] == pytest.approx(2 / 6)
    again = EvalReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again.confusion == report.confusion and again.task == report.task and again.delta == report.delta
    # The table shows every field metric (after the others), then the confusion of each class field.
    text = rendered(report_table(report), *confusion_tables(report.confusion["tuned"], "tuned"))
    assert "field.category.accuracy 0.0000 0.3333 +0.3333" in text
    assert "field.priority.macro_f1 0.0000 0.1667 +0.1667" in text
    assert "schema_valid 0.0000 0.8333 +0.8333" in text and "field.summary.f1" in text
    assert text.index("schema_valid") < text.index("field.category.accuracy")  # the spec's metrics come last
    assert "tuned: priority reference \\ predicted P1 P2 P3 right P1 . . 2 0/2 P2 . . 2 0/2 P3 . . 2 2/2" in text
    assert "billing 1 . refund" not in text and "billing . 1 . 1 1/2" in text  # columns: account billing bug refund


def test_a_spec_of_a_kind_no_case_has_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"task spec <inline>: it declares a text task, but no case of the "
                                          r"held-out rows is one \(cases: 6 json\)"):
        compare(ticket_rows(), Planted(), Planted(), spec=load_task_spec({"task": "text"}))


# -- the CLI, end to end on the session's real run ------------------------------------------------------
CAPITALS_SPEC = """\
task = "json"

[schema]
type = "object"
required = ["capital", "country"]
properties = { capital = { type = "string" }, country = { enum = ["Italy", "Ireland"] } }

[fields]
capital = ["exact", "f1"]
country = "accuracy"
"""


def test_cli_tune_eval_on_a_registered_set_with_a_task_spec(tool_run: Any, project: Settings, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGTUNE_DATABASE_URL", project.database_url or "")
    monkeypatch.setenv("RAGTUNE_CACHE_DIR", str(project.resolved_cache_dir))
    run = copy_run(tool_run, project.data_dir / "runs", "tools-spec")
    db = Database(project.database_url or "")
    try:
        store = DatasetStore(db, cache_dir=project.resolved_cache_dir)
        store.import_examples([capital("Italy", 1), capital("Ireland", 2)], name="capitals", source="test",
                              options=ImportOptions(eval_set=True))
        store.import_examples([secret("The secret?", 1)], name="not-a-set", source="test")
    finally:
        db.close()
    spec = tmp_path / "capitals.toml"
    spec.write_text(CAPITALS_SPEC, encoding="utf-8")
    where = ["--data-dir", str(project.data_dir)]

    def tune_eval(*args: str) -> Any:
        return runner.invoke(app, ["tune", "eval", "tools-spec", *args, *where])

    # Refusals come before any model loads: an unknown set, a dataset that is no eval set, bad specs.
    unknown = tune_eval("--set", "nope")
    assert unknown.exit_code == 2 and "no evaluation set named 'nope'" in unknown.output
    assert "registered evaluation sets: capitals" in " ".join(unknown.output.split())
    not_set = tune_eval("--set", "not-a-set")
    assert not_set.exit_code == 2 and "not registered as an eval set" in " ".join(not_set.output.split())
    (tmp_path / "bad.json").write_text(json.dumps({"schema": {"properties": {"capital": {}}},
                                                   "fields": {"city": "exact"}}), encoding="utf-8")
    bad = tune_eval("--task-spec", str(tmp_path / "bad.json"))
    flat = " ".join(bad.output.split())
    assert bad.exit_code == 2 and "bad.json: field 'city' is not a property of the schema" in flat
    (tmp_path / "text.json").write_text('{"task": "tool_call"}', encoding="utf-8")
    kind = tune_eval("--set", "capitals", "--task-spec", str(tmp_path / "text.json"))
    assert kind.exit_code == 2 and "declares a tool_call task, but no case of the eval set capitals v1" in " ".join(
        kind.output.split())

    result = tune_eval("--set", "capitals", "--task-spec", str(spec), "--max-new-tokens", "24", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["data"] == "eval set capitals v1" and data["rows"] == 2 and data["cases"] == {"json": 2}
    assert data["task"]["source"] == str(spec) and data["task"]["fields"] == {"capital": ["exact", "f1"],
                                                                              "country": ["accuracy"]}
    names = {"field.capital.exact", "field.capital.f1", "field.country.accuracy", "field.country.macro_f1"}
    for side in ("base", "tuned"):
        metrics = data["metrics"][side]
        assert names <= set(metrics) and all(metrics[n] is not None and 0 <= metrics[n] <= 1 for n in names)
        assert set(data["confusion"][side]["country"]) == {"Italy", "Ireland"}
    # The field metrics are the means of the per-case scores kept in eval.json.
    stored = read_report(run.path)
    assert stored is not None and stored.rows_hash == data["rows_hash"] and stored.data == "eval set capitals v1"
    for side in ("base", "tuned"):
        per_case = [d[side]["field.country.accuracy"] for d in stored.details]
        assert stored.to_dict()["metrics"][side]["field.country.accuracy"] == pytest.approx(sum(per_case) / 2)
        right = sum(counts.get(gold, 0) for gold, counts in stored.confusion[side]["country"].items())
        assert right == sum(per_case)
    # The trained adapter answers in the JSON it learnt; the base model does not.
    assert data["metrics"]["tuned"]["json_valid"] == 1.0 and data["metrics"]["base"]["json_valid"] == 0.0
    text = rendered(report_table(stored), *confusion_tables(stored.confusion["tuned"], "tuned"))
    assert "(eval set capitals v1)" in text and "field.country.macro_f1" in text and "tuned: country" in text
