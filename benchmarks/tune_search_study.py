"""A measured ``ragtune tune search`` study: Optuna over learning rate, LoRA rank, alpha and dropout
for SmolLM2-135M-Instruct on the LLaMA-Factory 0.9.5 Alpaca demo, against the default config in the
same run.

    python benchmarks/tune_search_study.py [--trials 6] [--rows 300] [--steps 20]

The first ``--rows`` rows of ``data/alpaca_en_demo.json`` are split by ragtune's own hash split
(10 % held out); every trial trains ``--steps`` steps (batch 4, max_length 256, fp32) and is scored
by its held-out eval loss, evaluated four times so that median pruning can stop a poor trial. The
baseline is one run of the default ``TuneConfig`` (lr 2e-4, r 8, alpha 16, dropout 0.05) with the
same steps and data. The study is stored in the bench project's PostgreSQL (schema ``optuna``),
so re-running with a larger ``--trials`` extends it; ``--fresh`` starts a new project.

Results: ``benchmarks/results/tune_search_study.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from common import default_bench_data, write_result
from rich.console import Console
from tune_showcase import LLAMAFACTORY, demo_file

console = Console()
STUDY = "alpaca-search"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--rows", type=int, default=300, help="Alpaca demo rows used (train + held out).")
    parser.add_argument("--steps", type=int, default=20, help="Training steps per trial and for the baseline.")
    parser.add_argument("--fresh", action="store_true", help="Delete the bench project first.")
    args = parser.parse_args()

    from ragtune.cli.common import ProgressBars
    from ragtune.cli.tune_search import trials_table
    from ragtune.finetune.lifecycle.search import search
    from ragtune.finetune.lifecycle.search_space import SearchSpace
    from ragtune.finetune.lora.config import TuneConfig, to_dict
    from ragtune.finetune.lora.runs import read_record
    from ragtune.finetune.lora.train import start_run
    from ragtune.finetune.lora.trainset import from_file
    from ragtune.settings import Settings

    project = default_bench_data() / "search-study"
    if args.fresh and project.exists():
        from ragtune.store.server import EmbeddedPostgres

        EmbeddedPostgres(project).stop()
        shutil.rmtree(project)
    settings = Settings(data_dir=project)
    config = TuneConfig(max_steps=args.steps, batch_size=4, max_length=256, eval_fraction=0.1, save_steps=1000)
    space = SearchSpace(random_trials=3, prune_after=2, evaluations=4, warmup_evaluations=1)

    with tempfile.TemporaryDirectory(prefix="search-study-") as folder:
        full = demo_file("data/alpaca_en_demo.json", Path(folder))
        subset = Path(folder) / f"alpaca_{args.rows}.json"
        subset.write_text(json.dumps(json.loads(full.read_text())[: args.rows]))
        data = from_file(subset, eval_fraction=config.eval_fraction, force=True)
        console.print(f"{len(data.train)} train rows, {len(data.eval)} held-out rows, {args.steps} steps per trial")

        with ProgressBars() as bars:
            baseline = start_run(base="smollm2", data=data, config=config, data_dir=project,
                                 cache_dir=settings.resolved_cache_dir, name="default-config", progress=bars)

        started = time.perf_counter()
        with ProgressBars(lines=["trials"]) as bars:  # a line per finished trial, as `ragtune tune search` prints
            result = search(settings=settings, data=data, config=config, trials=args.trials, space=space,
                            study=STUDY, progress=bars)
        search_seconds = time.perf_counter() - started

    rows: list[dict[str, Any]] = []
    for trial in result.trials:
        record = read_record(Path(trial.run_dir)) if trial.run_dir else None
        metrics = record.metrics if record is not None else {}
        rows.append({**trial.to_dict(), "seconds": metrics.get("seconds"),
                     "tokens_per_second": metrics.get("tokens_per_second")})

    # the table `ragtune tune search` prints, after the baseline it is compared with
    console.print(f"default config: eval loss {baseline.metrics['eval_loss']:.4f}, lr {config.learning_rate:.2e} "
                  f"r={config.lora.r} alpha={config.lora.alpha} drop={config.lora.dropout:.3f}, "
                  f"{baseline.metrics['steps']} steps, {baseline.metrics['seconds']:.0f} s")
    console.print(trials_table(f"study {STUDY}: {len(data.train)} train / {len(data.eval)} held-out rows, "
                               f"{args.steps} steps", result.trials))
    best = result.best
    if best is not None and best.value is not None:
        default_loss = baseline.metrics["eval_loss"]
        gain = default_loss - best.value
        console.print(f"best trial {best.number}: eval loss {best.value:.4f} vs default {default_loss:.4f}"
                      f" ({gain:+.4f} lower); registered {result.registered}; search wall time {search_seconds:.0f} s")
    path = write_result("tune_search_study", {
        "data": f"{LLAMAFACTORY} data/alpaca_en_demo.json, first {args.rows} rows",
        "base": "SmolLM2-135M-Instruct (fp32)", "train_rows": len(data.train), "eval_rows": len(data.eval),
        "config": to_dict(config),
        "space": space.to_dict(),
        "baseline": {"eval_loss": baseline.metrics["eval_loss"], "seconds": baseline.metrics["seconds"],
                     "params": {"learning_rate": config.learning_rate, "lora_r": config.lora.r,
                                "lora_alpha": config.lora.alpha, "lora_dropout": config.lora.dropout}},
        "study": result.to_dict(), "trials": rows, "search_wall_seconds": search_seconds,
    })
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
