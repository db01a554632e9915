"""Training speed of LoRA on SmolLM2-135M-Instruct on this machine's CPU cores, for r=8 and r=16,
on the Alpaca demo rows (LLaMA-Factory 0.9.5 sdist, ``data/alpaca_en_demo.json``).

    python benchmarks/train_speed.py [--steps 20] [--batch-size 4] [--max-length 256] [--ranks 8,16]

Each rank trains in its own process through ``ragtune.finetune.lora.train.start_run`` (so the peak RSS
is that run's alone), fp32, no gradient checkpointing, no checkpoint saved during the timed steps.
Tokens are the non-padding input tokens the Trainer counts; tokens/s is measured after the first
step (which also pays for warm-up). The FLOPs bound is the usual 6 x parameters x tokens (forward
2N, backward 4N per token; LoRA saves the weight gradients of the frozen matrices, so the work
really needed is nearer 4N: both fractions are reported), against a peak FLOP/s measured in the
same run: the best of repeated fp32 2048x2048 matmuls with torch's default threads.

Writes benchmarks/results/train_speed.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import write_result
from rich.console import Console
from rich.table import Table

console = Console()
LLAMAFACTORY = "llamafactory==0.9.5"
MEMBER = "data/alpaca_en_demo.json"


def alpaca_bytes() -> bytes:
    from ragtune.evaluate.packages import fetch_package, read_member
    from ragtune.settings import Settings

    archive = fetch_package(LLAMAFACTORY, cache_dir=Settings().resolved_cache_dir / "packages", sdist=True)
    return read_member(archive, MEMBER)


def peak_flops(n: int = 2048, repeats: int = 10) -> float:
    """Best fp32 matmul throughput (FLOP/s) over ``repeats`` timed products, after a warm-up."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best


def one_rank(rank: int, steps: int, batch_size: int, max_length: int) -> dict[str, Any]:
    """Train ``steps`` steps at LoRA rank ``rank`` in this process; the run's metrics."""
    from ragtune.finetune.data.formats import parse_bytes
    from ragtune.finetune.lora.config import LoraSettings, TuneConfig
    from ragtune.finetune.lora.train import start_run
    from ragtune.finetune.lora.trainset import TrainSet
    from ragtune.settings import Settings

    data = alpaca_bytes()
    parsed = parse_bytes(data, source=MEMBER, format="alpaca")
    rows = TrainSet("alpaca_en_demo", None, hashlib.sha256(data).hexdigest(), parsed.examples, [])
    config = TuneConfig(max_steps=steps, batch_size=batch_size, max_length=max_length, save_steps=steps + 1,
                        learning_rate=2e-4, lora=LoraSettings(r=rank, alpha=2 * rank))
    with tempfile.TemporaryDirectory(prefix="train-speed-") as folder:
        record = start_run(base="smollm2", data=rows, config=config, data_dir=Path(folder),
                           cache_dir=Settings().resolved_cache_dir, name=f"alpaca-r{rank}")
    return record.metrics


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--ranks", default="8,16")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: train one rank, print JSON
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one_rank(args.one, args.steps, args.batch_size, args.max_length)))
        return

    import torch

    flops = peak_flops()
    results = []
    for rank in (int(r) for r in args.ranks.split(",")):
        console.print(f"training r={rank}: {args.steps} steps of {args.batch_size} rows (max {args.max_length} tokens)")
        out = subprocess.run([sys.executable, __file__, "--one", str(rank), "--steps", str(args.steps),
                              "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)],
                             check=True, stdout=subprocess.PIPE, text=True).stdout
        m = json.loads(out.strip().splitlines()[-1])
        speed = m["steady_tokens_per_second"] or m["tokens_per_second"]
        results.append({
            "r": rank, "steps": m["steps"], "tokens": m["tokens"], "seconds": m["seconds"],
            "tokens_per_second": speed, "tokens_per_second_with_first_step": m["tokens_per_second"],
            "parameters": m["parameters"], "trainable_parameters": m["trainable_parameters"],
            "achieved_flops_6n": 6 * m["parameters"] * speed,
            "fraction_of_peak_6n": 6 * m["parameters"] * speed / flops,
            "fraction_of_peak_4n": 4 * m["parameters"] * speed / flops,
            "peak_rss_mb": m["peak_rss_mb"], "first_loss": m["first_loss"], "last_loss": m["last_loss"],
        })
    table = Table(title=f"LoRA training on {torch.get_num_threads()} threads, peak {flops / 1e9:.1f} GFLOP/s "
                        "(measured fp32 matmul)")
    for col in ("r", "trainable", "tokens/s", "6N FLOP/s", "of peak (6N)", "of peak (4N)", "peak RSS", "loss"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(str(r["r"]), f"{r['trainable_parameters']:,}", f"{r['tokens_per_second']:.1f}",
                      f"{r['achieved_flops_6n'] / 1e9:.2f} G", f"{r['fraction_of_peak_6n']:.1%}",
                      f"{r['fraction_of_peak_4n']:.1%}", f"{r['peak_rss_mb']:,.0f} MiB",
                      f"{r['first_loss']:.3f} -> {r['last_loss']:.3f}")
    console.print(table)
    path = write_result("train_speed", {
        "model": "SmolLM2-135M-Instruct (fp32)", "data": f"{LLAMAFACTORY} {MEMBER}",
        "steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length,
        "peak_flops": flops, "peak_flops_method": "best of 10 fp32 2048x2048 torch matmuls",
        "flops_bound": "6 x parameters x tokens (4 x also reported: frozen weights need no weight gradients)",
        "results": results,
    })
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
