"""Schemathesis against a real ``ragtune serve`` with many more generated cases than the test suite
runs: every operation of the served OpenAPI spec, ``--examples`` each, as an admin key (so writes run
too). Counts the answers by status and lists every 5xx (there must be none).

    python benchmarks/schemathesis_fuzz.py [--examples 200] [--paragraphs 100] [--seed 0]

The server runs over the benchmark project with a small SQuAD collection and the extractive
generator; only 127.0.0.1 is contacted. Writes benchmarks/results/schemathesis_fuzz.json.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from typing import Any

import schemathesis
from common import write_result
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from server_load import prepare, served


def fuzz(url: str, key: str, examples: int, seed: int) -> dict[str, Any]:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    headers = {"Authorization": f"Bearer {key}"}
    per_operation: dict[str, dict[str, int]] = {}
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        name = f"{operation.method.upper()} {operation.path}"
        statuses: Counter[int] = Counter()

        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                  derandomize=seed == 0)
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            response = case.call_and_validate(headers=headers, checks=[not_a_server_error], timeout=120)
            statuses[response.status_code] += 1  # noqa: B023 - one operation at a time

        started = time.monotonic()
        try:
            check()
        except Exception as exc:  # a failing example: record it and go on with the other operations
            failures.append(f"{name}: {str(exc)[:3000]}")
        per_operation[name] = {"calls": sum(statuses.values()), "seconds": round(time.monotonic() - started, 1),
                               **{str(k): v for k, v in sorted(statuses.items())}}
        print(f"{name:55s} {per_operation[name]}", flush=True)
    total: Counter[str] = Counter()
    for counts in per_operation.values():
        total.update({k: v for k, v in counts.items() if k.isdigit()})
    return {"operations": per_operation, "statuses": dict(sorted(total.items())),
            "calls": sum(total.values()), "server_errors": sum(v for k, v in total.items() if k.startswith("5")),
            "failures": failures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=200, help="generated cases per operation")
    parser.add_argument("--paragraphs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="0: derandomized (repeatable); else random")
    args = parser.parse_args()
    rt, _ = prepare(args.paragraphs)
    started = time.monotonic()
    with served(rt, "extractive") as (url, key):
        result = fuzz(url, key, args.examples, args.seed)
    result.update(examples_per_operation=args.examples, seconds=round(time.monotonic() - started, 1))
    print(f"\n{result['calls']} calls over {len(result['operations'])} operations in {result['seconds']} s: "
          f"{result['statuses']}; 5xx: {result['server_errors']}; failing operations: {len(result['failures'])}")
    for failure in result["failures"]:
        print(f"\nFAILED {failure}")
    write_result("schemathesis_fuzz", result)
    rt.close()


if __name__ == "__main__":
    main()
