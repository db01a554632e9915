"""Answer quality per generator, side by side on the same questions over a full corpus:
SQuAD 2.0 dev (half of the questions unanswerable, 1,204 paragraphs) or HotpotQA dev
(multi-hop, 66,635 paragraphs; searched with the int8 embedder, whose stored embeddings
``populate.py`` builds, so nothing is embedded again).

    python benchmarks/answer_quality.py [--dataset squad|hotpotqa] [--limit 20] [--generators extractive smollm2]

Writes benchmarks/results/answer_quality.json (SQuAD) or answer_quality_multihop.json (HotpotQA):
metrics, plus every answer for inspection.
"""

from __future__ import annotations

import argparse
import time

from common import bench_engine, write_result
from rich.console import Console

from ragtune.cli.evaluate import answers_table
from ragtune.evaluate.answers import evaluate_answers

console = Console()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--generators", nargs="+", default=["extractive", "smollm2"])
    parser.add_argument("--dataset", choices=["squad", "hotpotqa"], default="squad")
    args = parser.parse_args()
    started = time.perf_counter()
    with bench_engine("minilm" if args.dataset == "squad" else "minilm-int8") as rt:
        result = evaluate_answers(rt, args.dataset, generators=args.generators, limit=args.limit, keep_answers=True)
        settings = {k: getattr(rt.settings.generation, k) for k in (
            "abstain_threshold", "support_threshold", "context_tokens", "answer_top_k", "max_new_tokens")}
    console.print(answers_table(result))
    name = "answer_quality" if args.dataset == "squad" else "answer_quality_multihop"
    path = write_result(name, {**result, "settings": settings,
                                           "seconds": round(time.perf_counter() - started, 1)})
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
