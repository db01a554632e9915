"""Benchmark-driven evaluation of a training run: the base model and the base + adapter, side by
side on the run's held-out rows (``data/eval.jsonl``), with the same greedy decoding.

Both sides are ragtune's own generators, built by ``generate.registry.make_generator`` from the
run's base model folder, once without and once with ``generator_adapter``: what is measured is what
``ask`` would serve. Measured on each side:

* held-out loss and perplexity: mean negative log-likelihood per completion token (the assistant
  turns only, rendered with the base model's chat template exactly as training renders them:
  ``trainset.sft_features``), over every evaluated row, token-weighted; perplexity is its exp.
  Rows are not cut to the run's ``max_length`` (that is a training budget), only to the model's
  context window;
* task metrics per reply (``scoring``): every assistant turn of a row is one case, prompted with
  the turns before it (the reference turns, not the model's own); a turn that calls tools is a
  ``tool_call`` case, a turn whose text is a JSON object or array a ``json`` case, any other turn
  a ``text`` case. A preference row is evaluated on its chosen reply.

Each metric is the mean over the cases it applies to (None when none does). A task spec
(``evaluate.task_spec``, ``--task-spec``) scores the cases of its kind by what the task asks: for a
json task, schema conformance to the spec's schema (enums included) instead of one inferred from the
reference, and per-field metrics named ``field.<name>.<metric>`` (``exact``, ``f1``, ``accuracy``,
and ``macro_f1`` over the classes of an ``accuracy`` field), with a confusion summary per class field.

The rows are the run's held-out rows, or any others given (``examples``: a registered evaluation set,
``tune eval --set``; ``data`` names them in the report, and ``rows_hash`` tells apart reports on
different rows). The report goes to ``eval.json`` in the run folder (with every case's outputs, for
reading) and is what ``finetune.lifecycle.registry`` logs (``eval.<metric>``) and gates promotions on.
Concessions: one prompt at a time (no batched generation), and cases of one row share its context,
so they are not independent samples.

Progress (``protocols.Progress``): "evaluation", the cases generated so far on both sides (``total``
= 2 × cases: base first, then tuned; ``detail`` the side).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.errors import ConfigError, NotFoundError, TrainingError
from ragtune.evaluate.task_metrics import Confusion, class_labels, class_summary, mean_scores
from ragtune.evaluate.task_spec import TaskSpec, load_task_spec
from ragtune.finetune.data.examples import Example, canonical_json, template_messages
from ragtune.finetune.lora import runs, scoring
from ragtune.finetune.lora.trainset import IGNORE, read_rows, sft_features
from ragtune.generate.registry import make_generator
from ragtune.models import Message
from ragtune.observe.tracing import Tracing, numbers, run_span, set_attributes
from ragtune.progress import emit
from ragtune.protocols import Generator, Progress
from ragtune.settings import Settings

REPORT_FILE = "eval.json"
HELD_OUT = "held-out rows"  # what ``data`` says of a report on the run's own held-out rows
# Every metric the report holds without a task spec, and whether higher is better (the table's
# colours). A spec adds ``field.<name>.<metric>`` metrics, all better higher.
METRICS: dict[str, bool] = {
    "loss": False, "perplexity": False,
    "exact_match": True, "token_f1": True, "rouge_l": True,
    "json_valid": True, "schema_valid": True,
    "tool_name_accuracy": True, "tool_args_accuracy": True, "tool_args_f1": True,
}


def higher_is_better(metric: str) -> bool:
    return METRICS.get(metric, True)


def metric_names(*sides: dict[str, float | None]) -> list[str]:
    """``METRICS`` in order, then the others the sides hold (a spec's field metrics), sorted."""
    extra = sorted({name for side in sides for name in side} - set(METRICS))
    return [*METRICS, *extra]


@dataclass(frozen=True)
class EvalCase:
    """One reference assistant turn and the messages before it."""

    row: int  # the row's line in its dataset file
    turn: int  # index of the turn among the row's rendered messages
    kind: str  # text | json | tool_call
    messages: tuple[Message, ...]
    reference: str  # the turn as the model is trained to write it
    calls: tuple[dict[str, Any], ...] = ()
    tools: tuple[dict[str, Any], ...] | None = None
    value: Any = None  # the reference JSON of a json case

    def score(self, output: str, spec: TaskSpec | None = None) -> dict[str, float]:
        if self.kind == "tool_call":
            return scoring.tool_call_scores(output, list(self.calls), self.tools)
        if self.kind == "json":
            return scoring.json_scores(output, self.value, spec)
        return scoring.text_scores(output, self.reference)

    def labels(self, output: str, spec: TaskSpec | None) -> dict[str, tuple[str, str]]:
        """``field -> (reference, predicted)`` class labels of a json case under a json task spec."""
        if self.kind != "json" or spec is None or spec.task != "json":
            return {}
        return class_labels(spec, output, self.value)


@dataclass(frozen=True)
class EvalReport:
    run_id: str
    run_dir: str
    base: str
    adapter: str
    rows: int
    rows_hash: str  # sha256 of the evaluated rows: two reports compare only on the same rows
    cases: dict[str, int]  # count by kind
    max_new_tokens: int
    base_metrics: dict[str, float | None]
    tuned_metrics: dict[str, float | None]
    details: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    created_at: str = ""
    decoding: str = "greedy"
    data: str = HELD_OUT  # which rows: the run's held-out rows, or "eval set NAME vN"
    task: dict[str, Any] | None = None  # the task spec scored by (TaskSpec.to_dict), if any
    confusion: dict[str, Confusion] = field(default_factory=dict)  # "base"/"tuned" -> field -> gold -> predicted

    @property
    def delta(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name in metric_names(self.base_metrics, self.tuned_metrics):
            a, b = self.base_metrics.get(name), self.tuned_metrics.get(name)
            out[name] = None if a is None or b is None else b - a
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "run_dir": self.run_dir, "base": self.base, "adapter": self.adapter,
            "rows": self.rows, "rows_hash": self.rows_hash, "cases": self.cases,
            "decoding": self.decoding, "max_new_tokens": self.max_new_tokens, "created_at": self.created_at,
            "data": self.data, "task": self.task,
            "metrics": {"base": self.base_metrics, "tuned": self.tuned_metrics, "delta": self.delta},
            "confusion": self.confusion, "timings": self.timings, "details": self.details,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalReport:
        return cls(run_id=data["run_id"], run_dir=data["run_dir"], base=data["base"], adapter=data["adapter"],
                   rows=data["rows"], rows_hash=data["rows_hash"], cases=data["cases"],
                   max_new_tokens=data["max_new_tokens"], base_metrics=data["metrics"]["base"],
                   tuned_metrics=data["metrics"]["tuned"], details=data.get("details", []),
                   timings=data.get("timings", {}), created_at=data.get("created_at", ""),
                   decoding=data.get("decoding", "greedy"), data=data.get("data", HELD_OUT),
                   task=data.get("task"), confusion=data.get("confusion", {}))


# -- which run --------------------------------------------------------------------------------------
def resolve_run(ref: str | Path, runs_dir: Path) -> Path:
    """A run folder from a path, a run id (``<name>-<timestamp>``) or a run name (its newest
    completed run)."""
    path = Path(ref).expanduser()
    if (path / "run.json").is_file():
        return path.resolve()
    if (runs_dir / str(ref) / "run.json").is_file():
        return (runs_dir / str(ref)).resolve()
    completed = [r for r in runs.list_runs(runs_dir, str(ref)) if r.status == "completed"]
    if completed:
        return Path(completed[-1].path)
    raise NotFoundError(f"no training run {str(ref)!r}: neither a run folder, a run id in {runs_dir} nor the "
                        "name of a completed run (see `ragtune tune runs`)")


def completed_record(run_dir: Path) -> Any:
    """The run's record, refused unless the run completed with an adapter."""
    status = runs.read_status(run_dir)["status"]  # marks a killed run failed first
    record = runs.read_record(run_dir)
    if record is None:
        raise NotFoundError(f"{run_dir} is not a training run (run.json missing)")
    if status != "completed" or record.status != "completed":
        why = f": {record.error}" if record.error else ""
        raise TrainingError(run_dir, f"the run is {record.status if status == 'completed' else status}{why}; "
                                     "only a completed run has an adapter to evaluate, register or promote")
    if not record.adapter or not (Path(record.adapter) / "adapter_config.json").is_file():
        raise TrainingError(run_dir, f"the completed run has no adapter at {record.adapter}")
    return record


# -- cases ------------------------------------------------------------------------------------------
def as_sft(example: Example) -> Example:
    """A preference row as the conversation that ends with its chosen reply."""
    if example.chosen is None:
        return example
    return Example(example.line, [*example.messages, example.chosen], example.tools)


def eval_cases(examples: Sequence[Example]) -> list[EvalCase]:
    cases: list[EvalCase] = []
    for raw in examples:
        example = as_sft(raw)
        rendered = template_messages(example)  # may add a system turn declaring the tools
        sources = iter(m for m in example.messages if m["role"] == "assistant")
        for i, message in enumerate(rendered):
            if message["role"] != "assistant":
                continue
            source = next(sources)
            prompt = tuple(Message(role=m["role"], content=m["content"]) for m in rendered[:i])
            if not prompt:
                continue
            calls = scoring.reference_calls(source)
            value = None if calls else scoring.json_reference(message["content"])
            kind = "tool_call" if calls else "json" if value is not None else "text"
            cases.append(EvalCase(example.line, i, kind, prompt, message["content"], tuple(calls),
                                  tuple(example.tools) if example.tools else None, value))
    return cases


def rows_hash(examples: Sequence[Example]) -> str:
    digest = hashlib.sha256()
    for e in examples:
        digest.update(canonical_json(e.content()).encode("utf-8") + b"\n")
    return digest.hexdigest()


# -- measuring --------------------------------------------------------------------------------------
def heldout_loss(generator: Generator, examples: Sequence[Example]) -> tuple[float | None, int]:
    """Mean NLL per completion token of ``examples`` under the generator's model, and the number
    of tokens; ``(None, 0)`` for a generator without a local model (an HTTP endpoint)."""
    model, tokenizer = getattr(generator, "model", None), getattr(generator, "tokenizer", None)
    if model is None or tokenizer is None:
        return None, 0
    import torch

    window = int(getattr(generator, "context_window", 2048))
    total, count = 0.0, 0
    with torch.inference_mode():
        for example in examples:
            features = sft_features(tokenizer, as_sft(example), window)
            ids = torch.tensor([features.input_ids])
            labels = torch.tensor(features.labels[1:])
            logits = model(input_ids=ids).logits[0, :-1].float()
            mask = labels != IGNORE
            if not bool(mask.any()):
                continue
            logprobs = torch.log_softmax(logits[mask], dim=-1)
            total -= float(logprobs.gather(1, labels[mask].unsqueeze(1)).sum())
            count += int(mask.sum())
    return (total / count if count else None), count


@dataclass(frozen=True)
class Side:
    """One side's results: metrics, each case's output and scores, timings and the class confusion."""

    metrics: dict[str, float | None]
    outputs: list[tuple[str, dict[str, float]]]
    timings: dict[str, float]
    confusion: Confusion


def _side(generator: Generator, cases: Sequence[EvalCase], examples: Sequence[Example], *, max_new_tokens: int,
          label: str, progress: Progress | None, spec: TaskSpec | None, before: int = 0) -> Side:
    """One side's results; ``before``: the cases the other side evaluated first."""
    emit(progress, "evaluation", before, 2 * len(cases), detail=f"{label}: held-out loss")
    started = time.perf_counter()
    loss, tokens = heldout_loss(generator, examples)
    loss_seconds = time.perf_counter() - started
    outputs: list[tuple[str, dict[str, float]]] = []
    labels: list[dict[str, tuple[str, str]]] = []
    generated, gen_seconds = 0, 0.0
    for n, case in enumerate(cases, start=1):
        completion = generator.generate(list(case.messages), max_tokens=max_new_tokens)
        generated += completion.completion_tokens
        gen_seconds += completion.seconds
        outputs.append((completion.text, case.score(completion.text, spec)))
        labels.append(case.labels(completion.text, spec))
        emit(progress, "evaluation", before + n, 2 * len(cases), detail=label)
    # every metric the spec names is reported, None when no case measured it
    named = spec.field_metric_names() if spec is not None else []
    metrics: dict[str, float | None] = dict.fromkeys([*METRICS, *named])
    metrics["loss"] = loss
    metrics["perplexity"] = math.exp(loss) if loss is not None else None
    metrics.update(mean_scores(scores for _, scores in outputs))
    classes, matrix = class_summary(labels)
    metrics.update(classes)
    timings = {"loss_seconds": loss_seconds, "loss_tokens": float(tokens), "generation_seconds": gen_seconds,
               "generated_tokens": float(generated),
               "tokens_per_second": generated / gen_seconds if gen_seconds > 0 else 0.0}
    return Side(metrics, outputs, timings, matrix)


def build_generators(record: Any, settings: Settings) -> tuple[Generator, Generator]:
    """The base model and base + adapter, built as ``ask`` builds them."""
    base = make_generator(record.base_path, settings.replace(generator_adapter=None))
    tuned = make_generator(record.base_path, settings.replace(generator_adapter=Path(record.adapter)))
    return base, tuned


def check_spec_applies(spec: TaskSpec, cases: Sequence[EvalCase], data: str) -> None:
    """A spec none of whose cases is of its kind would measure nothing: refused rather than silently empty."""
    if not any(c.kind == spec.task for c in cases):
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(Counter(c.kind for c in cases).items())) or "none"
        raise ConfigError(f"task spec {spec.source}: it declares a {spec.task} task, but no case of the {data} "
                          f"is one (cases: {kinds}); a json case is a reply whose reference is a JSON object or "
                          "array, a tool_call case one whose reference calls tools")


@dataclass(frozen=True)
class Comparison:
    """Base and tuned side by side on the same cases: what a report holds besides the run."""

    cases: list[EvalCase]
    base: Side
    tuned: Side

    @property
    def details(self) -> list[dict[str, Any]]:
        return [{"row": c.row, "turn": c.turn, "kind": c.kind, "reference": c.reference,
                 "base": {"output": b[0], **b[1]}, "tuned": {"output": t[0], **t[1]}}
                for c, b, t in zip(self.cases, self.base.outputs, self.tuned.outputs, strict=True)]

    @property
    def timings(self) -> dict[str, float]:
        return {**{f"base_{k}": v for k, v in self.base.timings.items()},
                **{f"tuned_{k}": v for k, v in self.tuned.timings.items()}}


def compare(examples: Sequence[Example], base: Generator, tuned: Generator, *, spec: TaskSpec | None = None,
            max_new_tokens: int = 128, progress: Progress | None = None, data: str = HELD_OUT,
            tracing: Tracing | None = None) -> Comparison:
    """Both generators on every case of ``examples``, scored by ``spec`` where its kind applies;
    with ``tracing`` each side is an ``evaluate`` span with its metrics and timings."""
    cases = eval_cases(examples)
    if spec is not None:
        check_spec_applies(spec, cases, data)
    sides: list[Side] = []
    for label, generator in (("base", base), ("tuned", tuned)):
        with run_span(tracing, "evaluate", {"ragtune.evaluation.side": label,
                                            "gen_ai.request.model": getattr(generator, "name", None)}) as span:
            side = _side(generator, cases, examples, max_new_tokens=max_new_tokens, label=label, progress=progress,
                         spec=spec, before=len(cases) * len(sides))
            set_attributes(span, {**numbers("ragtune.evaluation.", side.metrics),
                                  **numbers("ragtune.evaluation.", side.timings)})
        sides.append(side)
    return Comparison(cases, sides[0], sides[1])


def evaluate_run(run_dir: str | Path, *, settings: Settings | None = None, limit: int | None = None,
                 max_new_tokens: int = 128, base: Generator | None = None, tuned: Generator | None = None,
                 progress: Progress | None = None, write: bool = True,
                 task_spec: str | Path | Mapping[str, Any] | TaskSpec | None = None,
                 examples: Sequence[Example] | None = None, data: str | None = None,
                 tracing: Tracing | None = None) -> EvalReport:
    """Evaluate base and tuned on the run's held-out rows, or on ``examples`` (named ``data`` in the
    report), the first ``limit`` of them, and write ``eval.json``. ``task_spec``: a spec file, its
    content as a mapping, or a ``TaskSpec``. ``base``/``tuned`` default to generators built from the
    run (``build_generators``). With ``tracing`` the evaluation is an ``evaluation`` trace naming the
    run (``ragtune.run_id``), a span per side below it."""
    if limit is not None and limit < 1:
        raise ConfigError(f"invalid --limit {limit}: expected at least 1 row")
    if not 1 <= max_new_tokens <= 32768:
        raise ConfigError(f"invalid --max-new-tokens {max_new_tokens}: expected 1 to 32768")
    spec = load_task_spec(task_spec) if task_spec is not None else None  # a bad spec fails before any model loads
    run_dir = Path(run_dir)
    record = completed_record(run_dir)
    if examples is None:
        held_out = run_dir / "data" / "eval.jsonl"
        examples = read_rows(held_out) if held_out.is_file() else []
        if not examples:
            raise ConfigError(f"run {record.run_id} has no held-out rows ({held_out} is empty or missing): train "
                              "with eval_fraction > 0 or on a stored dataset with an eval split, or evaluate on a "
                              "registered evaluation set (--set)")
        data = HELD_OUT
    elif not examples:
        raise ConfigError(f"no rows to evaluate run {record.run_id} on ({data or 'the rows given'} is empty)")
    examples = list(examples[:limit] if limit else examples)
    data = data or "the rows given"
    if spec is not None:
        check_spec_applies(spec, eval_cases(examples), data)  # before the models load
    if base is None or tuned is None:
        built = build_generators(record, settings or Settings())
        base, tuned = base or built[0], tuned or built[1]
    with run_span(tracing, "evaluation", {
            "ragtune.evaluation.type": "adapter", "ragtune.run_id": record.run_id, "ragtune.model": record.base,
            "ragtune.adapter": str(record.adapter), "ragtune.evaluation.data": data,
            "ragtune.evaluation.queries": len(examples), "gen_ai.request.max_tokens": max_new_tokens},
            f"run {record.run_id}: base vs tuned on {len(examples)} rows of {data}"):
        result = compare(examples, base, tuned, spec=spec, max_new_tokens=max_new_tokens, progress=progress,
                         data=data, tracing=tracing)
    report = EvalReport(
        run_id=record.run_id, run_dir=str(run_dir.resolve()), base=record.base, adapter=str(record.adapter),
        rows=len(examples), rows_hash=rows_hash(examples), cases=dict(Counter(c.kind for c in result.cases)),
        max_new_tokens=max_new_tokens, base_metrics=result.base.metrics, tuned_metrics=result.tuned.metrics,
        details=result.details, timings=result.timings, created_at=runs.now(), data=data,
        task=spec.to_dict() if spec is not None else None,
        confusion={"base": result.base.confusion, "tuned": result.tuned.confusion} if spec is not None else {},
    )
    if write:
        runs.write_json(run_dir / REPORT_FILE, report.to_dict())
    return report


def read_report(run_dir: str | Path) -> EvalReport | None:
    path = Path(run_dir) / REPORT_FILE
    try:
        return EvalReport.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"{path} is not an evaluation report: {exc}") from exc
