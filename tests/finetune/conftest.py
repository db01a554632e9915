from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tool_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path):  # type: ignore[no-untyped-def]
    """One real LoRA run (``tests/finetune/tuned.py``), trained once per session through
    ``ragtune.finetune.train.start_run``; tests copy its folder rather than write into it."""
    from ragtune.finetune.train import start_run
    from tests.finetune.tuned import TINY_TOOLS_CONFIG, tool_trainset

    return start_run(base="smollm2", data=tool_trainset(), config=TINY_TOOLS_CONFIG,
                     data_dir=tmp_path_factory.mktemp("tuned"), cache_dir=cache_dir, name="tools")
