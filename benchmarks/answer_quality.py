"""Answer quality per generator, side by side on the same SQuAD 2.0 dev questions (half of them
unanswerable), over the full 1,204-paragraph corpus.

    python benchmarks/answer_quality.py [--limit 20] [--generators extractive smollm2]

Writes benchmarks/results/answer_quality.json (metrics, plus every answer for inspection).
"""

from __future__ import annotations

import argparse
import time

from common import bench_engine, write_result
from rich.console import Console

from ragtune.cli.ask import answers_table
from ragtune.evaluate.answers import evaluate_answers

console = Console()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--generators", nargs="+", default=["extractive", "smollm2"])
    args = parser.parse_args()
    started = time.perf_counter()
    with bench_engine() as rt:
        result = evaluate_answers(rt, "squad", generators=args.generators, limit=args.limit, keep_answers=True)
        settings = {k: getattr(rt.settings, k) for k in ("abstain_threshold", "support_threshold", "context_tokens",
                                                        "answer_top_k", "max_new_tokens")}
    console.print(answers_table(result))
    path = write_result("answer_quality", {**result, "settings": settings,
                                           "seconds": round(time.perf_counter() - started, 1)})
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
