"""Fine-tuning showcase: SmolLM2-135M-Instruct tuned with LoRA on the LLaMA-Factory 0.9.5 demo sets,
base against tuned on held-out rows, the same greedy decoding for both.

    python benchmarks/tune_showcase.py --task toolcall   # data/glaive_toolcall_en_demo.json
    python benchmarks/tune_showcase.py --task style      # data/alpaca_en_demo.json
    python benchmarks/tune_showcase.py --task toolcall --eval-only   # re-evaluate the newest run

Each task trains through ``ragtune.finetune.lora.train.start_run`` (what ``ragtune tune train`` runs)
and evaluates through ``ragtune.finetune.lora.evaluate.evaluate_run`` (``ragtune tune eval``). The
split is ragtune's own deterministic hash split (10 % held out, so exact duplicates never straddle
it). The tool-call set holds one 11,632-token row over the base's context: validation flags it,
the run is forced past it (the reason is recorded with the run) and ``max_length`` truncates it.

Runs live in ``<bench data>/showcase/runs``; results go to
``benchmarks/results/tune_showcase_<task>.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from common import default_bench_data, write_result
from rich.console import Console

console = Console()
LLAMAFACTORY = "llamafactory==0.9.5"
TASKS: dict[str, dict[str, Any]] = {
    # Tool calls need the whole conversation (tool list, call, result, final answer): 1,024 tokens
    # keeps all but the over-length row whole. Every linear layer: calls are format and arguments.
    "toolcall": {"member": "data/glaive_toolcall_en_demo.json", "epochs": 1.0, "max_steps": 0,
                 "learning_rate": 4e-4, "r": 16, "alpha": 32, "target_modules": "all-linear",
                 "max_length": 1024, "limit": None, "max_new_tokens": 128},
    # Style: a few hundred Alpaca rows are enough to move the voice; the budget keeps it ~15 min.
    "style": {"member": "data/alpaca_en_demo.json", "epochs": 1.0, "max_steps": 75,
              "learning_rate": 3e-4, "r": 16, "alpha": 32, "target_modules": "all-linear",
              "max_length": 512, "limit": 40, "max_new_tokens": 128},
}


def demo_file(member: str, folder: Path) -> Path:
    from ragtune.evaluate.packages import fetch_package, read_member
    from ragtune.settings import Settings

    archive = fetch_package(LLAMAFACTORY, cache_dir=Settings().resolved_cache_dir / "packages", sdist=True)
    path = folder / Path(member).name
    path.write_bytes(read_member(archive, member))
    return path


def train(task: str, spec: dict[str, Any], data_dir: Path) -> Path:
    from ragtune.cli.common import ProgressBars
    from ragtune.finetune.lora.config import LoraSettings, TuneConfig
    from ragtune.finetune.lora.train import start_run
    from ragtune.finetune.lora.trainset import from_file
    from ragtune.settings import Settings

    config = TuneConfig(epochs=spec["epochs"], max_steps=spec["max_steps"], batch_size=4,
                        learning_rate=spec["learning_rate"], max_length=spec["max_length"], save_steps=50,
                        eval_fraction=0.1, lora=LoraSettings(r=spec["r"], alpha=spec["alpha"], dropout=0.05,
                                                             target_modules=spec["target_modules"]))
    with tempfile.TemporaryDirectory(prefix="showcase-") as folder:
        data = from_file(demo_file(spec["member"], Path(folder)), eval_fraction=config.eval_fraction, force=True)
        console.print(f"{task}: {len(data.train)} train rows, {len(data.eval)} held-out rows")
        with ProgressBars() as bars:
            record = start_run(base="smollm2", data=data, config=config, data_dir=data_dir,
                               cache_dir=Settings().resolved_cache_dir, name=f"showcase-{task}", progress=bars)
    return Path(record.path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--eval-only", action="store_true", help="Evaluate the newest completed run again.")
    parser.add_argument("--limit", type=int, help="Held-out rows to evaluate (default: the task's).")
    args = parser.parse_args()
    spec = TASKS[args.task]
    data_dir = default_bench_data() / "showcase"

    from ragtune.cli.tune_eval import report_table
    from ragtune.finetune.lora.evaluate import evaluate_run, resolve_run
    from ragtune.finetune.lora.runs import read_record
    from ragtune.settings import Settings

    started = time.perf_counter()
    run_dir = (resolve_run(f"showcase-{args.task}", data_dir / "runs") if args.eval_only
               else train(args.task, spec, data_dir))
    train_seconds = time.perf_counter() - started
    record = read_record(run_dir)
    assert record is not None
    limit = args.limit or spec["limit"]
    report = evaluate_run(run_dir, settings=Settings(data_dir=data_dir), limit=limit,
                          max_new_tokens=spec["max_new_tokens"])
    m = record.metrics
    console.print(report_table(report))  # the table `ragtune tune eval` prints
    console.print(f"training: {m['steps']} steps, {m.get('session_tokens', 0):,} tokens, {m['seconds']:.0f} s, "
                  f"{m['tokens_per_second']:.1f} tokens/s, loss {m.get('first_loss', 0):.3f} -> "
                  f"{m.get('last_loss', 0):.3f}, peak RSS {m.get('peak_rss_mb', 0):,.0f} MiB")
    path = write_result(f"tune_showcase_{args.task}", {
        "task": args.task, "data": f"{LLAMAFACTORY} {spec['member']}", "base": "SmolLM2-135M-Instruct (fp32)",
        "run": record.run_id, "train_rows": record.train_rows, "eval_rows": record.eval_rows,
        "config": record.config, "forced_reasons": list(record.forced_reasons),
        "training": {k: m.get(k) for k in ("steps", "session_tokens", "seconds", "tokens_per_second",
                                           "first_loss", "last_loss", "train_loss", "eval_loss", "peak_rss_mb")},
        "wall_seconds": None if args.eval_only else train_seconds,
        "evaluated_rows": report.rows, "cases": report.cases, "max_new_tokens": report.max_new_tokens,
        "base_metrics": report.base_metrics, "tuned_metrics": report.tuned_metrics, "timings": report.timings,
        "examples": report.details[:6],
    })
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
