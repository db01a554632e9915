"""Sequence packing against padded batches: LoRA on SmolLM2-135M-Instruct on this machine's CPU cores,
the same Alpaca demo rows as train_speed.py (LLaMA-Factory 0.9.5 sdist, ``data/alpaca_en_demo.json``).

    python benchmarks/packing_speed.py [--steps 8] [--batch-size 4] [--max-length 256] [--repeats 3]

Each training runs in its own process through ``ragtune.finetune.lora.train.start_run`` with the same
config but ``packing``: the same steps and batch size (a packed batch holds ``batch_size`` sequences of
up to ``max_length`` tokens, so it carries more rows than a padded one). Runs alternate A B B A ... so
that a change in the machine's load falls on both sides alike; the machine is shared and loaded, so
the figures to read are the medians and the ratio within each pair of runs, not one run's speed.

Tokens are the non-padding input tokens the Trainer counts (a padded batch counts its attention mask,
a padding-free packed batch every token), per second after the first step. Rows/s divides that by the
rows' mean length. The padding a padded batch would carry is estimated from the rows' token lengths
over 2,000 random batches (the Trainer pads each batch to its longest row); with the packs' fill it
gives the gain packing would bring if a step cost the same per token, padding or not
(``expected_ratio_from_padding``). A run shorter than an epoch sees particular batches (the same
ones in every repeat, the sampler being seeded), so the real tokens per padded step are reported
next to the data's average: a window of short batches favours packing, one of long batches the
padded runs.

Writes benchmarks/results/packing_speed.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import write_result
from rich.console import Console
from rich.table import Table
from train_speed import LLAMAFACTORY, MEMBER, alpaca_bytes

console = Console()
MODES = ("padded", "packed")


def rows() -> Any:
    from ragtune.finetune.data.formats import parse_bytes
    from ragtune.finetune.lora.trainset import TrainSet

    data = alpaca_bytes()
    parsed = parse_bytes(data, source=MEMBER, format="alpaca")
    return TrainSet("alpaca_en_demo", None, hashlib.sha256(data).hexdigest(), parsed.examples, [])


def one_run(mode: str, steps: int, batch_size: int, max_length: int) -> dict[str, Any]:
    """Train ``steps`` steps in this process, packed or padded; the run's metrics."""
    from ragtune.finetune.lora.config import TuneConfig
    from ragtune.finetune.lora.train import start_run
    from ragtune.settings import Settings

    config = TuneConfig(max_steps=steps, batch_size=batch_size, max_length=max_length, save_steps=steps + 1,
                        learning_rate=2e-4, packing=mode == "packed")
    with tempfile.TemporaryDirectory(prefix="packing-speed-") as folder:
        record = start_run(base="smollm2", data=rows(), config=config, data_dir=Path(folder),
                           cache_dir=Settings().resolved_cache_dir, name=f"alpaca-{mode}")
    return record.metrics


