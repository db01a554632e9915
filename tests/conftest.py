"""Shared fixtures: one real PostgreSQL per test session (the embedded server, or the server in
RAGTUNE_TEST_DATABASE_URL), a fresh database per test cloned from a migrated template, and the real
embedder loaded once."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tests.helpers import database_from_template

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TEMPLATE = "ragtune_test_template"


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("RAGTUNE_TEST_DATABASE_URL")
    if external:
        yield external
        return
    from ragtune.store.server import EmbeddedPostgres

    # Not under pytest's basetemp: pytest resets pytest-of-<user> to mode 0700 whenever another
    # session starts, which locks out the unprivileged user the server runs as (when we are root).
    folder = Path(tempfile.mkdtemp(prefix="ragtune-test-pg-"))
    server = EmbeddedPostgres(folder)
    url = server.start()
    try:
        yield url
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def template_db(pg_admin_url: str) -> str:
    from ragtune.store.database import Database

    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{TEMPLATE}"')
    db = Database(make_conninfo(pg_admin_url, dbname=TEMPLATE))
    db.migrate()
    db.close()
    return TEMPLATE


@pytest.fixture
def database_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    with database_from_template(pg_admin_url, template_db, "t_") as url:
        yield url


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """The user's ragtune cache (RAGTUNE_CACHE_DIR or the platform cache folder): fetched data
    packages and converted models are reused across runs instead of redone per session."""
    from ragtune.settings import Settings

    return Settings().resolved_cache_dir


@pytest.fixture(scope="session")
def embedder(cache_dir: Path):  # type: ignore[no-untyped-def]
    from ragtune.ingest.embedders import make_embedder

    emb = make_embedder("minilm", cache_dir=cache_dir)
    emb.embed_batch(["warm up"])
    return emb


@pytest.fixture
def settings(database_url: str, tmp_path: Path, cache_dir: Path):  # type: ignore[no-untyped-def]
    from ragtune.settings import Settings

    return Settings(data_dir=tmp_path / "data", database_url=database_url, cache_dir=cache_dir)


@pytest.fixture
def rt(settings, embedder) -> Iterator:  # type: ignore[no-untyped-def]
    from ragtune.engine import Ragtune

    engine = Ragtune(settings, embedder=embedder)
    try:
        yield engine
    finally:
        engine.close()


@pytest.fixture(scope="session")
def tool_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path):  # type: ignore[no-untyped-def]
    """One real LoRA run (``tests/finetune/tuned.py``), trained once per session through
    ``ragtune.finetune.lora.train.start_run`` (the fine-tuning tests and the server's serving of a
    registered model share it); tests copy its folder rather than write into it."""
    from ragtune.finetune.lora.train import start_run
    from tests.finetune.tuned import TINY_TOOLS_CONFIG, tool_trainset

    return start_run(base="smollm2", data=tool_trainset(), config=TINY_TOOLS_CONFIG,
                     data_dir=tmp_path_factory.mktemp("tuned"), cache_dir=cache_dir, name="tools")


@pytest.fixture
def cli_env(database_url: str, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A CLI run's surroundings: the session's database and model cache, ``tmp_path`` as the working
    folder (so the project's data folder is ``tmp_path/.ragtune``)."""
    monkeypatch.setenv("RAGTUNE_DATABASE_URL", database_url)
    monkeypatch.setenv("RAGTUNE_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(tmp_path)
    return tmp_path
