"""Synthetic reader examples (``ragtune.finetune.reader_synthetic``) written by SmolLM2 from held-out
SQuAD paragraphs: how many candidates give a question, at what cost, and how many questions are good.

    nice -n 10 python benchmarks/reader_synthetic.py [--n 300] [--reference 300]

* Collection: the SQuAD 2.0 dev paragraphs of the reader's test quarter (``split_of`` quarter 3,
  385 paragraphs, one chunk each, "title\\nparagraph" as ``index_dataset`` stores them). No reader
  or reranker trained on them.
* Generation: ``write_synthetic`` with the packaged SmolLM2 (greedy, CPU) until ``--n`` questions
  are kept; yield = kept / candidates tried, seconds per kept question (wall clock of the whole
  run, searches for the unanswerable pairings included) and per generation.
* "Good", by two cheap automatic checks on every kept question, each beside the same check on
  real SQuAD questions of the same paragraphs (``--reference`` of them) so the numbers have a scale:
  - self-retrieval: the question's own paragraph is among the top 5 (and top 1) hybrid hits;
  - reader agreement: the project's trained reader (benchmark project, trained on quarters 0-1,
    never on these paragraphs), given the question and its own paragraph, reads the synthetic
    answer: exact match and token F1 against it (for SQuAD questions: against their gold answers).
  Both are by kind of answer candidate (date, year, number, names, quoted, name). The reader's
  no-answer decision (its calibrated threshold) on the answerable questions and on the
  unanswerable pairings says how well the pairings separate from the questions.
* Not measured: whether training on these examples makes a better reader. That needs two
  trainings (about an hour each on 2 cores) or a continuation from the trained reader, which
  ``train_reader`` cannot do yet (its ``_fit`` always starts from ``ReaderNet.fresh``): see the
  result's ``training_comparison``.

Writes benchmarks/results/reader_synthetic.json: counts and rates only, no SQuAD text and no
generated question (they are made of SQuAD text).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from common import bench_engine, percentiles, write_result
from rich.console import Console

from ragtune.evaluate.answers import token_f1
from ragtune.evaluate.datasets import RetrievalDataset, load_dataset
from ragtune.evaluate.retrieval import index_dataset
from ragtune.finetune.reader import TEST, split_of
from ragtune.finetune.reader_synthetic import answer_candidates, write_synthetic
from ragtune.models import Completion, Message, Principal, ProgressEvent

console = Console()
OPERATOR = Principal.system()
COLLECTION = "reader-synthetic-squad-test"
KIND_OF_HINT = {"When": "date", "In what year": "year", "How many": "number", "How much": "number",
                "What percentage": "number"}


class TimedGenerator:
    """The generator under test, timing each call and noting the kind of candidate asked about (by
    the question word the prompt gives; none: a name or quoted term)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.seconds: list[float] = []
        self.kinds: Counter[str] = Counter()

    def generate(self, messages: Sequence[Message], *, max_tokens: int = 256,
                 on_token: Callable[[str], None] | None = None) -> Completion:
        prompt = messages[-1].content
        hint = prompt.split("Start with: ", 1)[1].strip() if "Start with: " in prompt else ""
        self.kinds[KIND_OF_HINT.get(hint, "names/quoted/name")] += 1
        started = time.perf_counter()
        try:
            return self.inner.generate(messages, max_tokens=max_tokens)
        finally:
            self.seconds.append(time.perf_counter() - started)


def test_quarter(cache: Any) -> tuple[RetrievalDataset, list[tuple[str, list[str], str]]]:
    """The test quarter's paragraphs, and its answerable questions as (question, answers, paragraph id)."""
    full = load_dataset("squad", cache)
    docs = {d: doc for d, doc in full.corpus.items() if split_of(doc.title) == TEST}
    questions = [(text, full.answers[q], next(iter(full.qrels[q]))) for q, text in full.queries.items()
                 if set(full.qrels[q]) <= set(docs)]
    return RetrievalDataset("squad-test-quarter", docs, {}, {}), questions


def checks(rt: Any, reader: Any, question: str, uri: str, context: str, answers: list[str]) -> dict[str, float]:
    hits = rt.search(question, collection=COLLECTION, top_k=5, mode="hybrid", principal=OPERATOR,
                     reranker=False).hits
    uris = [h.uri for h in hits]
    row = {"top1": float(uris[:1] == [uri]), "top5": float(uri in uris)}
    if reader is not None:
        span = reader.read(question, [context])
        text = span.text if span is not None else ""
        row["reader_f1"] = token_f1(text, answers)
        row["reader_exact"] = float(any(" ".join(text.lower().split()) == " ".join(a.lower().split())
                                        for a in answers))
        row["reader_says_no_answer"] = says_no_answer(reader, span)
    return row


def says_no_answer(reader: Any, span: Any) -> float:
    """1.0 when the reader's no-answer score is above its calibrated threshold (it would abstain)."""
    return float(span is None or span.no_answer > reader.abstention.no_answer_above)


