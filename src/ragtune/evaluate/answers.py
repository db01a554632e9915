"""``ragtune eval answers``: each generator, side by side on the same questions.

Per generator:

* exact match and token F1 with the official SQuAD normalisation (lower case, no punctuation, no
  articles, single spaces), best over the gold answers; an abstention counts as the empty answer;
* abstention precision and recall, where the dataset has unanswerable questions (SQuAD 2.0);
* citation precision: a citation is correct when its chunk is a gold paragraph of the question or
  contains a gold answer;
* groundedness: the share of (non-abstaining) answers whose every sentence is supported;
* latency (p50/p95 of the whole ``ask``) and generation tokens/s;
* with a task spec (``task_spec``, ``--task-spec``), over the answerable questions: for a text
  task, ROUGE-L (best over the gold answers); for a json task, whose gold answers must be JSON (the
  first one is the reference), JSON validity, conformance to the spec's schema, the per-field
  metrics and a confusion summary per class field (``task_metrics``), the answer read as it is
  when it parses, else without its citation markers (``[1]`` is also a JSON array).

Questions are chosen deterministically: the first answerable ones in file order and, when the set
has them, as many unanswerable ones (``unanswerable_share``), interleaved.

Progress (``protocols.Progress``): the events of indexing the dataset (``evaluate.retrieval``),
then "answers": the questions asked so far with every generator (``total`` = generators ×
questions; ``detail`` the generator asking).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.errors import ConfigError
from ragtune.evaluate.task_metrics import score_json_task, strict_json
from ragtune.evaluate.task_spec import TaskSpec, load_task_spec
from ragtune.evaluate.text_metrics import exact_match, normalize_answer, rouge_l, token_f1
from ragtune.generate.grounding import strip_citations
from ragtune.models import Answer, Principal
from ragtune.observe.tracing import numbers, run_span, set_attributes
from ragtune.progress import emit
from ragtune.protocols import Progress


@dataclass(frozen=True)
class AnswerCase:
    qid: str
    question: str
    answers: list[str]
    gold_docs: frozenset[str]
    answerable: bool


def answer_cases(dataset: Any, limit: int, *, unanswerable_share: float = 0.5) -> list[AnswerCase]:
    n_unanswerable = round(limit * unanswerable_share) if dataset.unanswerable else 0
    answerable = [AnswerCase(q, text, dataset.answers.get(q, []), frozenset(dataset.qrels[q]), True)
                  for q, text in list(dataset.queries.items())[: limit - n_unanswerable]]
    unanswerable = [AnswerCase(q, text, [], frozenset(dataset.unanswerable_qrels.get(q, {})), False)
                    for q, text in list(dataset.unanswerable.items())[:n_unanswerable]]
    cases: list[AnswerCase] = []
    for i in range(max(len(answerable), len(unanswerable))):
        cases.extend(x[i] for x in (answerable, unanswerable) if i < len(x))
    return cases


@dataclass(frozen=True)
class CaseResult:
    case: AnswerCase
    answer: Answer
    seconds: float

    @property
    def prediction(self) -> str:
        return "" if self.answer.abstained else strip_citations(self.answer.text)

    @property
    def json_prediction(self) -> str:
        """The answer for a json task: as it is when it parses, else without citation markers."""
        if self.answer.abstained:
            return ""
        return self.answer.text if strict_json(self.answer.text)[0] else strip_citations(self.answer.text)


def json_gold(spec: TaskSpec, case: AnswerCase, dataset: str) -> Any:
    """The reference of an answerable question under a json task: its first gold answer, as JSON."""
    ok, value = strict_json(case.answers[0]) if case.answers else (False, None)
    if not ok:
        gold = repr(case.answers[0]) if case.answers else "no gold answer"
        raise ConfigError(f"task spec {spec.source}: a json task needs gold answers that are JSON, but question "
                          f"{case.qid!r} of {dataset} has {gold}")
    return value


def task_scores(results: Sequence[CaseResult], spec: TaskSpec, dataset: str = "the dataset") -> dict[str, Any]:
    """A task spec's metrics over the answerable questions (see the module docstring)."""
    answerable = [r for r in results if r.case.answerable]
    if spec.task == "text":
        return {"rouge_l": _mean([max((rouge_l(r.prediction, g) for g in r.case.answers), default=0.0)
                                  for r in answerable])}
    if spec.task != "json":
        raise ConfigError(f"task spec {spec.source}: eval answers scores answers to questions (a text or json "
                          f"task); a {spec.task} task is evaluated by `ragtune tune eval`")
    metrics, matrix = score_json_task(spec, [r.json_prediction for r in answerable],
                                      [json_gold(spec, r.case, dataset) for r in answerable])
    return {**metrics, "confusion": matrix}


