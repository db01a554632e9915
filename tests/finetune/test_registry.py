"""The model registry on real MLflow with its backend store in the test PostgreSQL (schema
``mlflow``) and artefacts in the data folder: tracking, registration, gated promotion, rollback,
serving by reference (the next request follows the alias) and export of a merged model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from ragtune.cli.main import app
from ragtune.engine import Ragtune
from ragtune.errors import ConfigError, NotFoundError, PromotionRefusedError, RegistryError, TrainingError
from ragtune.finetune.lifecycle.refs import ModelRef
from ragtune.finetune.lifecycle.registry import SCHEMA, ModelRegistry
from ragtune.finetune.lifecycle.serving import base_folder, export_model
from ragtune.finetune.lifecycle.tracking import sqlalchemy_url
from ragtune.finetune.lora import runs
from ragtune.finetune.lora.evaluate import EvalReport
from ragtune.settings import Gate, Settings, parse_gates
from tests.finetune.tuned import SECRET, chat, copy_run

runner = CliRunner()
GOOD = {"loss": 0.2, "perplexity": 1.22, "exact_match": 1.0, "token_f1": 1.0, "rouge_l": 1.0, "json_valid": 1.0,
        "schema_valid": 1.0, "tool_name_accuracy": 1.0, "tool_args_accuracy": 0.5, "tool_args_f1": 0.5}
BASE = {**dict.fromkeys(GOOD, 0.0), "loss": 2.5, "perplexity": 12.2}


# -- pure parts -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("url", "expected"), [
    ("postgresql://postgres:@/ragtune?host=/tmp/pg", "postgresql+psycopg://postgres@/ragtune?host=%2Ftmp%2Fpg&"
                                                     "options=-csearch_path%3Dmlflow"),
    ("host=db.example port=5433 dbname=x user=u password=p@ss", "postgresql+psycopg://u:p%40ss@/x?host=db.example&"
                                                                 "options=-csearch_path%3Dmlflow&port=5433"),
])
def test_sqlalchemy_url_for_psycopg_with_the_mlflow_schema_first(url: str, expected: str) -> None:
    assert sqlalchemy_url(url, SCHEMA) == expected


@pytest.mark.parametrize(("text", "name", "alias", "version"), [
    ("tools", "tools", "production", None), ("registry:tools", "tools", "production", None),
    ("tools@staging", "tools", "staging", None), ("tools/3", "tools", None, 3), ("a.b-c_1/12", "a.b-c_1", None, 12),
])
def test_model_references(text: str, name: str, alias: str | None, version: int | None) -> None:
    assert ModelRef.parse(text) == ModelRef(name, alias, version)


@pytest.mark.parametrize("text", ["", "tools@", "tools/x", "-tools", "tools@1x/2", "a b"])
def test_bad_model_references(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid model reference"):
        ModelRef.parse(text)


def test_gates_are_validated_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_gates({"eval.loss": "lower:0.05", "eval.token_f1": {"better": "higher", "tolerance": 0.01}}) == (
        Gate("eval.loss", False, 0.05), Gate("eval.token_f1", True, 0.01))
    assert Gate("m", True, 0.1).passes(0.85, 0.9) and not Gate("m", True, 0.01).passes(0.85, 0.9)
    assert Gate("m", False).passes(1.0, 1.0) and not Gate("m", False).passes(1.01, 1.0)
    assert "eval.token_f1" in Settings().training.promotion_gates  # defaults, printed by `config show`
    for bad, where in [({"eval.loss": "sideways"}, "promotion_gates.eval.loss"),
                       ({"x": "higher:-1"}, "promotion_gates.x"), ({"x": {"better": "lower", "by": 1}}, "by")]:
        with pytest.raises(ConfigError, match=where):
            Settings.of(promotion_gates=bad)
    monkeypatch.setenv("RAGTUNE_TRAINING_PROMOTION_GATES", '{"eval.rouge_l": "higher:0.02"}')
    assert parse_gates(Settings.load().training.promotion_gates) == (Gate("eval.rouge_l", True, 0.02),)
    monkeypatch.setenv("RAGTUNE_TRAINING_PROMOTION_GATES", "{nope")
    with pytest.raises(ConfigError, match="promotion_gates"):
        Settings.load()


# -- a registry on the module's own database (conftest: module_db, project) -----------------------------
@pytest.fixture(scope="module")
def registry(project: Settings) -> ModelRegistry:
    return ModelRegistry(project)


def _evaluated(tool_run: Any, project: Settings, run_id: str, tuned: dict[str, float], **changes: Any) -> Any:
    """A copy of the session's run with an evaluation report of the given tuned metrics."""
    copy = copy_run(tool_run, project.data_dir / "runs", run_id, **changes)
    _report(copy, tuned)
    return copy


