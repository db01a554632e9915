"""Schemathesis against the served OpenAPI spec over real HTTP: no input makes the server answer
5xx. Bounded (25 examples per operation; ``benchmarks/schemathesis_fuzz.py`` runs many more); runs
as an admin key so writes are exercised too."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server_settings(module_database_url: str, tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Any:
    from ragtune.settings import Settings

    # the extractive answerer keeps each ask fast; the limits make oversized inputs 4xx quickly
    return Settings.of(data_dir=tmp_path_factory.mktemp("schemathesis") / "data", database_url=module_database_url,
                       cache_dir=cache_dir, generator="extractive", max_new_tokens=16,
                       server={"rate_limit": 0, "max_upload_bytes": 1024 * 1024, "max_top_k": 50})


def test_no_input_makes_a_server_error(live: Any) -> None:
    """Every operation of the spec with generated inputs (hypothesis driven directly: schemathesis'
    pytest plugin does not run under pytest 9)."""
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    headers = {"Authorization": f"Bearer {live.keys['admin']}"}
    failures: list[str] = []
    statuses: list[int] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            response = case.call_and_validate(headers=headers, checks=[not_a_server_error], timeout=60)
            statuses.append(response.status_code)

        try:
            check()
        except Exception as exc:  # a failing example: record it and go on with the other operations
            failures.append(f"{operation.method.upper()} {operation.path}: {str(exc)[:2000]}")
    assert operations >= 15
    print(f"{len(statuses)} calls: {sorted(Counter(statuses).items())}")
    assert sum(200 <= s < 300 for s in statuses) >= operations  # not only refusals
    assert not failures, "\n\n".join(failures)
