"""Conversation-aware retrieval: follow-up questions searched alone against searched with the
conversation, on the multi-turn SQuAD 2.0 dev set (``ragtune.evaluate.conversations``).

    python benchmarks/conversation_retrieval.py [--limit N] [--rewrite-limit 100] [--modes bm25 dense hybrid]

Methods (``[retrieval] conversation``): ``last`` (the follow-up alone), ``concat``, ``rewrite``
and ``rewrite+concat`` (``generate/conversation.py``), plus a reference row: the SQuAD question as
written, before its subject was replaced by a pronoun. The cheap methods run on every case in
every mode; the rewrite methods run SmolLM2 (seconds per question on 2 shared cores), so they run
on ``--rewrite-limit`` cases spread evenly over the set, in the default mode, and the cheap
methods are scored on those same cases too, so each comparison is like for like. A rewrite made
for ``rewrite`` is reused by ``rewrite+concat``, its generation time counted in both.

Latency per question: building the query (embedding the question and earlier turns, the rewrite)
plus the search itself (``timings_ms["search"]``, and the searcher's own query embedding for a
query without a vector), after 50 untimed warm-up searches. The SQuAD collection must be indexed
first (benchmarks/populate.py). Writes benchmarks/results/conversation_retrieval.json.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from common import populated, write_result
from rich.console import Console
from rich.table import Table

from ragtune.evaluate.conversations import ConversationCase, load_conversations
from ragtune.evaluate.metrics import retrieval_metrics
from ragtune.models import Completion, Message, Principal

console = Console()
MEASURES = ["R@1", "R@5", "nDCG@10"]
K = 10
CHEAP = ("last", "concat")
REWRITES = ("rewrite", "rewrite+concat")
REFERENCE = "standalone (reference)"


class MemoGenerator:
    """The rewrite generator, remembering each reply and how long it took, so ``rewrite+concat``
    reuses the rewrite ``rewrite`` made (``seconds`` of a remembered reply is still counted)."""

    def __init__(self, generator: Any) -> None:
        self.generator = generator
        self.name = generator.name
        self.replies: dict[tuple[tuple[str, str], ...], tuple[Completion, float]] = {}
        self.seconds = 0.0  # of the last call, remembered or not

    def generate(self, messages: Sequence[Message], *, max_tokens: int = 256,
                 on_token: Callable[[str], None] | None = None) -> Completion:
        key = tuple((m.role, m.content) for m in messages)
        if key not in self.replies:
            started = time.perf_counter()
            completion = self.generator.generate(messages, max_tokens=max_tokens)
            self.replies[key] = (completion, time.perf_counter() - started)
        completion, self.seconds = self.replies[key]
        return completion


def run_method(rt: Any, collection: str, cases: list[ConversationCase], method: str, mode: str,
               generator: MemoGenerator | None) -> tuple[dict[str, Any], dict[str, dict[str, float]], list[float]]:
    """The row of ``method`` on ``cases``, with its run and per-question latencies."""
    principal = Principal.system()
    run: dict[str, dict[str, float]] = {}
    latencies: list[float] = []
    rewritten = 0
    for case in cases:
        if generator is not None:
            generator.seconds = 0.0
        started = time.perf_counter()
        if method == REFERENCE:
            text, vector = case.original, None
        else:
            asked = rt.conversation_query(case.question, case.history, method=method, mode=mode, generator=generator)
            text, vector = asked.text, asked.vector
            rewritten += asked.rewritten is not None
        built = time.perf_counter() - started
        if generator is not None and generator.seconds and method == "rewrite+concat":
            built += generator.seconds  # the remembered rewrite's own time
        res = rt.search(text, collection=collection, top_k=K, mode=mode, principal=principal, query_vector=vector)
        latencies.append(built * 1000 + res.timings_ms.get("search", 0.0) + res.timings_ms.get("embed", 0.0))
        run[case.id] = {h.uri: h.score for h in res.hits}
    row = score(method, mode, cases, run, latencies)
    if method in REWRITES:
        row["rewrites_kept"] = rewritten
    return row, run, latencies


def score(method: str, mode: str, cases: list[ConversationCase], run: dict[str, dict[str, float]],
          latencies: list[float]) -> dict[str, Any]:
    qrels = {c.id: {c.target: 1} for c in cases}
    return {"method": method, "mode": mode, "questions": len(cases), **retrieval_metrics(qrels, run, measures=MEASURES),
            "p50_ms": float(np.percentile(latencies, 50)), "p95_ms": float(np.percentile(latencies, 95))}


def show(title: str, rows: list[dict[str, Any]]) -> None:
    table = Table(title=title)
    for col in ("method", "mode", "questions", *MEASURES, "p50 ms"):
        table.add_column(col, justify="left" if col in ("method", "mode") else "right")
    for r in rows:
        table.add_row(r["method"], r["mode"], str(r["questions"]), *(f"{r[m]:.4f}" for m in MEASURES),
                      f"{r['p50_ms']:.1f}")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=None, help="Only the first N conversations.")
    # 100: ~45 s of SmolLM2 on 2 idle cores, but 15-30 min when they are shared with a training run
    parser.add_argument("--rewrite-limit", type=int, default=100, help="Conversations the rewrite methods run on.")
    parser.add_argument("--modes", nargs="+", default=["bm25", "dense", "hybrid"])
    parser.add_argument("--generator", default="smollm2")
    parser.add_argument("--out", default="conversation_retrieval")
    args = parser.parse_args()

    rt, collection, squad, _, _ = populated("squad", None)
    conversations = load_conversations("squad", rt.settings.resolved_cache_dir / "packages", limit=args.limit)
    cases = conversations.cases
    step = max(1, len(cases) // args.rewrite_limit)
    sample = cases[::step][:args.rewrite_limit]
    default_mode = rt.settings.retrieval.default_mode
    # how often the conversation already asked about the target paragraph (SQuAD's questions come
    # paragraph by paragraph): then the earlier turns carry more than the subject
    paragraph_of = {text: next(iter(squad.qrels[q])) for q, text in squad.queries.items()}
    other = [c for c in cases
             if not any(paragraph_of.get(m.content) == c.target for m in c.history if m.role == "user")]
    same_paragraph = len(cases) - len(other)
    console.print(f"{len(cases)} conversations ({conversations.stats()['earlier_user_turns']} earlier user turns); "
                  f"rewrite methods on {len(sample)}; {same_paragraph} with an earlier turn about the target paragraph")

    principal = Principal.system()
    for case in cases[:50]:  # untimed warm-up of the query embedder and the database
        rt.search(case.question, collection=collection, top_k=K, mode=default_mode, principal=principal)

    everything: list[dict[str, Any]] = []
    elsewhere: list[dict[str, Any]] = []  # the cases whose earlier turns asked only of other paragraphs
    at = {c.id: i for i, c in enumerate(cases)}
    for mode in args.modes:
        for method in (REFERENCE, *CHEAP):
            row, run, latencies = run_method(rt, collection, cases, method, mode, None)
            everything.append(row)
            elsewhere.append(score(method, mode, other, {c.id: run[c.id] for c in other},
                                   [latencies[at[c.id]] for c in other]))
            console.print(f"all {mode} {method}: R@5 {row['R@5']:.4f}")
    show(f"all {len(cases)} conversations", everything)
    show(f"the {len(other)} conversations whose earlier turns are about other paragraphs", elsewhere)

    generator = MemoGenerator(rt.generator(args.generator))
    generator.generate([Message("user", "Hello")], max_tokens=2)  # load the model untimed
    subset: list[dict[str, Any]] = []
    for method in (REFERENCE, *CHEAP, *REWRITES):
        started = time.perf_counter()
        subset.append(run_method(rt, collection, sample, method, default_mode,
                                 generator if method in REWRITES else None)[0])
        console.print(f"subset {method}: R@5 {subset[-1]['R@5']:.4f} ({time.perf_counter() - started:.0f}s)")
    spread = "all" if step == 1 else f"every {step}th"
    show(f"{len(sample)} conversations ({spread}), {default_mode}, rewrites by {args.generator}", subset)

    path = write_result(args.out, {
        "dataset": conversations.name, "conversations": len(cases), "stats": conversations.stats(),
        "same_paragraph_history": same_paragraph, "rewrite_subset": len(sample), "subset_step": step,
        "generator": args.generator, "settings": {k: getattr(rt.settings.retrieval, k) for k in (
            "conversation", "conversation_turns", "conversation_decay", "rewrite_max_tokens", "default_mode")},
        "other_paragraph_history": len(other), "all": everything, "other_paragraph": elsewhere,
        "subset": subset,
    })
    console.print(f"wrote {path}")
    rt.close()


if __name__ == "__main__":
    main()
