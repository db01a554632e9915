from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm2(cache_dir: Path):  # type: ignore[no-untyped-def]
    """The real packaged SmolLM2-135M-Instruct (converted once into the cache), loaded once."""
    from ragtune.generate.local import TransformersGenerator

    gen = TransformersGenerator.packaged(cache_dir)
    gen.model  # noqa: B018 - load now, not inside the first timed test
    return gen