def _report(run: Any, tuned: dict[str, float]) -> None:
    report = EvalReport(run_id=run.run_id, run_dir=run.path, base=run.base, adapter=str(run.adapter), rows=5,
                        rows_hash="r" * 64, cases={"tool_call": 2, "json": 2, "text": 1}, max_new_tokens=32,
                        base_metrics=BASE, tuned_metrics=tuned)
    runs.write_json(Path(run.path) / "eval.json", report.to_dict())


def _flat(text: str) -> str:
    """CLI output without Rich's line wrapping."""
    return " ".join(text.split())


def _zero_adapter(run: Any) -> None:
    """Scale the adapter's B matrices to zero: a valid adapter that changes nothing (= the base)."""
    from safetensors.torch import load_file, save_file

    path = Path(run.adapter) / "adapter_model.safetensors"
    tensors = {k: v * 0 if "lora_B" in k else v for k, v in load_file(str(path)).items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_register_tracks_the_run_in_postgres_and_the_adapter_in_the_data_folder(
        registry: ModelRegistry, project: Settings, tool_run: Any) -> None:
    run = _evaluated(tool_run, project, "tools-a", GOOD)
    version = registry.register(run.path, "reg-track")
    assert version.version == 1 and version.run_id == "tools-a" and version.run_status == "FINISHED"
    assert version.base_hash == run.base_hash and version.dataset_hash == run.dataset_hash
    # The adapter is an artefact in <data_dir>/mlruns, and that copy is what is served.
    adapter = Path(version.adapter)
    assert adapter.is_relative_to(project.data_dir.resolve() / "mlruns")
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    # Parameters, metrics (training and evaluation, both sides), hashes.
    mlrun = registry.client.get_run(version.mlflow_run_id)
    assert mlrun.data.params["lora.r"] == "8" and mlrun.data.params["dataset_hash"] == run.dataset_hash
    assert mlrun.data.params["base_hash"] == run.base_hash and mlrun.data.tags["ragtune.status"] == "completed"
    assert version.metrics["eval.token_f1"] == 1.0 and version.metrics["eval.base.loss"] == 2.5
    assert version.metrics["eval_loss"] == pytest.approx(tool_run.metrics["eval_loss"])
    history = registry.client.get_metric_history(version.mlflow_run_id, "train.loss")
    assert [m.step for m in history] == [s for s, _ in tool_run.metrics["losses"]]
    # MLflow's tables live in their own schema of our database, away from ours.
    with psycopg.connect(project.database_url or "") as conn:
        schemas = dict(conn.execute("SELECT table_name, table_schema FROM information_schema.tables "
                                    "WHERE table_name IN ('runs', 'model_versions', 'alembic_version', "
                                    "'experiments')").fetchall())
    assert schemas == {"runs": "mlflow", "model_versions": "mlflow", "alembic_version": "mlflow",
                       "experiments": "mlflow"}
    # Registering again returns the same version; the name defaults to the run's.
    assert registry.register(run.path, "reg-track").version == 1
    assert registry.register(run.path).name == "tools"


def test_a_failed_or_killed_run_is_never_registered_or_promoted(registry: ModelRegistry, project: Settings,
                                                               tool_run: Any) -> None:
    failed = _evaluated(tool_run, project, "tools-oom", GOOD, status="failed", error="out of memory")
    killed = _evaluated(tool_run, project, "tools-killed", GOOD, status="running")
    for run, why in ((failed, "failed: out of memory"), (killed, "interrupted")):
        with pytest.raises(TrainingError, match=why):
            registry.register(run.path, "reg-failed")
    # Tracked all the same, as FAILED runs.
    mlflow_id = registry.log_run(runs.read_record(Path(killed.path)))
    assert registry.client.get_run(mlflow_id).info.status == "FAILED"
    assert registry.client.get_run(mlflow_id).data.tags["ragtune.status"] == "failed"
    # A version made behind our back from the failed run is not promoted, even with --force.
    registry.client.create_registered_model("reg-failed")
    source = registry.client.get_run(mlflow_id).info.artifact_uri + "/adapter"
    registry.client.create_model_version("reg-failed", source, run_id=mlflow_id)
    for force in (False, True):
        with pytest.raises(RegistryError, match="never promoted"):
            registry.promote("reg-failed", 1, force=force)
    assert registry.production("reg-failed") is None


def test_promotion_is_gated_forced_and_rolled_back(registry: ModelRegistry, project: Settings,
                                                  tool_run: Any) -> None:
    good = _evaluated(tool_run, project, "tools-good", GOOD)
    worse = _evaluated(tool_run, project, "tools-worse", {**GOOD, "token_f1": 0.6, "loss": 0.5})
    better = copy_run(tool_run, project.data_dir / "runs", "tools-better")  # evaluated after registration
    v1, v2, v3 = (registry.register(r.path, "reg-gates").version for r in (good, worse, better))
    assert "eval.loss" not in registry.version("reg-gates", 3).metrics
    assert (v1, v2, v3) == (1, 2, 3)
    first = registry.promote("reg-gates", 1)
    assert first.previous is None and not first.gates and registry.production("reg-gates").version == 1
    # Worse on two gates: refused, production unchanged.
    with pytest.raises(PromotionRefusedError, match=r"2 gate\(s\): eval\.loss.*eval\.token_f1") as refused:
        registry.promote("reg-gates", 2)
    assert len(refused.value.failures) == 2 and registry.production("reg-gates").version == 1
    # --force overrides, and says so on the version.
    forced = registry.promote("reg-gates", 2, force=True)
    assert forced.forced and forced.previous == 1 and {r.gate.metric for r in forced.failed} == {"eval.loss",
                                                                                                  "eval.token_f1"}
    record = json.loads(registry.version("reg-gates", 2).tags["ragtune.promotion"])
    assert record["forced"] is True and len(record["overridden"]) == 2 and record["previous"] == 1
    # Rollback: back to the version before, then nothing earlier.
    assert registry.rollback("reg-gates").version == 1 and registry.production("reg-gates").version == 1
    with pytest.raises(RegistryError, match="no earlier production version"):
        registry.rollback("reg-gates")
    # Better on every gate: promoted without force; its eval.json, written after registration, is
    # logged at promotion time.
    _report(better, {**GOOD, "tool_args_accuracy": 1.0, "loss": 0.15})
    passed = registry.promote("reg-gates", 3)
    assert not passed.forced and passed.gates and all(r.passed for r in passed.gates)
    assert registry.history("reg-gates") == [1, 3] and registry.production("reg-gates").aliases == ("production",)
    assert registry.promote("reg-gates", 3).changed is False
    # Configurable gates: a tolerance wide enough lets version 2 through.
    lenient = ModelRegistry(project, gates=parse_gates({"eval.token_f1": "higher:0.5", "eval.loss": "lower:0.5"}))
    assert lenient.promote("reg-gates", 2).previous == 3
    with pytest.raises(NotFoundError, match="no version 9"):
        registry.promote("reg-gates", 9)
    # every production change is in the audit log, in order, the forced one marked; a refused one is not
    with Ragtune(project) as rt:
        changes = [(e["action"], e["details"]["version"], e["details"]["previous"], e["details"].get("forced"))
                   for e in rt.audit.events(limit=1000) if e["action"].startswith("model.")]
        assert rt.audit.verify().ok
    assert changes == [("model.promote", 1, None, False), ("model.promote", 2, 1, True),
                       ("model.rollback", 1, 2, None), ("model.promote", 3, 1, False),
                       ("model.promote", 2, 3, False)]


def test_a_task_spec_metric_gates_a_promotion(registry: ModelRegistry, project: Settings, tool_run: Any) -> None:
    """A task spec's field metrics reach MLflow as ``eval.field.<name>.<metric>``, and a gate can name one."""
    fields = {"field.category.accuracy": 0.9, "field.category.macro_f1": 0.85}
    sharp = _evaluated(tool_run, project, "tools-fields-a", {**GOOD, **fields})
    blunt = _evaluated(tool_run, project, "tools-fields-b", {**GOOD, **fields, "field.category.macro_f1": 0.25})
    first, second = (registry.register(r.path, "reg-fields") for r in (sharp, blunt))
    assert first.metrics["eval.field.category.macro_f1"] == 0.85
    assert second.metrics["eval.field.category.accuracy"] == 0.9
    gated = ModelRegistry(project, gates=parse_gates({"eval.field.category.macro_f1": "higher:0.1",
                                                      "eval.field.category.accuracy": "higher"}))
    gated.promote("reg-fields", 1)
    with pytest.raises(PromotionRefusedError, match=r"1 gate\(s\): eval\.field\.category\.macro_f1: candidate 0\.2500"):
        gated.promote("reg-fields", 2)
    assert registry.production("reg-fields").version == 1


def test_registry_reference_serves_production_and_follows_promote_and_rollback(
        registry: ModelRegistry, project: Settings, tool_run: Any) -> None:
    from ragtune.generate.registry import make_generator

    tuned = _evaluated(tool_run, project, "tools-serve", GOOD)
    plain = _evaluated(tool_run, project, "tools-zero", GOOD)
    _zero_adapter(plain)
    assert registry.register(tuned.path, "reg-serve").version == 1
    assert registry.register(plain.path, "reg-serve").version == 2
    question = chat("Secret word, please?")
    generator = make_generator("registry:reg-serve", project)  # built once, like the engine's cache
    with pytest.raises(NotFoundError, match="no version with alias 'production'"):
        generator.generate(question, max_tokens=8)
    registry.promote("reg-serve", 1)
    answer = generator.generate(question, max_tokens=8)
    assert answer.text == SECRET and answer.model == "reg-serve/1"
    registry.promote("reg-serve", 2)  # the next request already gets version 2 (the base's behaviour)
    assert "pineapple" not in generator.generate(question, max_tokens=8).text.lower()
    registry.rollback("reg-serve")
    assert generator.generate(question, max_tokens=8).text == SECRET
    assert generator.name == "registry:reg-serve@production (reg-serve/1)"
    # A pinned version does not move.
    assert make_generator("registry:reg-serve/1", project).generate(question, max_tokens=8).text == SECRET


def test_export_merges_the_adapter_into_a_standalone_model(registry: ModelRegistry, project: Settings,
                                                          tool_run: Any, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ragtune.generate.local import TransformersGenerator

    run = _evaluated(tool_run, project, "tools-export", GOOD)
    version = registry.register(run.path, "reg-export")
    out = export_model(registry, f"reg-export/{version.version}", tmp_path / "merged")
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert not (out / "adapter_config.json").exists()
    provenance = json.loads((out / "ragtune_model.json").read_text())
    assert provenance["model"] == "reg-export" and provenance["base_hash"] == run.base_hash
    # Plain transformers loads it and generates what the served adapter generates.
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    served = TransformersGenerator(base_folder(version, project.resolved_cache_dir), adapter=version.adapter)
    prompt = served.render(chat("Secret word, please?"))
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    text = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert text == SECRET == served.generate(chat("Secret word, please?"), max_tokens=8).text
    with pytest.raises(ConfigError, match="not empty"):
        export_model(registry, "reg-export/1", out)
    # It is also a generator spec like any model folder.
    assert (out / "tokenizer_config.json").is_file()


def test_cli_register_list_promote_rollback(registry: ModelRegistry, project: Settings, tool_run: Any,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGTUNE_DATABASE_URL", project.database_url or "")
    monkeypatch.setenv("RAGTUNE_CACHE_DIR", str(project.resolved_cache_dir))
    good = _evaluated(tool_run, project, "tools-cli1", GOOD)
    _evaluated(tool_run, project, "tools-cli2", {**GOOD, "json_valid": 0.5})
    _evaluated(tool_run, project, "tools-cli3", GOOD, status="failed", error="killed")
    where = ["--data-dir", str(project.data_dir)]
    result = runner.invoke(app, ["models", "register", good.path, "--name", "reg-cli", *where])
    assert result.exit_code == 0 and "registered reg-cli version 1" in _flat(result.output), result.output
    assert runner.invoke(app, ["models", "register", "tools-cli2", "--name", "reg-cli", *where]).exit_code == 0
    refused = runner.invoke(app, ["models", "register", "tools-cli3", "--name", "reg-cli", *where])
    assert refused.exit_code == 2 and "only a completed run" in _flat(refused.output)
    assert runner.invoke(app, ["models", "promote", "reg-cli", "1", *where]).exit_code == 0
    gated = runner.invoke(app, ["models", "promote", "reg-cli", "2", *where])
    assert gated.exit_code == 2 and "eval.json_valid" in gated.output and "pass --force" in _flat(gated.output)
    forced = runner.invoke(app, ["models", "promote", "reg-cli", "2", "--force", *where])
    assert forced.exit_code == 0 and "forced" in forced.output, forced.output
    listed = json.loads(runner.invoke(app, ["models", "list", "reg-cli", "--json", *where]).stdout)
    assert [(v["version"], v["aliases"]) for v in listed] == [(1, []), (2, ["production"])]
    assert listed[1]["promotion"]["forced"] is True
    back = runner.invoke(app, ["models", "rollback", "reg-cli", *where])
    assert back.exit_code == 0 and "version 1" in _flat(back.output)
    assert runner.invoke(app, ["models", "track", *where]).exit_code == 0
    tracked = registry.client.search_runs([registry.experiment_id], "tags.`ragtune.run_id` = 'tools-cli3'")
    assert [r.info.status for r in tracked] == ["FAILED"]


def test_an_erasure_holds_the_adapter_versions_trained_on_what_it_removed(
        registry: ModelRegistry, project: Settings, tool_run: Any, tmp_path: Path) -> None:
    """Lineage (issue 20, part 4): the dataset version an adapter trained on lost rows to an erasure,
    so that version cannot be promoted, with or without --force; another dataset's version can."""
    from ragtune.finetune.data.store import DatasetStore
    from ragtune.finetune.data.versions import ImportOptions

    rows = [{"messages": [{"role": "user", "content": f"Mail {who} the rota."}, {"role": "assistant",
                                                                              "content": "Sent."}]}
            for who in ("tove.lindqvist@example.org", "the team")]
    path = tmp_path / "rota.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    with Ragtune(project) as rt:
        store = DatasetStore(rt.db, cache_dir=rt.settings.resolved_cache_dir)
        data = store.import_file(path, name="rota", options=ImportOptions(eval_fraction=0.0)).dataset
        trained = registry.register(_evaluated(tool_run, project, "tools-rota", GOOD, dataset="rota",
                                               dataset_hash=data.content_hash).path, "reg-erasure")
        other = registry.register(_evaluated(tool_run, project, "tools-other", GOOD).path, "reg-erasure")
        report = rt.erase(subject="tove.lindqvist@example.org")
    assert report.clean and report.counts["dataset_rows"] == 1
    [held] = report.models
    assert (held["kind"], held["name"], held["version"], held["action"]) == ("adapter", "reg-erasure",
                                                                             trained.version, "blocked")
    with pytest.raises(RegistryError, match=f"erasure {report.erasure_id}"):
        registry.promote("reg-erasure", trained.version, force=True)
    assert registry.promote("reg-erasure", other.version).version == other.version
