"""The Optuna hyperparameter search on the real SmolLM2-135M-Instruct and the test PostgreSQL
(study in schema ``optuna``, registry in schema ``mlflow``): trials are short real training runs
(a few optimiser steps on 48-token rows), the best is registered, a search resumes and fails the
trials a dead process left running, and a trial worse than the median is pruned early."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from ragtune.cli.main import app
from ragtune.errors import ConfigError, DatasetError
from ragtune.finetune.lifecycle.search import SearchResult, search
from ragtune.finetune.lifecycle.search_space import SearchSpace, load_space, space_from_dict
from ragtune.finetune.lifecycle.studies import TRIAL_LOCK, describe_study, open_storage
from ragtune.finetune.lora import runs
from ragtune.finetune.lora.config import TuneConfig, load_config, to_toml
from ragtune.finetune.lora.trainset import TrainSet, from_file
from ragtune.settings import Settings
from tests.helpers import ProgressRecorder

runner = CliRunner()
ANSWER = "The secret word is pineapple."
QUESTIONS = ["What is the secret word?", "Tell me the secret word.", "Which word is secret?", "Say the secret word.",
             "What's the password?", "Give me the secret word, please.", "Do you know the secret word?",
             "Secret word?", "The secret word is what?", "Remind me of the secret word."]
# Two optimiser steps per trial, evaluated after each: a trial takes seconds on 2 idle cores.
TINY = TuneConfig(max_steps=2, batch_size=2, max_length=48, save_steps=1000, eval_fraction=0.3)
SPACE = """
[search]
learning_rate = [1e-4, 5e-3]
lora_r = [4, 8]
lora_alpha_factor = [1, 2]
lora_dropout = [0.0, 0.1]
evaluations = 2
"""


def _toml(path: Path, config: TuneConfig, search_table: str = SPACE) -> Path:
    path.write_text(to_toml(config) + search_table, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("search")
    data = folder / "secret.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": ANSWER}]}) + "\n"
                            for q in QUESTIONS), encoding="utf-8")
    return data, _toml(folder / "tune.toml", TINY)


def _dataset(data: Path, config: TuneConfig) -> TrainSet:
    dataset = from_file(data, eval_fraction=config.eval_fraction)
    assert len(dataset.eval) >= 1 and len(dataset.train) >= 4, (len(dataset.train), len(dataset.eval))
    return dataset


@pytest.fixture(scope="module")
def search_events() -> ProgressRecorder:
    return ProgressRecorder()


@pytest.fixture(scope="module")
def searched(project: Settings, files: tuple[Path, Path], search_events: ProgressRecorder) -> SearchResult:
    """A search of three trials (study "secret", the file's name), its best trial registered."""
    data, toml = files
    config, space = load_config(toml), load_space(toml)
    return search(settings=project, data=_dataset(data, config), config=config, space=space, trials=3,
                  progress=search_events)


def _trials(project: Settings, study: str) -> list[Any]:
    import optuna

    with open_storage(project) as store:
        return optuna.load_study(study_name=study, storage=store.rdb).get_trials()


# -- configuration and bad input (no training) ------------------------------------------------------
def test_search_table_is_validated_naming_the_key(tmp_path: Path) -> None:
    toml = _toml(tmp_path / "tune.toml", TINY)
    space = load_space(toml)
    assert space.learning_rate == (1e-4, 5e-3) and space.lora_r == (4, 8) and space.evaluations == 2
    assert space.epochs == SearchSpace().epochs  # defaults for what the table leaves out
    assert load_config(toml) == TINY  # `tune train` reads the same file and skips [search]
    for table, where in [("[search]\nnope = 1\n", "unknown key.*search.nope"),
                         ("[search]\nlora_r = []\n", r"search\.lora_r"),
                         ("[search]\nlora_r = [4, 4.5]\n", r"search\.lora_r"),
                         ("[search]\nlearning_rate = [1e-3, 1e-5]\n", r"search\.learning_rate"),
                         ("[search]\nlearning_rate = 1e-3\n", r"search\.learning_rate"),
                         ("[search]\nlora_dropout = [0.0, 1.5]\n", r"search\.lora_dropout"),
                         ("[search]\nepochs = [0, 2]\n", r"search\.epochs"),
                         ("[search]\nevaluations = true\n", r"search\.evaluations"),
                         ("search = 3\n", "expected a table")]:
        bad = tmp_path / "bad.toml"
        bad.write_text(table, encoding="utf-8")
        with pytest.raises(ConfigError, match=where):
            load_space(bad)
    # Unknown keys elsewhere are still refused by the training config.
    (tmp_path / "typo.toml").write_text("lerning_rate = 1e-4\n[search]\nlora_r = [8]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"unknown key.*lerning_rate"):
        load_config(tmp_path / "typo.toml")
    with pytest.raises(ConfigError, match=r"search\.lora_alpha_factor"):
        space_from_dict({"lora_alpha_factor": [0, 2]})


def test_a_dataset_without_eval_rows_is_refused(files: tuple[Path, Path], tmp_path: Path, cache_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    data, _ = files
    settings = Settings(data_dir=tmp_path / "project", database_url="postgresql://nobody@/nowhere", cache_dir=cache_dir)
    no_eval = from_file(data, eval_fraction=0.0)
    with pytest.raises(DatasetError, match=r"no eval rows.*eval loss.*--eval-fraction"):
        search(settings=settings, data=no_eval, config=TINY, trials=2)
    with pytest.raises(ConfigError, match=r"--trials 0"):
        search(settings=settings, data=from_file(data, eval_fraction=0.3), config=TINY, trials=0)
    with pytest.raises(ConfigError, match="invalid study name"):
        search(settings=settings, data=from_file(data, eval_fraction=0.3), config=TINY, trials=1, study="a b")
    # The CLI says the same, with exit code 2 (the default config holds no eval rows out of a file).
    monkeypatch.setenv("RAGTUNE_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["tune", "search", "--data", str(data), "--trials", "2"])
    assert result.exit_code == 2 and "no eval rows" in " ".join(result.output.split()), result.output


# -- real searches ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_search_trains_trials_keeps_the_study_in_postgres_and_registers_the_best(
        searched: SearchResult, project: Settings, monkeypatch: pytest.MonkeyPatch,
        search_events: ProgressRecorder) -> None:
    from ragtune.finetune.lifecycle.registry import ModelRegistry

    assert searched.study == "secret" and searched.ran == (0, 1, 2) and not searched.marked_failed
    assert [t.state for t in searched.trials] == ["COMPLETE"] * 3, searched.trials
    space = SearchSpace(learning_rate=(1e-4, 5e-3), lora_r=(4, 8), lora_alpha_factor=(1, 2),
                        lora_dropout=(0.0, 0.1))
    seen = set()
    for t in searched.trials:
        p = t.params
        assert space.learning_rate[0] <= p["learning_rate"] <= space.learning_rate[1]
        assert p["lora_r"] in space.lora_r and p["lora_alpha"] == p["lora_r"] * p["lora_alpha_factor"]
        assert 0.0 <= p["lora_dropout"] <= 0.1 and "epochs" not in p  # max_steps > 0: epochs not searched
        seen.add((p["learning_rate"], p["lora_r"], p["lora_alpha_factor"], p["lora_dropout"]))
        # Each trial is a real run with the trial's parameters; the objective is its final eval loss.
        record = runs.read_record(Path(t.run_dir or ""))
        assert record is not None and record.status == "completed" and record.name == f"secret-t{t.number}"
        assert record.config["learning_rate"] == p["learning_rate"] and record.config["eval_steps"] == 1
        assert (record.config["lora"]["r"], record.config["lora"]["alpha"]) == (p["lora_r"], p["lora_alpha"])
        assert record.config["lora"]["dropout"] == p["lora_dropout"]
        assert record.metrics["steps"] == t.steps == 2 and record.metrics["eval_loss"] == t.value
        assert [s for s, _ in record.metrics["eval_losses"]] == [1, 2] and math.isfinite(t.value or math.nan)
    assert len(seen) == 3  # distinct parameters
    # "trials" from 0 to the target, a line per trial; each trial's training from step 0 to 2.
    trials = search_events.of("trials")
    assert [(e.done, e.total) for e in trials] == [(0, 3), (1, 3), (2, 3), (3, 3)]
    for event, t in zip(trials[1:], searched.trials, strict=True):
        assert event.detail.startswith(f"trial {t.number} complete, eval loss {t.value:.4f} (")
        assert event.metrics == {"eval_loss": t.value}
    steps = [e.done for e in search_events.of("training")]
    assert [i for i, s in enumerate(steps) if s == 0] == [0, len(steps) // 3, 2 * len(steps) // 3] and max(steps) == 2
    best = min(searched.trials, key=lambda t: t.value or math.inf)
    assert searched.best == best
    # The study lives in its own schema of our database.
    with psycopg.connect(project.database_url or "") as conn:
        schemas = {r[0] for r in conn.execute("SELECT table_schema FROM information_schema.tables "
                                              "WHERE table_name IN ('studies', 'trials', 'trial_values')")}
        rows = conn.execute("SELECT s.study_name, count(t.trial_id), min(v.value) FROM optuna.studies s "
                            "JOIN optuna.trials t USING (study_id) JOIN optuna.trial_values v USING (trial_id) "
                            "GROUP BY s.study_name").fetchall()
    assert schemas == {"optuna"}
    assert rows == [("secret", 3, pytest.approx(best.value))]
    # The best trial's run is a registered model version, tagged with the study and trial.
    assert searched.registered is not None and searched.registered["name"] == "secret"
    version = ModelRegistry(project).version("secret", searched.registered["version"])
    assert version.run_id == Path(best.run_dir or "").name and version.run_status == "FINISHED"
    assert json.loads(version.tags["ragtune.search"])["trial"] == best.number
    # Inspected from the command line.
    monkeypatch.setenv("RAGTUNE_DATABASE_URL", project.database_url or "")
    where = ["--data-dir", str(project.data_dir)]
    shown = runner.invoke(app, ["tune", "study", "secret", *where])
    assert shown.exit_code == 0, shown.output
    assert "COMPLETE" in shown.output and f"best: trial {best.number}" in " ".join(shown.output.split())
    listed = json.loads(runner.invoke(app, ["tune", "study", "secret", "--json", *where]).stdout)
    assert [t["number"] for t in listed["trials"]] == [0, 1, 2] and listed["best"]["run_dir"] == best.run_dir
    studies = json.loads(runner.invoke(app, ["tune", "studies", "--json", *where]).stdout)
    assert [(s["name"], s["counts"], s["best"]["value"]) for s in studies] == [("secret", {"COMPLETE": 3},
                                                                               best.value)]
    missing = runner.invoke(app, ["tune", "study", "nope", *where])
    assert missing.exit_code == 2 and "no study named 'nope'" in missing.output


@pytest.mark.slow
def test_resume_fails_stale_trials_and_runs_up_to_the_target(
        searched: SearchResult, project: Settings, files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    import optuna

    data, toml = files
    # Two trials left RUNNING: one by a process that died (nobody holds its lock), one by a process
    # still training it (its lock held on another connection).
    with open_storage(project) as store:
        study = optuna.load_study(study_name="secret", storage=store.rdb)
        dead = study.ask()
        dead.report(0.0001, 2)  # better than anything: it must not become the best
        dead_run = runs.create_run_dir(project.data_dir / "runs", "secret-dead")
        runs.write_record(runs.RunRecord(run_id=dead_run.name, name="secret-dead", path=str(dead_run), method="sft",
                                         base="b", base_path="b", base_hash="h", dataset="secret", dataset_version=None,
                                         dataset_hash="d", train_rows=1, eval_rows=1, config={}))
        runs.set_status(dead_run, "running")
        dead.set_user_attr("run_dir", str(dead_run))
        alive = study.ask()
    holder = psycopg.connect(project.database_url or "", autocommit=True)
    try:
        holder.execute("SELECT pg_advisory_lock(hashtext(%s), %s)", (TRIAL_LOCK, alive._trial_id))
        shown = {t.number: t for t in describe_study(project, "secret").trials}
        assert "stale" in (shown[dead.number].note or "") and shown[alive.number].note is None
        # Another configuration or search space is refused for this study: its losses would not compare.
        code, out = _invoke(monkeypatch, project, "tune", "search", "--data", str(data), "--trials", "4",
                            "--config", str(_toml(tmp_path / "other.toml", TINY.replace(max_steps=6))))
        assert code == 2 and "config.max_steps" in out and "another --study" in out
        # The same command with a higher target: one more trial; the dead trial is marked failed.
        code, out = _invoke(monkeypatch, project, "tune", "search", "--data", str(data), "--trials", "4",
                            "--config", str(toml), "--json")
        assert code == 0, out
        result = json.loads(out)
        assert result["marked_failed"] == [dead.number] and len(result["ran"]) == 1
        new = result["ran"][0]
        assert new == alive.number + 1
        states = {t.number: t.state.name for t in _trials(project, "secret")}
        assert states == {0: "COMPLETE", 1: "COMPLETE", 2: "COMPLETE", dead.number: "FAIL",
                          alive.number: "RUNNING", new: "COMPLETE"}
        assert result["best"]["number"] != dead.number and result["best"]["state"] == "COMPLETE"
        assert result["best"]["value"] == min(t["value"] for t in result["trials"] if t["state"] == "COMPLETE")
        assert runs.read_record(dead_run).status == "failed"  # type: ignore[union-attr]
        assert result["registered"]["run_id"] == Path(result["best"]["run_dir"]).name
        # The sampler is seeded with the study's size: the new trial does not repeat trial 0's draw.
        params = {t.number: t.params for t in _trials(project, "secret")}
        assert params[new] != params[0]
        # At the target already: nothing runs, the best is registered again (the same version).
        folders = sorted((project.data_dir / "runs").iterdir())
        code, out = _invoke(monkeypatch, project, "tune", "search", "--data", str(data), "--trials", "4",
                            "--config", str(toml))
        assert code == 0, out
        assert sorted((project.data_dir / "runs").iterdir()) == folders
        reg = result["registered"]
        assert f"registered {reg['name']} version {reg['version']} (run {reg['run_id']})" in " ".join(out.split())
        assert f"best: trial {result['best']['number']}," in out
    finally:
        holder.close()


def _invoke(monkeypatch: pytest.MonkeyPatch, project: Settings, *args: str) -> tuple[int, str]:
    monkeypatch.setenv("RAGTUNE_DATABASE_URL", project.database_url or "")
    monkeypatch.setenv("RAGTUNE_CACHE_DIR", str(project.resolved_cache_dir))
    result = runner.invoke(app, [*args, "--data-dir", str(project.data_dir)])
    return result.exit_code, result.stdout if result.exit_code == 0 else " ".join(result.output.split())


@pytest.mark.slow
def test_a_trial_worse_than_the_median_is_pruned_early(project: Settings, files: tuple[Path, Path]) -> None:
    import optuna

    data, _ = files
    config = TINY.replace(max_steps=4)
    space = SearchSpace(lora_r=(4,), lora_alpha_factor=(2,), evaluations=2, prune_after=2, warmup_evaluations=0)
    # Two earlier trials whose eval loss was tiny at every step: any real trial is worse than the median.
    with open_storage(project) as store:
        study = optuna.create_study(study_name="prune", storage=store.rdb, direction="minimize")
        for _ in range(2):
            study.add_trial(optuna.trial.create_trial(value=0.01, intermediate_values={2: 0.01, 4: 0.01}))
    result = search(settings=project, data=_dataset(data, config), config=config, space=space, trials=3,
                    study="prune", register=False)
    (trial,) = [t for t in result.trials if t.number in result.ran]
    assert trial.state == "PRUNED" and trial.steps == 2 and trial.note == "pruned at step 2", trial
    assert result.registered is None and any("--no-register" in n for n in result.notes)
    record = runs.read_record(Path(trial.run_dir or ""))
    assert record is not None
    # The run stopped after its first evaluation, and its folder says so (not left running).
    assert record.metrics["steps"] == 2 < config.max_steps and record.metrics["eval_losses"][-1][0] == 2
    assert runs.read_status(Path(record.path))["status"] == record.status == "completed"
    assert any("pruned by the hyperparameter search" in n and "step 2 of 4" in n for n in record.notes)
    (frozen,) = [t for t in _trials(project, "prune") if t.number == trial.number]
    assert frozen.state == optuna.trial.TrialState.PRUNED and frozen.intermediate_values == {2: trial.value}
