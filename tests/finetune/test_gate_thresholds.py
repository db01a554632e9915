"""Promotion gates with absolute bounds (``">= 0.95"``, ``min``/``max``), one message per way a gate
fails, the notes about never-evaluated versions and different held-out rows, and the alias history
(promotions and rollbacks) in ``ragtune models list`` — on the real MLflow registry in the module's
PostgreSQL, with run folders written by hand (a completed run with an adapter folder and an
``eval.json``): the gates read metrics and tags only, so no model is trained or loaded here."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from ragtune.cli.main import app
from ragtune.errors import ConfigError, PromotionRefusedError
from ragtune.finetune.lifecycle.gates import check_gates
from ragtune.finetune.lifecycle.refs import ProductionChange
from ragtune.finetune.lifecycle.registry import CHANGES_TAG, TAG_LIMIT, ModelRegistry
from ragtune.finetune.lora import runs
from ragtune.finetune.lora.evaluate import EvalReport
from ragtune.settings import Gate, GateBound, Settings, parse_gates

runner = CliRunner()
ROWS, OTHER_ROWS = "r" * 64, "s" * 64


# -- the setting ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("spec", "expected"), [
    ("higher", Gate("m", True)),  # the syntaxes of before
    ("lower:0.05", Gate("m", False, 0.05)),
    ({"better": "higher", "tolerance": 0.01}, Gate("m", True, 0.01)),
    (">= 0.95", Gate("m", bounds=(GateBound(">=", 0.95),))),
    (">0.5", Gate("m", bounds=(GateBound(">", 0.5),))),
    ("<= 0.3", Gate("m", bounds=(GateBound("<=", 0.3),))),
    ("< 2", Gate("m", bounds=(GateBound("<", 2.0),))),
    ("higher:0.01, >= 0.95", Gate("m", True, 0.01, (GateBound(">=", 0.95),))),
    (">= 0.2, lower, < 0.8", Gate("m", False, 0.0, (GateBound(">=", 0.2), GateBound("<", 0.8)))),
    ({"better": "higher", "tolerance": 0.01, "min": 0.95}, Gate("m", True, 0.01, (GateBound(">=", 0.95),))),
    ({"min": 0.1, "max": 0.9}, Gate("m", None, 0.0, (GateBound(">=", 0.1), GateBound("<=", 0.9)))),
    ({"max": "1"}, Gate("m", bounds=(GateBound("<=", 1.0),))),
])
def test_gate_forms(spec: Any, expected: Gate) -> None:
    assert parse_gates({"m": spec}) == (expected,)


@pytest.mark.parametrize(("spec", "problem"), [
    ("sideways", "neither a direction nor a bound"),
    ("=> 0.9", "neither a direction nor a bound"),
    (">= x", "limit must be a number"),
    (">= nan", "finite"),
    ("higher, lower", "more than one direction"),
    (">= 0.9, > 0.8", "at most one lower bound"),
    (">= 0.9, <= 0.1", "no value meets both >= 0.9 and <= 0.1"),
    ("> 0.5, < 0.5", "no value meets both"),
    ("higher:-1", "tolerance must be >= 0"),
    ({"tolerance": 0.1, "min": 0.5}, "a tolerance needs a direction"),
    ({"better": "higher", "floor": 0.5}, "unknown key"),
    ({"min": True}, "min must be a number"),
    ({}, "no direction and no bound"),
    (3, "expected text or a table"),
])
def test_bad_gates_name_the_gate_and_the_accepted_forms(spec: Any, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.of(promotion_gates={"eval.json_valid": spec})
    message = str(raised.value)
    assert "training.promotion_gates.eval.json_valid" in message and problem in message
    assert "'>= N', '> N', '<= N' or '< N'" in message and "'higher' or 'lower'" in message and "min = " in message


def test_a_bound_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGTUNE_TRAINING_PROMOTION_GATES", '{"eval.json_valid": ">= 0.95"}')
    assert parse_gates(Settings.load().training.promotion_gates) == (
        Gate("eval.json_valid", bounds=(GateBound(">=", 0.95),)),)


# -- the checks, without a registry ------------------------------------------------------------------
@pytest.mark.parametrize(("spec", "candidate", "production", "expected"), [
    # an absolute bound, with no production version (the first promotion) and with one
    (">= 0.95", 0.96, None, [(True, "m: candidate 0.9600 meets the absolute bound >= 0.95")]),
    (">= 0.95", 0.95, None, [(True, "m: candidate 0.9500 meets the absolute bound >= 0.95")]),
    (">= 0.95", 0.90, None, [(False, "m: candidate 0.9000 is below the absolute bound >= 0.95")]),
    (">= 0.95", 0.90, 0.10, [(False, "m: candidate 0.9000 is below the absolute bound >= 0.95")]),
    ("> 0.95", 0.95, None, [(False, "m: candidate 0.9500 is not above the absolute bound > 0.95")]),
    ("<= 0.3", 0.31, None, [(False, "m: candidate 0.3100 is above the absolute bound <= 0.3")]),
    ("< 0.3", 0.30, None, [(False, "m: candidate 0.3000 is not below the absolute bound < 0.3")]),
    # a comparison applies only when production has the metric
    ("higher", 0.5, None, []),
    ("higher", 0.5, 0.6, [(False, "m: candidate 0.5000 is worse than production 0.6000 (needs >= 0.6000)")]),
    ("higher:0.05", 0.5, 0.6,
     [(False, "m: candidate 0.5000 is worse than production 0.6000 by more than the tolerance 0.05 "
              "(needs >= 0.5500)")]),
    ("lower:0.1", 0.65, 0.6, [(True, "m: candidate 0.6500, needs <= 0.7000 (production 0.6000)")]),
    # both: each check has its own result
    ("higher:0.5, >= 0.95", 0.9, 1.0, [(True, "m: candidate 0.9000, needs >= 0.5000 (production 1.0000)"),
                                       (False, "m: candidate 0.9000 is below the absolute bound >= 0.95")]),
    ("higher, >= 0.5", 0.6, None, [(True, "m: candidate 0.6000 meets the absolute bound >= 0.5")]),
    # not measured: one result, whatever the gate, never "worse"
    (">= 0.95", None, None, [(False, "candidate has no m (not measured): training run run-1 did not record it")]),
    ("higher, >= 0.5", None, 0.7, [(False, "candidate has no m (not measured): training run run-1 did not record it")]),
    ("higher", float("nan"), 0.7, [(False, "candidate has no m (not measured): training run run-1 did not record it")]),
    ("higher", None, None, []),
])
def test_check_gates(spec: str, candidate: float | None, production: float | None,
                     expected: list[tuple[bool, str]]) -> None:
    gates = parse_gates({"m": spec})
    theirs = None if production is None else {"m": production}
    results = check_gates(gates, {} if candidate is None else {"m": candidate}, theirs, run_id="run-1")
    assert [(r.passed, r.describe()) for r in results] == expected


@pytest.mark.parametrize(("metric", "hint"), [
    ("eval.json_valid", "run `ragtune tune eval run-1` and promote again"),
    ("eval.field.category.accuracy", "run `ragtune tune eval run-1 --task-spec FILE` (or `--set NAME`)"),
    ("eval_loss", "training run run-1 did not record it"),
])
def test_a_missing_metric_says_how_to_measure_it(metric: str, hint: str) -> None:
    [result] = check_gates(parse_gates({metric: ">= 0.5"}), {}, None, run_id="run-1")
    assert result.check == "missing" and result.describe().startswith(f"candidate has no {metric} (not measured): ")
    assert hint in result.describe()


# -- on the registry ---------------------------------------------------------------------------------
def _run(project: Settings, run_id: str, tuned: dict[str, float] | None, rows_hash: str = ROWS) -> str:
    """A completed run folder with an (empty) adapter and, given metrics, an ``eval.json``."""
    path = project.data_dir / "runs" / run_id
    (path / "adapter").mkdir(parents=True)
    (path / "adapter" / "adapter_config.json").write_text("{}", encoding="utf-8")
    record = runs.RunRecord(run_id=run_id, name="gated", path=str(path), method="lora", base="smollm2",
                            base_path="", base_hash="b" * 64, dataset="tools@1", dataset_version=1,
                            dataset_hash="d" * 64, train_rows=4, eval_rows=2, config={}, status="completed",
                            started_at=runs.now(), finished_at=runs.now(), adapter=str(path / "adapter"))
    runs.write_record(record)
    runs.write_json(path / "status.json", {"status": "completed"})
    if tuned is not None:
        report = EvalReport(run_id=run_id, run_dir=str(path), base="smollm2", adapter=str(path / "adapter"), rows=2,
                            rows_hash=rows_hash, cases={"json": 2}, max_new_tokens=16,
                            base_metrics=dict.fromkeys(tuned, 0.0), tuned_metrics=dict(tuned))
        runs.write_json(path / "eval.json", report.to_dict())
    return str(path)


def _register(registry: ModelRegistry, project: Settings, name: str,
              *versions: tuple[dict[str, float] | None, str]) -> None:
    for i, (tuned, rows_hash) in enumerate(versions, start=1):
        assert registry.register(_run(project, f"{name}-{i}", tuned, rows_hash), name).version == i


def _refused(registry: ModelRegistry, name: str, version: int) -> tuple[str, ...]:
    with pytest.raises(PromotionRefusedError) as refused:
        registry.promote(name, version)
    return refused.value.failures


def test_an_absolute_bound_gates_the_first_promotion_and_every_later_one(project: Settings) -> None:
    registry = ModelRegistry(project, gates=parse_gates({"eval.json_valid": "higher:0.5, >= 0.95"}))
    _register(registry, project, "abs", ({"json_valid": 0.9}, ROWS), ({"json_valid": 0.96}, ROWS),
              ({"json_valid": 0.94}, ROWS), ({"json_valid": 1.0}, ROWS))
    # No production version yet: the bound alone decides.
    assert _refused(registry, "abs", 1) == ("eval.json_valid: candidate 0.9000 is below the absolute bound >= 0.95",)
    assert registry.production("abs") is None
    first = registry.promote("abs", 2)
    assert first.previous is None and [(r.check, r.passed) for r in first.gates] == [("bound", True)]
    # With production: well within the tolerance of production, still below the bound.
    assert _refused(registry, "abs", 3) == ("eval.json_valid: candidate 0.9400 is below the absolute bound >= 0.95",)
    assert registry.production("abs").version == 2
    passed = registry.promote("abs", 4)
    assert [(r.check, r.passed) for r in passed.gates] == [("production", True), ("bound", True)]
    # --force passes a failed bound, and says so.
    forced = registry.promote("abs", 1, force=True)
    assert forced.forced and [r.describe() for r in forced.failed] == [
        "eval.json_valid: candidate 0.9000 is below the absolute bound >= 0.95"]


def test_each_failure_and_note_says_what_happened(project: Settings) -> None:
    registry = ModelRegistry(project, gates=parse_gates({"eval.token_f1": "higher", "eval.json_valid": ">= 0.5"}))
    _register(registry, project, "msg",
              ({"token_f1": 0.8, "json_valid": 1.0}, ROWS),  # 1: production first
              (None, ""),  # 2: never evaluated
              ({"token_f1": 0.7, "json_valid": 1.0}, ROWS),  # 3: worse than 1
              ({"token_f1": 0.9, "json_valid": 1.0}, OTHER_ROWS),  # 4: better, on other rows
              ({"token_f1": 0.9, "json_valid": 1.0}, ROWS))  # 5: promoted over the never-evaluated 2
    assert registry.promote("msg", 1).notes == ()
    # Never evaluated: "not measured", with what measures it; not "worse".
    assert _refused(registry, "msg", 2) == (
        "candidate has no eval.token_f1 (not measured): run `ragtune tune eval msg-2` and promote again",
        "candidate has no eval.json_valid (not measured): run `ragtune tune eval msg-2` and promote again")
    assert _refused(registry, "msg", 3) == (
        "eval.token_f1: candidate 0.7000 is worse than production 0.8000 (needs >= 0.8000)",)
    # Both evaluated, on different rows: the one case that says so.
    assert registry.promote("msg", 4).notes == (
        "versions 4 and 1 were evaluated on different held-out rows: their eval.* metrics may not compare",)
    # A never-evaluated candidate (forced) is not "evaluated on different rows".
    forced = registry.promote("msg", 2, force=True)
    assert forced.notes == ("candidate version 2 was never evaluated (no eval.json; run `ragtune tune eval msg-2`): "
                            "it has no eval.* metrics to compare",)
    # Nor is a never-evaluated production version; its missing metrics leave the bound alone to gate.
    over = registry.promote("msg", 5)
    assert [(r.check, r.gate.metric) for r in over.gates] == [("bound", "eval.json_valid")]
    assert over.notes == ("no gated metric on production version 2: nothing to compare",
                          "production version 2 was never evaluated (no eval.json; run `ragtune tune eval msg-2`): "
                          "it has no eval.* metrics to compare")
    record = json.loads(registry.version("msg", 5).tags["ragtune.promotion"])
    assert record["notes"] == list(over.notes) and record["previous"] == 2


def test_the_alias_history_records_promotions_and_rollbacks(project: Settings) -> None:
    registry = ModelRegistry(project, gates=())
    _register(registry, project, "hist", ({"token_f1": 0.5}, ROWS), ({"token_f1": 0.6}, ROWS))
    registry.promote("hist", 1)
    registry.promote("hist", 2)
    registry.rollback("hist")
    moves = [(c.action, c.previous, c.version) for c in registry.production_changes("hist")]
    assert moves == [("promote", None, 1), ("promote", 1, 2), ("rollback", 2, 1)]
    # A model promoted before the log existed: rebuilt from its versions' last promotion and rollback.
    registry.client.delete_registered_model_tag("hist", CHANGES_TAG)
    assert [(c.action, c.previous, c.version) for c in registry.production_changes("hist")] == moves
    # The tag keeps the newest changes that fit in MLflow's column.
    many = [ProductionChange(f"2025-01-01T00:00:{i:06d}", "promote", i + 1, i) for i in range(500)]
    registry._set_list_tag("hist", CHANGES_TAG, [c.to_dict() for c in many])
    kept = registry.production_changes("hist")
    assert 0 < len(kept) < 500 and kept[-1] == many[-1] and kept == many[-len(kept):]
    assert len(registry.client.get_registered_model("hist").tags[CHANGES_TAG]) <= TAG_LIMIT


def test_cli_promote_refuses_a_bound_and_list_shows_the_rollback(project: Settings,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGTUNE_DATABASE_URL", project.database_url or "")
    monkeypatch.setenv("RAGTUNE_CACHE_DIR", str(project.resolved_cache_dir))
    monkeypatch.setenv("RAGTUNE_TRAINING_PROMOTION_GATES", '{"eval.json_valid": ">= 0.95"}')
    where = ["--data-dir", str(project.data_dir)]
    for i, value in enumerate((0.9, 1.0, 0.97), start=1):
        path = _run(project, f"cli-{i}", {"json_valid": value})
        assert runner.invoke(app, ["models", "register", path, "--name", "cli-hist", *where]).exit_code == 0
    low = runner.invoke(app, ["models", "promote", "cli-hist", "1", *where])
    assert low.exit_code == 2 and "candidate 0.9000 is below the absolute bound >= 0.95" in " ".join(low.output.split())
    for version in ("2", "3"):
        assert runner.invoke(app, ["models", "promote", "cli-hist", version, *where]).exit_code == 0
    assert runner.invoke(app, ["models", "rollback", "cli-hist", *where]).exit_code == 0
    listed = json.loads(runner.invoke(app, ["models", "list", "cli-hist", "--json", *where]).stdout)
    by_version = {v["version"]: v for v in listed}
    assert by_version[2]["aliases"] == ["production"] and by_version[3]["aliases"] == []
    rolled = [(c["action"], c["from"], c["to"]) for c in by_version[3]["production_history"]]
    assert rolled == [("promote", 2, 3), ("rollback", 3, 2)]
    assert by_version[3]["production_history"][1]["at"] >= by_version[3]["production_history"][0]["at"]
    assert [(c["action"], c["from"], c["to"]) for c in by_version[2]["production_history"]] == [
        ("promote", None, 2), ("promote", 2, 3), ("rollback", 3, 2)]
    assert by_version[1]["production_history"] == []
    table = runner.invoke(app, ["models", "list", "cli-hist", *where], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "cli-hist: production history" in table.output
    assert "rollback" in table.output and "promotion" in table.output