def summary(rows: list[dict[str, float]]) -> dict[str, Any]:
    if not rows:
        return {"n": 0}
    return {"n": len(rows), **{key: round(statistics.mean(r[key] for r in rows), 4) for key in rows[0]}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=300, help="questions to keep")
    parser.add_argument("--reference", type=int, default=300, help="real SQuAD questions checked the same way")
    parser.add_argument("--generator", default="smollm2")
    args = parser.parse_args()
    started = time.perf_counter()
    out: dict[str, Any] = {"collection": "SQuAD 2.0 dev paragraphs of the reader's test quarter (split_of == test)",
                           "generator": args.generator, "n_requested": args.n,
                           # timings depend on what else runs on the machine: the load when it started
                           "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    with bench_engine("minilm") as rt:
        cache = rt.settings.resolved_cache_dir / "packages"
        dataset, questions = test_quarter(cache)
        index_dataset(rt, dataset, COLLECTION)
        out["paragraphs"] = len(dataset.corpus)
        out["paragraphs_with_a_candidate"] = sum(1 for d in dataset.corpus.values()
                                                 if answer_candidates(f"{d.title}\n{d.text}"))
        reader = rt.reader_model("latest")
        out["reader"] = reader.name if reader is not None else None
        generator = TimedGenerator(rt.generator(args.generator))
        generator.inner.generate([Message("user", "Hello")], max_tokens=2)  # load and warm up, untimed

        last = [0.0]

        def progress(event: ProgressEvent) -> None:
            if time.perf_counter() - last[0] > 30 or event.done == event.total:
                last[0] = time.perf_counter()
                console.print(f"[dim]{event.done}/{event.total} questions, {event.detail}, "
                              f"{time.perf_counter() - started:.0f}s[/]")

        began = time.perf_counter()
        run = write_synthetic(rt, COLLECTION, generator, limit=args.n, progress=progress)
        seconds = time.perf_counter() - began
        kept = [e for e in run.examples if e.answer_start is not None]
        out["generation"] = {
            "candidates_tried": run.tried, "questions_kept": len(kept),
            "unanswerable_pairings": len(run.examples) - len(kept),
            "yield": round(len(kept) / max(1, run.tried), 4),
            "rejected": dict(run.rejected),
            "seconds": round(seconds, 1),
            "seconds_per_kept_question": round(seconds / max(1, len(kept)), 2),
            "generation_ms": percentiles([s * 1000 for s in generator.seconds]),
            "tried_by_kind": dict(generator.kinds),
        }

        uri_of = {f"{d.title}\n{d.text}": d.id for d in dataset.corpus.values()}
        by_kind: dict[str, list[dict[str, float]]] = {}
        for e in kept:
            kind = next(c.kind for c in answer_candidates(e.context) if c.start == e.answer_start)
            by_kind.setdefault(kind, []).append(checks(rt, reader, e.question, uri_of[e.context], e.context,
                                                       [e.answer]))
        out["synthetic"] = summary([r for rows in by_kind.values() for r in rows])
        out["synthetic_by_kind"] = {k: summary(v) for k, v in sorted(by_kind.items())}
        negatives = [e for e in run.examples if e.answer_start is None]
        out["unanswerable_pairings"] = {
            "n": len(negatives),
            # the reader's view of them: how often its no-answer score says "not here" (compare with
            # reader_says_no_answer of the answerable synthetic questions)
            "reader_says_no_answer": (round(statistics.mean(says_no_answer(reader, reader.read(e.question,
                                                                                               [e.context]))
                                                            for e in negatives), 4)
                                      if reader is not None and negatives else None),
        }

        step = max(1, len(questions) // max(1, args.reference))
        sample = questions[::step][: args.reference]
        contexts = {d.id: f"{d.title}\n{d.text}" for d in dataset.corpus.values()}
        out["squad_reference"] = summary([checks(rt, reader, q, uri, contexts[uri], answers)
                                          for q, answers, uri in sample])
    out["training_comparison"] = (
        "not run. Needed: two readers trained the same way on the public training split (and the same "
        "seed and steps), one with the synthetic examples of a collection added (`ragtune reader train "
        "-c COLLECTION --synthetic N`), both scored by benchmarks/reader_quality.py on questions about that "
        "collection which neither saw (here: SQuAD test-quarter questions over the test-quarter paragraphs, "
        "the synthetic examples written from the same paragraphs but never from their questions). About an "
        "hour per training on 2 cores; a continuation from the trained reader (train_reader start_from) "
        "would make it a few minutes.")
    out["seconds"] = round(time.perf_counter() - started, 1)
    for key in ("generation", "synthetic", "synthetic_by_kind", "unanswerable_pairings", "squad_reference"):
        console.print(f"{key}: {out[key]}")
    console.print(f"wrote {write_result('reader_synthetic', out)}")


if __name__ == "__main__":
    main()
