from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ragtune.settings import Settings
from tests.helpers import database_from_template


@pytest.fixture(scope="session")
def tool_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path):  # type: ignore[no-untyped-def]
    """One real LoRA run (``tests/finetune/tuned.py``), trained once per session through
    ``ragtune.finetune.lora.train.start_run``; tests copy its folder rather than write into it."""
    from ragtune.finetune.lora.train import start_run
    from tests.finetune.tuned import TINY_TOOLS_CONFIG, tool_trainset

    return start_run(base="smollm2", data=tool_trainset(), config=TINY_TOOLS_CONFIG,
                     data_dir=tmp_path_factory.mktemp("tuned"), cache_dir=cache_dir, name="tools")


@pytest.fixture(scope="module")
def module_db(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """A database of the test module's own, copied from the migrated template."""
    with database_from_template(pg_admin_url, template_db, "t_ft_") as url:
        yield url


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, module_db: str, cache_dir: Path) -> Settings:
    """A project folder on the module's database."""
    return Settings(data_dir=tmp_path_factory.mktemp("project"), database_url=module_db, cache_dir=cache_dir)
