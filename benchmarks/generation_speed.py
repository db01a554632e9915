"""Generation tokens/s through ragtune's TransformersGenerator (chat template, streaming callback,
timeout criteria) against a bare ``model.generate`` on the same prompts, same model, same decoding.

    python benchmarks/generation_speed.py [--prompts 6] [--max-tokens 64]

Prompts are real: a SQuAD 2.0 question with five paragraphs packed by ragtune's prompt builder.
Runs alternate between the two so load drifts hit both alike. Writes
benchmarks/results/generation_speed.json.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import write_result
from rich.console import Console
from rich.table import Table

from ragtune.evaluate.datasets import load_dataset
from ragtune.generate.local import TransformersGenerator
from ragtune.generate.prompt import build_prompt
from ragtune.models import Chunk, Hit
from ragtune.settings import Settings

console = Console()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    cache = Settings().resolved_cache_dir
    gen = TransformersGenerator.packaged(cache)
    model, tok = gen.model, gen.tokenizer
    ds = load_dataset("squad", cache / "packages")
    docs = list(ds.corpus.values())
    prompts = []
    for i, (qid, question) in enumerate(list(ds.queries.items())[: args.prompts * 40: 40]):
        gold = next(iter(ds.qrels[qid]))
        chosen = [ds.corpus[gold], *docs[i * 5: i * 5 + 4]]
        hits = [Hit(chunk=Chunk(0, d.text, 0, len(d.text), id=n), score=1.0, rank=n, uri=d.id, document_id=n,
                    metadata={}) for n, d in enumerate(chosen, start=1)]
        prompts.append(build_prompt(question, hits, count_tokens=gen.count_tokens, budget=1024).messages)
    gen.generate(prompts[0], max_tokens=4)  # warm-up
    rows = {"ragtune": [0, 0.0], "bare": [0, 0.0]}
    prompt_tokens = 0
    for messages in prompts:
        for system in ("ragtune", "bare") if len(prompts) % 2 else ("bare", "ragtune"):
            if system == "ragtune":
                pieces: list[str] = []
                c = gen.generate(messages, max_tokens=args.max_tokens, on_token=pieces.append)
                rows[system][0] += c.completion_tokens
                rows[system][1] += c.seconds
                prompt_tokens += c.prompt_tokens
            else:
                inputs = tok(gen.render(messages), return_tensors="pt", add_special_tokens=False)
                with torch.inference_mode():
                    t = time.perf_counter()
                    out = model.generate(**inputs, max_new_tokens=args.max_tokens, do_sample=False,
                                         pad_token_id=tok.eos_token_id)
                    rows[system][1] += time.perf_counter() - t
                rows[system][0] += int(out.shape[1] - inputs["input_ids"].shape[1])
    speeds = {k: v[0] / v[1] for k, v in rows.items()}
    ratio = speeds["ragtune"] / speeds["bare"]
    table = Table(title=f"SmolLM2-135M generation, {len(prompts)} prompts (~{prompt_tokens // len(prompts)} "
                        f"prompt tokens), up to {args.max_tokens} new tokens, {torch.get_num_threads()} threads")
    for col in ("system", "tokens", "seconds", "tokens/s"):
        table.add_column(col, justify="right")
    for k, (n, s) in rows.items():
        table.add_row(k, str(n), f"{s:.1f}", f"{n / s:.2f}")
    console.print(table)
    console.print(f"ragtune / bare = {ratio:.3f} (target >= 0.9)")
    path = write_result("generation_speed", {"prompts": len(prompts), "max_tokens": args.max_tokens,
                                             "mean_prompt_tokens": prompt_tokens / len(prompts),
                                             "systems": {k: {"tokens": v[0], "seconds": v[1],
                                                             "tokens_per_second": speeds[k]}
                                                         for k, v in rows.items()},
                                             "ratio": ratio})
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