def score_generator(results: Sequence[CaseResult], spec: TaskSpec | None = None) -> dict[str, Any]:
    answerable = [r for r in results if r.case.answerable]
    unanswerable = [r for r in results if not r.case.answerable]
    abstained = [r for r in results if r.answer.abstained]
    answered = [r for r in results if not r.answer.abstained and not r.answer.error]
    citations = correct = 0
    for r in results:
        golds = [g for g in (normalize_answer(a) for a in r.case.answers) if g]
        for c in r.answer.citations:
            citations += 1
            correct += c.uri in r.case.gold_docs or any(g in normalize_answer(c.text) for g in golds)
    latencies = [r.seconds * 1000 for r in results]
    speeds = [r.answer.usage["tokens_per_second"] for r in results if r.answer.usage.get("tokens_per_second")]
    true_abstentions = sum(1 for r in abstained if not r.case.answerable)
    return {
        "questions": len(results), "answerable": len(answerable), "unanswerable": len(unanswerable),
        "exact_match": _mean([exact_match(r.prediction, r.case.answers) for r in answerable]),
        "f1": _mean([token_f1(r.prediction, r.case.answers) for r in answerable]),
        # the official SQuAD 2.0 overall F1: an unanswerable question scores 1 when abstained
        "overall_f1": _mean([token_f1(r.prediction, r.case.answers if r.case.answerable else [])
                             for r in results]),
        "no_answer_accuracy": _mean([float(r.answer.abstained) for r in unanswerable]) if unanswerable else None,
        "abstained": len(abstained),
        "abstention_precision": true_abstentions / len(abstained) if abstained else None,
        "abstention_recall": true_abstentions / len(unanswerable) if unanswerable else None,
        "citation_precision": correct / citations if citations else None,
        "citations": citations,
        "groundedness": _mean([float(r.answer.grounded) for r in answered]) if answered else None,
        "errors": sum(1 for r in results if r.answer.error),
        "p50_ms": float(np.percentile(latencies, 50)) if latencies else None,
        "p95_ms": float(np.percentile(latencies, 95)) if latencies else None,
        "tokens_per_second": _mean(speeds) if speeds else None,
        **(task_scores(results, spec) if spec is not None else {}),
    }


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def evaluate_answers(rt: Any, spec: str, *, generators: Sequence[str], limit: int = 20,
                     unanswerable_share: float = 0.5, collection: str | None = None,
                     progress: Progress | None = None,
                     keep_answers: bool = False, subset_corpus: bool = False,
                     task_spec: str | Path | Mapping[str, Any] | TaskSpec | None = None) -> dict[str, Any]:
    """Index the dataset (reusing stored embeddings), then ask every question with every generator.

    ``subset_corpus`` indexes only the paragraphs of the chosen questions (quick checks, tests).
    ``task_spec``: a spec file, its content as a mapping, or a ``TaskSpec``."""
    import time

    from ragtune.evaluate.datasets import load_dataset
    from ragtune.evaluate.retrieval import eval_collection, index_dataset

    task = load_task_spec(task_spec) if task_spec is not None else None  # a bad spec fails before any work
    if task is not None and task.task == "tool_call":
        task_scores([], task)  # refused, with the reason
    dataset = load_dataset(spec, rt.settings.resolved_cache_dir / "packages",
                           limit_queries=limit if subset_corpus else None, subset_corpus=subset_corpus)
    cases = answer_cases(dataset, limit, unanswerable_share=unanswerable_share)
    if task is not None and task.task == "json":
        for case in cases:
            if case.answerable:
                json_gold(task, case, dataset.name)  # before indexing: a set without JSON answers is refused
    if subset_corpus and collection is None:
        collection = eval_collection(dataset.name, rt.embedder.name, f"-sub{limit}")
    principal = Principal.system()
    # one trace: an ``evaluation`` span, the indexing's ingest and an ``evaluate`` span per generator, its asks below
    with run_span(rt.tracing, "evaluation", {"ragtune.evaluation.type": "answers", "ragtune.dataset": dataset.name,
                                             "ragtune.evaluation.queries": len(cases)},
                  f"answers on {dataset.name}: {len(cases)} questions, {', '.join(generators)}") as evaluation:
        name, _ = index_dataset(rt, dataset, collection, progress)
        set_attributes(evaluation, {"ragtune.collection": name, "gen_ai.data_source.id": name})
        out: dict[str, Any] = {"dataset": dataset.name, "collection": name, "questions": len(cases),
                               "generators": {}}
        if task is not None:
            out["task"] = task.to_dict()
        examples: dict[str, list[dict[str, Any]]] = {}
        total = len(generators) * len(cases)
        for g, gen in enumerate(generators):
            emit(progress, "answers", g * len(cases), total, detail=gen)
            rt.generator(gen)  # load before timing
            with run_span(rt.tracing, "evaluate", {"ragtune.model": gen, "gen_ai.request.model": gen,
                                                   "ragtune.collection": name}) as span:
                results = []
                for i, case in enumerate(cases):
                    started = time.perf_counter()
                    answer = rt.ask(case.question, collection=name, generator=gen, principal=principal)
                    results.append(CaseResult(case, answer, time.perf_counter() - started))
                    emit(progress, "answers", g * len(cases) + i + 1, total, detail=gen)
                out["generators"][gen] = score_generator(results, task)
                set_attributes(span, numbers("ragtune.evaluation.", out["generators"][gen]))
            if keep_answers:
                examples[gen] = [{"question": r.case.question, "gold": r.case.answers, "answer": r.answer.text,
                                  "abstained": r.answer.abstained, "grounded": r.answer.grounded,
                                  "support": r.answer.usage.get("question_support"),
                                  "citations": [c.uri for c in r.answer.citations]} for r in results]
    if keep_answers:
        out["answers"] = examples
    return out
