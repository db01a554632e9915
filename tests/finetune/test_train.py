"""LoRA training on the real SmolLM2-135M-Instruct (CPU, fp32, a few steps on short rows): run
folders and their records, serving the adapter, seeds, SIGKILL and --resume, DPO through a stored
dataset, data-parallel with torchrun on gloo, and the failures a run must record."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ragtune.cli.main import app
from ragtune.errors import ConfigError, DatasetError, DatasetValidationError, RunBusyError
from ragtune.finetune.lora import runs
from ragtune.finetune.lora.config import TuneConfig, load_config, to_toml
from ragtune.finetune.lora.train import PROGRESS_FILE, model_hash, resolve_base, resume_run, start_run
from ragtune.finetune.lora.trainset import from_file, read_rows
from ragtune.models import Message
from tests.helpers import ProgressRecorder

runner = CliRunner()
QUESTIONS = ["What is the secret word?", "Tell me the secret word.", "Which word is secret?", "Say the secret word.",
             "What's the password?", "Give me the secret word, please.", "Do you know the secret word?",
             "Secret word?"]
ANSWER = "The secret word is pineapple."
# Short rows, few steps: every training here takes seconds to a minute on 2 cores.
TINY = TuneConfig(max_steps=2, batch_size=2, max_length=64, save_steps=100, learning_rate=1e-3)


def _jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _chat(user: str, assistant: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _jsonl(tmp_path_factory.mktemp("data") / "secret.jsonl", [_chat(q, ANSWER) for q in QUESTIONS])


@pytest.fixture(scope="module")
def training_events() -> ProgressRecorder:
    """What the shared run below reported."""
    return ProgressRecorder()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, secret_file: Path, cache_dir: Path,
            training_events: ProgressRecorder) -> runs.RunRecord:
    """One real run, shared: 8 steps at a high learning rate teach the model a secret word."""
    config = TuneConfig(max_steps=8, batch_size=2, max_length=64, save_steps=4, learning_rate=5e-3,
                        eval_fraction=0.25)
    data = from_file(secret_file, eval_fraction=config.eval_fraction)
    return start_run(base="smollm2", data=data, config=config, data_dir=tmp_path_factory.mktemp("project"),
                     cache_dir=cache_dir, name="secret", progress=training_events)


def _check_training_events(recorder: ProgressRecorder, metrics: dict[str, Any]) -> None:
    """The run's "training" events: from step 0 to the last, with each step's logged loss."""
    events = recorder.of("training")
    recorder.assert_monotone()
    assert {e.total for e in events} == {metrics["steps"]}
    assert events[0].done == 0 and events[-1].done == metrics["steps"]
    last_per_step = {e.done: e.metrics.get("loss") for e in events}  # a step's loss comes after the step
    assert [[step, last_per_step[step]] for step, _ in metrics["losses"]] == metrics["losses"]
    assert events[-1].detail.startswith(f"loss {metrics['losses'][-1][1]:.4f}, ") and "tok/s" in events[-1].detail


def test_run_folder_holds_adapter_config_hashes_metrics_and_status(trained: runs.RunRecord, secret_file: Path,
                                                                   cache_dir: Path,
                                                                   training_events: ProgressRecorder) -> None:
    run_dir = Path(trained.path)
    assert run_dir.parent.name == "runs" and run_dir.name.startswith("secret-") and trained.run_id == run_dir.name
    assert runs.read_status(run_dir)["status"] == trained.status == "completed"
    assert (run_dir / "adapter" / "adapter_config.json").is_file() and trained.adapter == str(run_dir / "adapter")
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((run_dir / "adapter" / "adapter_config.json").read_text())["r"] == 8
    # Checkpoints every save_steps; the resolved config starts the same run again.
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.is_dir()) == ["checkpoint-4",
                                                                                         "checkpoint-8"]
    assert load_config(run_dir / "config.toml").replace() == load_config(run_dir / "config.toml")
    assert load_config(run_dir / "config.toml").learning_rate == 5e-3
    # Hashes: the dataset file's bytes and the base model's weights.
    assert trained.dataset_hash == hashlib.sha256(secret_file.read_bytes()).hexdigest()
    base = resolve_base("smollm2", cache_dir)
    assert trained.base_hash == base.hash == model_hash(base.path) and len(trained.base_hash) == 64
    # The rows trained on are kept with the run, split by hash.
    kept = read_rows(run_dir / "data" / "train.jsonl") + read_rows(run_dir / "data" / "eval.jsonl")
    assert len(kept) == len(QUESTIONS) == trained.train_rows + trained.eval_rows and trained.eval_rows > 0
    m = trained.metrics
    assert m["steps"] == 8 and [s for s, _ in m["losses"]] == list(range(1, 9))
    _check_training_events(training_events, m)
    assert m["last_loss"] < m["first_loss"] / 10, m["losses"]  # it learnt the answer
    assert m["eval_loss"] < m["first_loss"] and m["train_loss"] > 0
    assert m["tokens_per_second"] > 0 and m["tokens"] > 0 and m["peak_rss_mb"] > 300
    assert m["trainable_parameters"] < m["parameters"] / 50 and m["data_dropped"] == 0
    # Everything a registry needs, from run.json alone.
    record = runs.read_record(run_dir)
    assert record == trained
    params = record.params()
    assert params["lora.r"] == 8 and params["learning_rate"] == 5e-3 and params["base"] == "smollm2-135m-instruct"


def test_local_generator_serves_the_adapter(trained: runs.RunRecord, cache_dir: Path) -> None:
    from ragtune.generate.local import TransformersGenerator
    from ragtune.generate.registry import make_generator
    from ragtune.settings import Settings

    question = [Message(role="user", content="What is the secret word?")]
    tuned = make_generator("smollm2", Settings.of(cache_dir=cache_dir, generator_adapter=Path(trained.adapter or "")))
    answer = tuned.generate(question, max_tokens=16)
    assert "pineapple" in answer.text.lower(), answer.text
    base = TransformersGenerator.packaged(cache_dir)
    assert "pineapple" not in base.generate(question, max_tokens=16).text.lower()


def test_a_completed_run_is_not_resumed(trained: runs.RunRecord) -> None:
    with pytest.raises(ConfigError, match="already completed"):
        resume_run(Path(trained.path))


def test_seeds_fix_the_losses_and_qlora_is_skipped_on_cpu(secret_file: Path, tmp_path: Path,
                                                         cache_dir: Path) -> None:
    config = TINY.replace(qlora=True)
    data = from_file(secret_file, eval_fraction=0.0)
    first = start_run(base="smollm2", data=data, config=config, data_dir=tmp_path, cache_dir=cache_dir, name="seed")
    second = start_run(base="smollm2", data=data, config=config, data_dir=tmp_path, cache_dir=cache_dir, name="seed")
    assert first.path != second.path  # same name, same second: still two folders
    assert first.metrics["losses"] == second.metrics["losses"] and len(first.metrics["losses"]) == 2
    assert any("QLoRA skipped" in note and "CUDA" in note for note in first.notes)
    listed = runs.list_runs(tmp_path / "runs", "seed")
    assert [r.run_id for r in listed] == [first.run_id, second.run_id]


def _wait_for(predicate: Any, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early ({proc.returncode}): {proc.stderr.read().decode()[-3000:]}"
                                 if proc.stderr else "training exited early")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the first checkpoint")
        time.sleep(0.2)


def test_sigkill_then_resume_continues_the_step_counter(secret_file: Path, tmp_path: Path, cache_dir: Path,
                                                       database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGTUNE_DATABASE_URL", database_url)  # the runs' traces go there
    toml = tmp_path / "tune.toml"
    toml.write_text(to_toml(TINY.replace(max_steps=4, save_steps=2)), encoding="utf-8")
    data_dir = tmp_path / "project"
    args = ["tune", "train", "--data", str(secret_file), "--config", str(toml), "--data-dir", str(data_dir),
            "--name", "killed"]
    env = {**os.environ, "RAGTUNE_CACHE_DIR": str(cache_dir), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ragtune.cli.main", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: runs.latest_checkpoint(next((data_dir / "runs").glob("killed-*"), tmp_path)) is not None,
                  600, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    run_dir = next((data_dir / "runs").glob("killed-*"))
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "adapter").exists()
    # Nobody holds the run's lock any more: reading it marks the run failed, for a registry to see.
    code, out, err = _invoke("tune", "runs", "--json", "--data-dir", str(data_dir))
    assert code == 0, err
    (listed,) = json.loads(out)
    assert listed["status"] == "failed" and "interrupted" in listed["error"]
    assert runs.read_status(run_dir)["status"] == "failed"
    # Another dataset or config does not resume this run.
    other = _jsonl(tmp_path / "killed.jsonl", [_chat("What colour is the sky?", "Blue.")] * 2)
    with pytest.raises(ConfigError, match="dataset_hash differs"):
        resume_run(run_dir, expect={"dataset_hash": hashlib.sha256(other.read_bytes()).hexdigest()})
    code, _, err = _invoke(*args, "--resume", "--method", "dpo")
    assert code == 2 and "config (method) differs" in err

    code, out, err = _invoke(*args, "--resume", "--json")
    assert code == 0, err
    record = json.loads(out)
    m = record["metrics"]
    assert record["status"] == "completed" and record["path"] == str(run_dir.resolve())
    assert m["resumed_from_step"] == 2 and m["steps"] == 4
    assert m["session_steps"] == 2  # continued from step 2, not restarted
    assert [s for s, _ in m["losses"]] == [1, 2, 3, 4]  # the curve of the whole run, each step once
    state = json.loads((run_dir / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    # A finished run is not resumed again.
    code, _, err = _invoke(*args, "--resume")
    assert code == 2 and "no unfinished run" in err


def _invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


PAIRS = [
    ("Name a fruit.", "Apple.", "I refuse to answer."),
    ("Name a colour.", "Red.", "Colours do not exist."),
    ("How many legs does a cat have?", "Four.", "Eleven, usually."),
    ("What is the opposite of hot?", "Cold.", "Hot is its own opposite."),
]


def test_dpo_on_a_stored_dataset_through_the_cli(cli_env: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": q}], "chosen": {"role": "assistant", "content": c},
             "rejected": {"role": "assistant", "content": r}} for q, c, r in PAIRS]
    pairs = _jsonl(cli_env / "pairs.jsonl", rows)
    code, _, err = _invoke("data", "import", str(pairs), "--name", "prefs", "--eval-fraction", "0")
    assert code == 0, err
    toml = cli_env / "tune.toml"
    toml.write_text(to_toml(TINY), encoding="utf-8")
    # A preference dataset is not SFT data.
    code, _, err = _invoke("tune", "train", "--data", "prefs", "--config", str(toml))
    assert code == 2 and "--method dpo" in err
    code, out, err = _invoke("tune", "train", "--data", "prefs", "--config", str(toml), "--method", "dpo", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["method"] == "dpo" and record["dataset"] == "prefs" and record["dataset_version"] == 1
    assert record["train_rows"] == 4 and record["status"] == "completed"
    assert record["config"]["method"] == "dpo" and Path(record["adapter"], "adapter_config.json").is_file()
    # At step 1 the policy is the reference (LoRA's B starts at zero): the DPO loss is ln 2.
    assert record["metrics"]["losses"][0][1] == pytest.approx(0.6931, abs=2e-3)
    assert Path(record["path"]).parent == cli_env / ".ragtune" / "runs"


def test_validation_gate_for_stored_datasets_and_files(cli_env: Path) -> None:
    bad = _jsonl(cli_env / "bad.jsonl", [_chat("Say hi.", "Hi."), _chat("Say bye.", "   "),
                                         _chat("Say yes.", "Yes.")])
    code, _, err = _invoke("data", "import", str(bad), "--name", "bad", "--eval-fraction", "0")
    assert code == 0, err
    code, _, err = _invoke("tune", "train", "--data", "bad")
    assert code == 2 and "failed validation" in err and "--force" in err
    code, _, err = _invoke("tune", "train", "--data", "nothing-here")
    assert code == 2 and "no dataset named 'nothing-here'" in err
    # A file with a broken line: refused with the line number, or trained on with --force and recorded.
    broken = cli_env / "broken.jsonl"
    broken.write_text(json.dumps(_chat("Say hi.", "Hi.")) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DatasetValidationError, match="line 2"):
        from_file(broken, eval_fraction=0.0)
    forced = from_file(broken, eval_fraction=0.0, force=True)
    assert len(forced.train) == 1 and "1 of 2 rows" in forced.forced_reasons[0]
    with pytest.raises(DatasetError, match="holds sft rows"):
        forced.check_method("dpo")


def test_a_failing_run_is_marked_failed(secret_file: Path, tmp_path: Path, cache_dir: Path) -> None:
    config = TINY.replace(lora={"target_modules": ["no_such_proj"]})
    with pytest.raises(ConfigError, match=r"lora\.target_modules"):
        start_run(base="smollm2", data=from_file(secret_file, eval_fraction=0.0), config=config,
                  data_dir=tmp_path, cache_dir=cache_dir, name="broken")
    (run_dir,) = (tmp_path / "runs").iterdir()
    status = runs.read_status(run_dir)
    record = runs.read_record(run_dir)
    assert status["status"] == "failed" and record is not None and record.status == "failed"
    assert "lora.target_modules" in (record.error or "") and record.finished_at


def test_concurrent_runs_of_one_name_get_their_own_folders(tmp_path: Path) -> None:
    made: list[Path] = []
    lock = threading.Lock()

    def make() -> None:
        path = runs.create_run_dir(tmp_path / "runs", "same")
        with lock:
            made.append(path)

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 8 and all(p.is_dir() and not any(p.iterdir()) for p in made)
    with runs.run_lock(made[0]), pytest.raises(RunBusyError, match="another process"), runs.run_lock(made[0]):
        pass
    with pytest.raises(ConfigError, match="not empty"):
        runs.claim_output_dir(tmp_path / "runs")


@pytest.mark.slow
def test_data_parallel_with_two_processes_on_gloo(secret_file: Path, tmp_path: Path, cache_dir: Path) -> None:
    config = TINY.replace(batch_size=1)
    events = ProgressRecorder()
    record = start_run(base="smollm2", data=from_file(secret_file, eval_fraction=0.0), config=config,
                       data_dir=tmp_path, cache_dir=cache_dir, name="ddp", nproc=2, progress=events)
    m = record.metrics
    assert record.status == "completed" and record.world_size == 2 and m["world_size"] == 2
    assert m["steps"] == 2 and len(m["losses"]) == 2 and m["tokens"] > 0
    # The rank-0 worker's events crossed the process boundary (JSON lines) to this process's progress.
    _check_training_events(events, m)
    assert not (Path(record.path) / PROGRESS_FILE).exists()
    assert (Path(record.path) / "adapter" / "adapter_model.safetensors").is_file()
    assert not (Path(record.path) / "error.txt").exists()


@pytest.mark.parametrize(("exc", "reason"), [
    (KeyboardInterrupt(), "interrupted"),
    (MemoryError(), "out of memory"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"), "out of memory"),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out of memory"),
    (ValueError("bad"), "ValueError: bad"),
])
def test_failure_reasons_recorded_with_a_run(exc: BaseException, reason: str) -> None:
    from ragtune.finetune.lora.train import _reason

    assert _reason(exc).startswith(reason)
