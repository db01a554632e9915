"""The ``ragtune`` command after its embedded PostgreSQL crashed: it says once that it waits for
the crash recovery and then prints its results; a server that cannot start is a one-line error
(exit 2) naming the data folder and the log file, never the server's log itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ragtune.cli.main import app
from ragtune.engine import Ragtune
from ragtune.models import LoadedDocument
from ragtune.settings import Settings
from ragtune.store.server import EmbeddedPostgres
from tests.recovery_helpers import embedded_folder, kill_postgres, postmaster_pid

WAITING = "waiting for PostgreSQL to recover (crash recovery)…"


@pytest.fixture
def folder() -> Iterator[Path]:
    with embedded_folder() as path:
        yield path


def cli_env(cache_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAGTUNE_DATABASE_URL", "RAGTUNE_CONFIG")}
    env.update({"RAGTUNE_CACHE_DIR": str(cache_dir), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    return env


@pytest.mark.slow
def test_the_next_command_after_a_crash_waits_for_recovery_and_prints_its_results(
        folder: Path, embedder: Any, cache_dir: Path) -> None:
    with Ragtune(Settings(data_dir=folder, cache_dir=cache_dir), embedder=embedder) as rt:
        rt.ingest_documents([LoadedDocument(uri="office.md", text="The office opens at nine in the morning.")],
                            collection="kb")
    killed = kill_postgres(folder)
    done = subprocess.run([sys.executable, "-m", "ragtune.cli.main", "search", "when does the office open",
                           "-c", "kb", "--json", "--data-dir", str(folder)],
                          env=cli_env(cache_dir), capture_output=True, text=True, timeout=300, cwd=folder)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["hits"][0]["uri"] == "office.md"  # results, not the server's log
    assert done.stderr.count(WAITING) == 1, done.stderr
    assert "LOG:" not in done.stderr + done.stdout
    assert postmaster_pid(folder) not in (None, killed)


def test_a_server_that_cannot_start_is_a_one_line_error_naming_the_folder_and_the_log(
        folder: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = EmbeddedPostgres(folder)
    server.start()
    server.stop()
    with (server.pgdata / "postgresql.conf").open("a") as conf:
        conf.write("\nbogus_setting_for_the_test = 1\n")
    for name, value in cli_env(cache_dir).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("RAGTUNE_DATABASE_URL", raising=False)
    monkeypatch.chdir(folder)
    result = CliRunner().invoke(app, ["collections", "list", "--data-dir", str(folder)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: the embedded PostgreSQL in ")
    assert str(folder) in lines[0] and str(server.log_file) in lines[0]
    assert "LOG:" not in result.stderr and result.stdout == ""
