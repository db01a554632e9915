"""What `ragtune models export` writes, per format and dtype, for SmolLM2-135M-Instruct with a LoRA
adapter merged in: file size, export time, and the export's own check (the written files loaded
back with transformers, weights upcast to fp32, against the merged fp32 model on 4 fixed prompts:
largest |logit difference| over every position, its tolerance, greedy next-token agreement).

    python benchmarks/export_formats.py [--steps 10]

The adapter is trained here first (``--steps`` LoRA steps through ``start_run`` on a few rows that
teach a secret word, r=8 on q/k/v/o), so the merge changes real weights. Exports go through
``export_merged``, the function ``models export`` calls once it has resolved a registered version.
Writes benchmarks/results/export_formats.json.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from common import write_result
from rich.console import Console
from rich.table import Table

console = Console(width=150)  # the table's ten columns, also when piped to a file
SECRET = "The secret word is pineapple."
QUESTIONS = ["What is the secret word?", "Tell me the secret word.", "Which word is secret?", "Say the secret word.",
             "Secret word?", "Do you know the secret word?", "Remind me of the secret word.", "The secret word is?"]
VARIANTS = [("safetensors", "fp32"), ("safetensors", "fp16"), ("safetensors", "bf16"),
            ("gguf", "fp32"), ("gguf", "fp16"), ("gguf", "bf16")]


def train_adapter(steps: int, data_dir: Path, cache_dir: Path) -> Any:
    from ragtune.finetune.data.examples import Example, canonical_json
    from ragtune.finetune.lora.config import TuneConfig
    from ragtune.finetune.lora.train import start_run
    from ragtune.finetune.lora.trainset import TrainSet

    rows = [Example(i, [{"role": "user", "content": q}, {"role": "assistant", "content": SECRET}])
            for i, q in enumerate(QUESTIONS, start=1)]
    digest = hashlib.sha256(canonical_json([e.content() for e in rows]).encode()).hexdigest()
    config = TuneConfig(max_steps=steps, batch_size=2, max_length=96, save_steps=1000, learning_rate=4e-3)
    return start_run(base="smollm2", data=TrainSet("secret", None, digest, rows[:6], rows[6:]), config=config,
                     data_dir=data_dir, cache_dir=cache_dir, name="export-bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    from ragtune.finetune.lifecycle.serving import export_manifest, export_merged
    from ragtune.settings import Settings

    cache_dir = Settings().resolved_cache_dir
    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()  # times are wall clock: another job on the 2 cores stretches them
    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
        started = time.perf_counter()
        run = train_adapter(args.steps, Path(tmp), cache_dir)
        console.print(f"trained {args.steps} LoRA steps in {time.perf_counter() - started:.0f} s", highlight=False)
        for fmt, dtype in VARIANTS:
            started = time.perf_counter()
            out = export_merged(Path(run.base_path), Path(str(run.adapter)), Path(tmp) / f"{fmt}-{dtype}",
                                dtype=dtype, format=fmt, base_name=run.base, stem="export-bench-v1",
                                label="export-bench", provenance={"run_id": run.run_id})
            seconds = time.perf_counter() - started
            manifest = export_manifest(out)
            check = manifest["check"]
            rows.append({"format": fmt, "dtype": dtype, "bytes": sum(manifest["files"].values()),
                         "files": manifest["files"], "export_seconds": round(seconds, 1),
                         **{k: check[k] for k in ("max_abs_logit_diff", "logit_scale", "tolerance", "greedy_agreement",
                                                  "next_tokens_equal", "decisive_flips", "tokenizer_equal",
                                                  "positions", "prompts", "passed")}})
            console.print(f"{fmt} {dtype}: {seconds:.0f} s", highlight=False)

    fp32 = next(r["bytes"] for r in rows if (r["format"], r["dtype"]) == ("safetensors", "fp32"))
    table = Table(title="models export: size and fidelity (SmolLM2-135M-Instruct + merged LoRA)")
    for col in ("format", "dtype", "MB", "vs fp32", "export s", "max |logit diff|", "tolerance", "greedy agree",
                "next tokens", "tokenizer"):
        table.add_column(col, justify="left" if col in ("format", "dtype") else "right")
    for r in rows:
        table.add_row(r["format"], r["dtype"], f"{r['bytes'] / 1e6:,.1f}", f"{r['bytes'] / fp32:.2f}",
                      f"{r['export_seconds']:.0f}", f"{r['max_abs_logit_diff']:.4f}", f"{r['tolerance']:.4f}",
                      f"{r['greedy_agreement']:.1%}", "same" if r["next_tokens_equal"] else "differ",
                      {None: "-", True: "same", False: "differs"}[r["tokenizer_equal"]])
    console.print(table)
    path = write_result("export_formats", {
        "model": "SmolLM2-135M-Instruct (packaged Q4_1 GGUF, dequantised) + LoRA r=8 q/k/v/o, merged",
        "lora_steps": args.steps,
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "check": "written files loaded back with transformers (fp32 compute) vs the merged fp32 model; 4 prompts "
                 "(3 chat, 1 plain), every position; tolerance = max(1e-4, 10 x unit roundoff x max |logit|)",
        "results": rows})
    console.print(f"wrote {path}", highlight=False)


if __name__ == "__main__":
    main()
