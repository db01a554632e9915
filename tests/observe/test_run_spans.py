"""Spans of long runs (issue 19): a training run is a ``train`` trace with a span per epoch and per
evaluation (linked both ways with its MLflow run); an evaluation is an ``evaluation`` trace with a
span per mode and its searches below; a server's ingest job is a ``job`` trace with its ingest
below. All against the real database, model and trainer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from ragtune.cli.main import app
from ragtune.engine import Ragtune
from ragtune.evaluate.retrieval import evaluate_retrieval
from ragtune.finetune.lora import runs
from ragtune.finetune.lora.config import TuneConfig, to_toml
from ragtune.models import Principal
from ragtune.settings import Settings
from tests.evaluate.test_eval_retrieval import beir_folder

runner = CliRunner()


def _trace(rt: Ragtune, trace_id: str) -> list[dict[str, Any]]:
    rt.tracing.flush()
    with rt.db.connection() as conn:
        return [dict(r) for r in conn.execute("SELECT * FROM spans WHERE trace_id = %s ORDER BY start_time, name",
                                              (trace_id,)).fetchall()]


def _roots(rt: Ragtune, kind: str) -> list[dict[str, Any]]:
    rt.tracing.flush()
    with rt.db.connection() as conn:
        return [dict(r) for r in conn.execute("SELECT * FROM spans WHERE kind = %s AND parent_id IS NULL "
                                              "ORDER BY start_time", (kind,)).fetchall()]


def test_a_training_run_is_a_trace_of_epochs_and_evaluations_linked_with_its_mlflow_run(
        cli_env: Path, database_url: str, cache_dir: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": f"Code word {i}?"},
                          {"role": "assistant", "content": f"The code word is zebra-{i}."}]} for i in range(8)]
    data = cli_env / "words.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    # 6 training rows in batches of 2 for 2 epochs: 3 steps an epoch, an evaluation every 3 steps
    toml = cli_env / "tune.toml"
    toml.write_text(to_toml(TuneConfig(epochs=2, batch_size=2, max_length=48, save_steps=100, eval_fraction=0.25,
                                       eval_steps=3)), encoding="utf-8")
    result = runner.invoke(app, ["tune", "train", "--data", str(data), "--config", str(toml), "--json"])
    assert result.exit_code == 0, result.output
    record = runs.RunRecord.from_dict(json.loads(result.stdout))
    assert record.status == "completed" and len(record.trace_ids) == 1

    with Ragtune(Settings(data_dir=cli_env / ".ragtune", database_url=database_url, cache_dir=cache_dir)) as rt:
        spans = _trace(rt, record.trace_ids[0])
    (train,) = [s for s in spans if s["parent_id"] is None]
    assert train["name"] == "train" and train["status"] == "ok" and train["principal"] == "system"
    assert train["model"] == record.base
    attrs = train["attributes"]
    assert attrs["ragtune.run_id"] == record.run_id and attrs["ragtune.dataset_hash"] == record.dataset_hash
    assert attrs["ragtune.train.steps"] == record.metrics["steps"] == 6
    assert attrs["ragtune.params"]["lora.r"] == record.config["lora"]["r"]
    epochs = [s for s in spans if s["name"] == "epoch"]
    assert [(e["attributes"]["ragtune.train.epoch"], e["attributes"]["ragtune.train.step"]) for e in epochs] == [
        (1, 3), (2, 6)]
    assert all(e["parent_id"] == train["span_id"] for e in epochs)
    assert epochs[0]["start_time"] >= train["start_time"]
    logged = dict(record.metrics["losses"])
    assert [e["attributes"]["ragtune.train.loss"] for e in epochs] == [logged[3], logged[6]]
    assert all(e["attributes"]["ragtune.train.learning_rate"] > 0 for e in epochs)
    evaluations = [s for s in spans if s["name"] == "evaluation"]
    assert [v["attributes"]["ragtune.train.step"] for v in evaluations] == [3, 6]
    # each evaluation ran inside its epoch: the epoch's child
    assert [v["parent_id"] for v in evaluations] == [e["span_id"] for e in epochs]
    assert evaluations[-1]["attributes"]["ragtune.eval.loss"] == record.metrics["eval_loss"]

    # the MLflow run names the trace; the trace names the run
    tracked = runner.invoke(app, ["models", "track", record.run_id])
    assert tracked.exit_code == 0, tracked.output
    from mlflow import MlflowClient

    from ragtune.finetune.lifecycle.registry import ModelRegistry

    registry = ModelRegistry(Settings(data_dir=cli_env / ".ragtune", database_url=database_url))
    client: MlflowClient = registry.client
    (run,) = client.search_runs([registry.experiment_id], filter_string=f"tags.`ragtune.run_id` = '{record.run_id}'")
    assert run.data.tags["ragtune.trace_ids"] == record.trace_ids[0]

    shown = runner.invoke(app, ["traces", "show", record.trace_ids[0][:12]])
    assert shown.exit_code == 0, shown.output
    assert "train" in shown.stdout and "epoch" in shown.stdout and "evaluation" in shown.stdout


def test_a_failed_training_run_is_a_trace_with_an_error(cli_env: Path, database_url: str, cache_dir: Path) -> None:
    data = cli_env / "one.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi?"},
                                             {"role": "assistant", "content": "Hello."}]}) + "\n", encoding="utf-8")
    toml = cli_env / "tune.toml"
    # a target module the model does not have fails the run after its folder (and trace) began
    toml.write_text(to_toml(TuneConfig(max_steps=1, batch_size=1, max_length=32)).replace(
        'target_modules = ["q_proj", "k_proj", "v_proj", "o_proj"]', 'target_modules = ["no_such_module"]'),
        encoding="utf-8")
    assert "no_such_module" in toml.read_text()
    result = runner.invoke(app, ["tune", "train", "--data", str(data), "--config", str(toml)])
    assert result.exit_code != 0
    with Ragtune(Settings(data_dir=cli_env / ".ragtune", database_url=database_url, cache_dir=cache_dir)) as rt:
        (train,) = _roots(rt, "train")
    assert train["status"] == "error" and "no_such_module" in train["error"]


def test_an_evaluation_is_a_trace_of_its_modes_with_their_searches_below(rt: Ragtune, tmp_path: Path) -> None:
    folder = beir_folder(tmp_path / "geo")
    result = evaluate_retrieval(rt, f"beir:{folder}", modes=["bm25", "hybrid"])
    (evaluation,) = _roots(rt, "evaluation")
    spans = _trace(rt, evaluation["trace_id"])
    assert evaluation["collection"] == result["collection"]
    assert evaluation["attributes"]["ragtune.evaluation.type"] == "retrieval"
    modes = [s for s in spans if s["name"] == "evaluate"]
    assert [m["attributes"]["ragtune.evaluation.mode"] for m in modes] == ["bm25", "hybrid"]
    for m in modes:
        mode = m["attributes"]["ragtune.evaluation.mode"]
        assert m["attributes"]["ragtune.evaluation.nDCG@10"] == result["modes"][mode]["nDCG@10"]
        searches = [s for s in spans if s["name"] == "retrieval" and s["parent_id"] == m["span_id"]]
        assert len(searches) == result["queries"] == 5
    (ingest,) = [s for s in spans if s["name"] == "ingest"]
    assert ingest["parent_id"] == evaluation["span_id"]
    # the evaluation's searches are inside its trace, not roots of their own in the trace list
    listed = rt.traces.visible(Principal.system(), limit=50)
    (shown,) = [t for t in listed if t["id"] == evaluation["trace_id"]]
    assert shown["query"] == f"retrieval on {result['dataset']}: 5 queries, bm25, hybrid"  # its title in the list
    assert not [t for t in listed if t["kind"] == "retrieval"]
