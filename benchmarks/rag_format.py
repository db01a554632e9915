"""Training for the hybrid (issue 18, item 1): SmolLM2-135M as it ships, tuned on plain
question -> answer rows, and tuned on the same rows rendered as ``ask`` serves them
(``tune train --rag-format``: numbered sources, gold + distractors, RAFT-style) once per
``--positions`` of the gold source (``rank``: retrieval's order; ``random``: RAFT's), all answering
over the same retrieval, side by side in one run.

    python benchmarks/rag_format.py [--train 120] [--test 80] [--unanswerable 20] [--steps 60] \
        [--positions rank,random]

Public task: SQuAD 2.0 dev, split by article with the reader's rule (``finetune.reader.split_of``:
sha256 of the title; quarters 0-1 train, 3 test), so no test question's article was trained on.
Training rows: one answerable question per paragraph of the training articles (first gold answer).
Test: quarter-3 answerable questions and SQuAD's unanswerable questions about the same articles.
The collection is the whole SQuAD dev corpus (the retrieval benchmark's; stored embeddings reused),
so training articles are there as distractors at test time too.

All answer through ``Ragtune.ask`` with the same sources (top ``--top-k`` hybrid hits packed
into ``--context-tokens``), the support threshold as the only abstention rule (no reader, no
answerability model), greedy decoding. The plain-rows adapter records the ``chat`` prompt format,
which ``ask`` refuses; to measure what that refusal prevents, it is served from a copy without the
record. Scores (``evaluate.answers.score_generator``): token F1 and EM on answerable questions,
citation precision, groundedness, no-answer accuracy on the unanswerable ones, latency.

Training is on CPU at ~70 tokens/s (benchmarks/results/train_speed.json), so the defaults are
small: the prompts are cut to ``--context-tokens`` and the run to ``--steps``. Results:
benchmarks/results/rag_format.json (ids and scores only; no dataset text).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import time
from pathlib import Path
from typing import Any

from common import bench_engine, write_result
from rich.console import Console
from rich.table import Table

from ragtune.evaluate.answers import AnswerCase, CaseResult, score_generator
from ragtune.evaluate.datasets import load_dataset
from ragtune.evaluate.retrieval import index_dataset
from ragtune.finetune.data.examples import Example
from ragtune.finetune.lora.config import TuneConfig, from_dict, to_dict
from ragtune.finetune.lora.rag_format import RagFormat, describe, for_sources
from ragtune.finetune.lora.train import resolve_base, start_run
from ragtune.finetune.lora.trainset import TrainSet
from ragtune.finetune.reader import TEST, TRAIN, split_of
from ragtune.generate.prompt import PROMPT_FILE
from ragtune.models import Principal

console = Console()
OPERATOR = Principal.system()


def _rag_name(position: str) -> str:
    """The run's and the result's name of the RAG-format adapter with the gold at ``position``."""
    return "rag_format" if position == "rank" else f"rag_format_{position}"


def _order(qid: str) -> str:
    return hashlib.sha256(qid.encode()).hexdigest()


def cases(dataset: Any, n_train: int, n_test: int, n_unanswerable: int) -> tuple[list[Example], list[AnswerCase]]:
    """Training rows (one answerable question per training paragraph) and test cases."""
    split = {d: split_of(doc.title) for d, doc in dataset.corpus.items()}
    rows: list[Example] = []
    seen: set[str] = set()
    for qid in sorted(dataset.queries, key=_order):
        docs = list(dataset.qrels[qid])
        if len(docs) != 1 or split[docs[0]] != TRAIN or docs[0] in seen or not dataset.answers.get(qid):
            continue
        seen.add(docs[0])
        rows.append(Example(len(rows) + 1, [{"role": "user", "content": dataset.queries[qid]},
                                            {"role": "assistant", "content": dataset.answers[qid][0]}]))
        if len(rows) == n_train:
            break
    answerable = [AnswerCase(q, dataset.queries[q], dataset.answers[q], frozenset(dataset.qrels[q]), True)
                  for q in sorted(dataset.queries, key=_order)
                  if all(split[d] == TEST for d in dataset.qrels[q])][:n_test]
    unanswerable = [AnswerCase(q, dataset.unanswerable[q], [], frozenset(dataset.unanswerable_qrels[q]), False)
                    for q in sorted(dataset.unanswerable, key=_order)
                    if all(split[d] == TEST for d in dataset.unanswerable_qrels[q])][:n_unanswerable]
    return rows, answerable + unanswerable


def config(steps: int, max_length: int) -> TuneConfig:
    return from_dict({"learning_rate": 5e-4, "max_steps": steps, "batch_size": 2, "grad_accum": 1,
                      "max_length": max_length, "warmup_ratio": 0.1, "save_steps": 1000, "seed": 0,
                      "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}})


def ask_all(rt: Any, tests: list[AnswerCase], collection: str, generator: Any, top_k: int,
            max_tokens: int) -> list[CaseResult]:
    out = []
    for case in tests:
        started = time.perf_counter()
        answer = rt.ask(case.question, collection=collection, principal=OPERATOR, generator=generator, top_k=top_k,
                        reader=False, answerability=False, max_tokens=max_tokens)
        out.append(CaseResult(case, answer, time.perf_counter() - started))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=int, default=120, help="training rows (one per training paragraph)")
    parser.add_argument("--test", type=int, default=80, help="answerable quarter-3 test questions")
    parser.add_argument("--unanswerable", type=int, default=20, help="unanswerable quarter-3 test questions")
    parser.add_argument("--steps", type=int, default=60, help="optimiser steps of each training (batch 2)")
    parser.add_argument("--top-k", type=int, default=3, help="sources per prompt, in training and at test")
    parser.add_argument("--context-tokens", type=int, default=512, help="token budget of the sources")
    parser.add_argument("--gold-share", type=float, default=0.8, help="RAFT: rows whose prompt holds the gold")
    parser.add_argument("--max-tokens", type=int, default=48, help="answer tokens at most (every model)")
    parser.add_argument("--positions", default="rank,random", help="gold positions to train a RAG adapter for")
    args = parser.parse_args()

    from ragtune.generate.decoding import DecodingControls
    from ragtune.generate.local import TransformersGenerator

    started = time.perf_counter()
    rt = bench_engine(context_tokens=args.context_tokens, generator="smollm2")
    cache = rt.settings.resolved_cache_dir
    work = rt.settings.data_dir / "rag-format"
    dataset = load_dataset("squad", cache / "packages")
    collection, _ = index_dataset(rt, dataset)
    rows, tests = cases(dataset, args.train, args.test, args.unanswerable)
    console.print(f"{len(rows)} training rows, {len(tests)} test questions; collection {collection}")
    plain = TrainSet("squad-train-plain", None, hashlib.sha256(repr([r.content() for r in rows]).encode()).hexdigest(),
                     rows, [])
    base = resolve_base("smollm2", cache)

    def search(question: str, k: int) -> Any:
        return rt.search(question, collection=collection, top_k=k, principal=OPERATOR).hits

    trainings: list[tuple[str, TrainSet, Any]] = [("plain", plain, None)]
    formats: dict[str, Any] = {}
    prompt_lengths: list[int] = []
    for position in args.positions.split(","):
        fmt = RagFormat(collection, top_k=args.top_k, gold_share=args.gold_share,
                        context_tokens=args.context_tokens, max_tokens=args.max_tokens, gold_position=position)
        rag, trained = for_sources(plain, fmt, search, base.path)
        console.print(f"rag format, gold at {position}: " + describe(trained.details, fmt.top_k))
        prompt_lengths += [sum(len(m["content"]) for m in e.messages) for e in rag.train]
        trainings.append((_rag_name(position), rag, trained))
        formats[position] = trained.details
    max_length = 1024
    runs: dict[str, Any] = {}
    for name, data, prompt_format in trainings:
        t = time.perf_counter()
        record = start_run(base="smollm2", data=data, config=config(args.steps, max_length), data_dir=work,
                           cache_dir=cache, name=f"squad-{name}", prompt_format=prompt_format)
        runs[name] = {"run": record.run_id, "seconds": round(time.perf_counter() - t, 1),
                      "tokens_per_second": record.metrics.get("tokens_per_second"),
                      "first_loss": record.metrics.get("first_loss"), "last_loss": record.metrics.get("last_loss"),
                      "truncated_rows": record.metrics.get("data_truncated"), "adapter": record.adapter}
        console.print(f"trained {name}: {runs[name]}")
    # the plain adapter as trained records the chat format, which ask refuses: measured from a copy without it
    unrecorded = work / "plain-adapter-unrecorded"
    shutil.rmtree(unrecorded, ignore_errors=True)
    shutil.copytree(runs["plain"]["adapter"], unrecorded)
    (unrecorded / PROMPT_FILE).unlink()
    g = rt.settings.generation
    generators = {
        "base": rt.generator("smollm2"),
        "tuned_plain_rows": TransformersGenerator(base.path, adapter=unrecorded, base_name="smollm2",
                                                  max_time=g.timeout, controls=DecodingControls.of(g)),
        **{f"tuned_{name}": TransformersGenerator(base.path, adapter=Path(runs[name]["adapter"]), base_name="smollm2",
                                                  max_time=g.timeout, controls=DecodingControls.of(g))
           for name, _, _ in trainings[1:]},
    }
    results: dict[str, Any] = {}
    for name, generator in generators.items():
        t = time.perf_counter()
        scored = score_generator(ask_all(rt, tests, collection, generator, args.top_k, args.max_tokens))
        scored["seconds"] = round(time.perf_counter() - t, 1)
        results[name] = scored
        console.print(f"{name}: F1 {scored['f1']:.3f}")
    table = Table(title=f"SQuAD 2.0 quarter 3 over retrieval (top {args.top_k}, {args.context_tokens} source tokens)")
    for col in ("model", "F1", "EM", "citation precision", "groundedness", "no-answer acc.", "abstained", "p50 ms"):
        table.add_column(col, justify="right")
    for name, r in results.items():
        table.add_row(name, *(f"{r[k]:.3f}" if r[k] is not None else "-" for k in
                              ("f1", "exact_match", "citation_precision", "groundedness", "no_answer_accuracy")),
                      str(r["abstained"]), f"{r['p50_ms']:.0f}")
    console.print(table)
    write_result("rag_format", {
        "task": "SQuAD 2.0 dev, split by article (reader split_of): train quarters 0-1, test quarter 3",
        "settings": {**vars(args), "max_length": max_length, "train_config": to_dict(config(args.steps, max_length))},
        "rag_format": formats, "mean_prompt_chars": round(sum(prompt_lengths) / len(prompt_lengths)),
        "training": runs, "results": results,
        # which questions, without dataset content in the repository: their count and a hash of their ids
        "test_questions": {"count": len(tests), "sha256_of_sorted_ids": hashlib.sha256(
            "\n".join(sorted(c.qid for c in tests)).encode()).hexdigest()},
        "seconds": round(time.perf_counter() - started, 1),
    })


if __name__ == "__main__":
    main()
