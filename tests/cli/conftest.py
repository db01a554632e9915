"""The CLI tests' environment: the test database and the shared model cache, in a temporary working folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def env(database_url: str, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("RAGTUNE_DATABASE_URL", database_url)
    monkeypatch.setenv("RAGTUNE_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(tmp_path)
    return dict(os.environ)