def padding_share(batch_size: int, max_length: int, batches: int = 2000) -> dict[str, float]:
    """Row lengths as training sees them, and the share of padding in random padded batches."""
    from transformers import AutoTokenizer

    from ragtune.finetune.lora.train import resolve_base
    from ragtune.finetune.lora.trainset import sft_dataset
    from ragtune.settings import Settings

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_base("smollm2", Settings().resolved_cache_dir).path))
    features, _ = sft_dataset(tokenizer, rows().train, max_length)
    lengths = [len(f["input_ids"]) for f in features]
    rng = random.Random(0)
    real = padded = 0
    for _ in range(batches):
        batch = rng.sample(lengths, batch_size)
        real += sum(batch)
        padded += max(batch) * batch_size
    return {"rows": len(lengths), "mean_tokens": statistics.mean(lengths), "median_tokens": statistics.median(lengths),
            "truncated_at_max_length": sum(n == max_length for n in lengths),
            "padding_share_of_padded_batches": 1 - real / padded}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)  # internal: one training, JSON out
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one_run(args.one, args.steps, args.batch_size, args.max_length)))
        return

    import torch

    shape = padding_share(args.batch_size, args.max_length)
    console.print(f"{shape['rows']} rows, mean {shape['mean_tokens']:.0f} tokens; random padded batches of "
                  f"{args.batch_size} would be {shape['padding_share_of_padded_batches']:.0%} padding")
    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        order = MODES if repeat % 2 == 0 else MODES[::-1]  # A B, B A, A B ...
        for mode in order:
            load = os.getloadavg()[0]
            console.print(f"repeat {repeat + 1}/{args.repeats}: {mode}, {args.steps} steps of {args.batch_size} "
                          f"(load {load:.2f})")
            started = time.perf_counter()
            out = subprocess.run([sys.executable, __file__, "--one", mode, "--steps", str(args.steps),
                                  "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)],
                                 check=True, stdout=subprocess.PIPE, text=True).stdout
            m = json.loads(out.strip().splitlines()[-1])
            speed = m["steady_tokens_per_second"] or m["tokens_per_second"]
            runs.append({
                "repeat": repeat, "mode": mode, "steps": m["steps"], "tokens": m["tokens"], "seconds": m["seconds"],
                "tokens_per_second": speed, "rows_per_second": speed / shape["mean_tokens"],
                "tokens_per_step": m["tokens"] / m["steps"], "packed_sequences": m.get("data_packed_sequences"),
                "first_loss": m["first_loss"], "last_loss": m["last_loss"], "peak_rss_mb": m["peak_rss_mb"],
                "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2),
                "wall_seconds": round(time.perf_counter() - started, 1),
            })
    pairs = [next(r for r in runs if r["repeat"] == i and r["mode"] == "packed")["tokens_per_second"]
             / next(r for r in runs if r["repeat"] == i and r["mode"] == "padded")["tokens_per_second"]
             for i in range(args.repeats)]
    summary = {mode: {
        "median_tokens_per_second": statistics.median(r["tokens_per_second"] for r in runs if r["mode"] == mode),
        "median_rows_per_second": statistics.median(r["rows_per_second"] for r in runs if r["mode"] == mode),
        "median_tokens_per_step": statistics.median(r["tokens_per_step"] for r in runs if r["mode"] == mode),
        "median_peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs if r["mode"] == mode),
    } for mode in MODES}
    packs = next(r["packed_sequences"] for r in runs if r["mode"] == "packed")
    fill = shape["mean_tokens"] * shape["rows"] / (packs * args.max_length) if packs else None
    expected = fill / (1 - shape["padding_share_of_padded_batches"]) if fill else None

    table = Table(title=f"LoRA r=8 on {torch.get_num_threads()} threads: padded vs packed ({args.steps} steps of "
                        f"{args.batch_size}, max {args.max_length} tokens; medians of {args.repeats}, loaded machine)")
    for col in ("", "tokens/s", "rows/s", "tokens/step", "peak RSS"):
        table.add_column(col, justify="right")
    for mode in MODES:
        s = summary[mode]
        table.add_row(mode, f"{s['median_tokens_per_second']:.1f}", f"{s['median_rows_per_second']:.2f}",
                      f"{s['median_tokens_per_step']:.0f}", f"{s['median_peak_rss_mb']:,.0f} MiB")
    console.print(table)
    console.print(f"packed / padded tokens/s per pair: {', '.join(f'{p:.2f}' for p in pairs)} "
                  f"(median {statistics.median(pairs):.2f}); packs {fill:.0%} full; expected from padding alone "
                  f"{expected:.2f}; padded steps held {summary['padded']['median_tokens_per_step']:.0f} real tokens "
                  f"(data average {args.batch_size * shape['mean_tokens']:.0f})" if fill and expected else "",
                  highlight=False)
    path = write_result("packing_speed", {
        "model": "SmolLM2-135M-Instruct (fp32), LoRA r=8 on q/k/v/o", "data": f"{LLAMAFACTORY} {MEMBER}",
        "steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length, "repeats": args.repeats,
        "packing": "TRL bfd packing, padding-free batches, position ids restarting per row (sdpa attention)",
        "tokens": "non-padding input tokens counted by the Trainer, per second after the first step",
        "note": "shared, loaded 2-core machine: read the medians and the per-pair ratios",
        "rows": shape, "packed_sequences": packs, "pack_fill": fill, "expected_ratio_from_padding": expected,
        "data_mean_tokens_per_padded_step": args.batch_size * shape["mean_tokens"],
        "summary": summary, "packed_over_padded_tokens_per_second": pairs,
        "median_ratio": statistics.median(pairs), "runs": runs,
    })
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
