from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ragtune.settings import Settings
from tests.helpers import database_from_template


@pytest.fixture(scope="module")
def module_db(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """A database of the test module's own, copied from the migrated template."""
    with database_from_template(pg_admin_url, template_db, "t_ft_") as url:
        yield url


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, module_db: str, cache_dir: Path) -> Settings:
    """A project folder on the module's database."""
    return Settings(data_dir=tmp_path_factory.mktemp("project"), database_url=module_db, cache_dir=cache_dir)
