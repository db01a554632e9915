"""JSON replies against their references, shared by ``tune eval`` (``finetune.lora.scoring``) and
``eval answers``: reading JSON out of a reply, and the per-field metrics of a task spec (``task_spec``).

A json task's reply, field by field (only the fields the spec names, only on rows whose reference
has the field):

* ``field.<name>.exact`` and ``field.<name>.accuracy``: 1 when the reply's value equals the
  reference's as JSON (key order aside; no normalisation of strings: ``"P1"`` is not ``"p1"``);
* ``field.<name>.f1``: token F1 of the two values as text, with the SQuAD normalisation
  (``evaluate.answers.token_f1``; a value that is not a string is compared as its JSON text);
* ``field.<name>.macro_f1`` for a class field (one scored by ``accuracy``): the unweighted mean of
  the per-class F1 over every label that occurs as a reference or as a prediction, as
  scikit-learn's ``f1_score(average="macro")`` computes it (a test compares them); a reply without
  the field (or not JSON) predicts the label ``MISSING``. A model that always answers one class
  scores high accuracy on a skewed set and a low macro-F1, which is the point;
* a confusion summary per class field: reference label -> predicted label -> count.

Validity is strict (``json_valid``: the whole reply is one JSON value; ``schema_valid``: and the
spec's schema accepts it) while fields are read leniently (the first JSON object in the reply), as
tool calls are in ``scoring``: validity is what a caller relies on, fields what the model meant.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ragtune.evaluate.task_spec import TaskSpec
from ragtune.evaluate.text_metrics import token_f1

MISSING = "(missing)"  # the predicted label of a reply without the field
_FENCE = re.compile(r"^```[A-Za-z0-9_-]*\s*\n?(.*?)\n?```$", re.DOTALL)

Confusion = dict[str, dict[str, dict[str, int]]]  # field -> reference label -> predicted label -> count


# -- reading JSON out of a reply --------------------------------------------------------------------
def strict_json(text: str) -> tuple[bool, Any]:
    """``(True, value)`` when the whole reply (inside one code fence at most) is one JSON value."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        return True, json.loads(body)
    except (json.JSONDecodeError, ValueError):
        return False, None


def first_json(text: str) -> Any:
    """The reply as JSON, else the first JSON object or array found inside it, else None."""
    ok, value = strict_json(text)
    if ok:
        return value
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[{\[]", text):
        try:
            return decoder.raw_decode(text, match.start())[0]
        except (json.JSONDecodeError, ValueError):
            continue
    return None


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def label(value: Any) -> str:
    """A class label: a string as it is, any other JSON value as its JSON text."""
    return value if isinstance(value, str) else _canonical(value)


# -- a json task, field by field ---------------------------------------------------------------------
def json_task_scores(spec: TaskSpec, prediction: str, reference: Any) -> dict[str, float]:
    """``json_valid``, ``schema_valid`` (against the spec's schema) and the spec's per-field metrics
    of one reply; a field the reference lacks is not scored on this row."""
    ok, value = strict_json(prediction)
    scores = {"json_valid": float(ok), "schema_valid": float(ok and spec.accepts(value))}
    got = first_json(prediction)
    got = got if isinstance(got, dict) else {}
    gold = reference if isinstance(reference, dict) else {}
    for f in spec.fields:
        if f.name not in gold:
            continue
        present = f.name in got
        same = present and _canonical(got[f.name]) == _canonical(gold[f.name])
        for metric in f.metrics:
            if metric == "f1":
                predicted = _text(got[f.name]) if present else ""
                scores[f"field.{f.name}.f1"] = token_f1(predicted, [_text(gold[f.name])])
            else:  # exact, accuracy
                scores[f"field.{f.name}.{metric}"] = float(same)
    return scores


def class_labels(spec: TaskSpec, prediction: str, reference: Any) -> dict[str, tuple[str, str]]:
    """``field -> (reference label, predicted label)`` for the spec's class fields the reference has."""
    got = first_json(prediction)
    got = got if isinstance(got, dict) else {}
    gold = reference if isinstance(reference, dict) else {}
    return {f.name: (label(gold[f.name]), label(got[f.name]) if f.name in got else MISSING)
            for f in spec.fields if f.is_class and f.name in gold}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else _canonical(value)


def macro_f1(pairs: Iterable[tuple[str, str]]) -> float | None:
    """Macro-averaged F1 of ``(reference, predicted)`` labels over every label either side uses."""
    pairs = list(pairs)
    if not pairs:
        return None
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for gold, predicted in pairs:
        if gold == predicted:
            tp[gold] += 1
        else:
            fp[predicted] += 1
            fn[gold] += 1
    labels = {g for g, _ in pairs} | {p for _, p in pairs}
    # each label occurs on one side at least, so the denominator is never 0
    return sum(2 * tp[x] / (2 * tp[x] + fp[x] + fn[x]) for x in labels) / len(labels)


def confusion(pairs: Iterable[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """Reference label -> predicted label -> count, both sorted."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for gold, predicted in pairs:
        counts[gold][predicted] += 1
    return {g: dict(sorted(counts[g].items())) for g in sorted(counts)}


def class_summary(labels: Iterable[Mapping[str, tuple[str, str]]]) -> tuple[dict[str, float | None], Confusion]:
    """From each case's ``class_labels``: ``field.<name>.macro_f1`` per class field, and the confusion."""
    by_field: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for case in labels:
        for name, pair in case.items():
            by_field[name].append(pair)
    metrics = {f"field.{name}.macro_f1": macro_f1(pairs) for name, pairs in by_field.items()}
    return metrics, {name: confusion(pairs) for name, pairs in sorted(by_field.items())}


def mean_scores(scored: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Each metric's mean over the cases that have it."""
    sums: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for scores in scored:
        sums.update(scores)
        counts.update(scores.keys())
    return {name: sums[name] / counts[name] for name in counts}


def score_json_task(spec: TaskSpec, predictions: Sequence[str], references: Sequence[Any]
                    ) -> tuple[dict[str, float | None], Confusion]:
    """A json task over a set of replies: the means of ``json_task_scores``, the macro-F1 of every
    class field and its confusion. Every metric the spec names is in the result (None without a
    row to measure it on)."""
    scored = [json_task_scores(spec, p, r) for p, r in zip(predictions, references, strict=True)]
    metrics: dict[str, float | None] = dict.fromkeys(["json_valid", "schema_valid", *spec.field_metric_names()])
    metrics.update(mean_scores(scored))
    classes, matrix = class_summary(class_labels(spec, p, r) for p, r in zip(predictions, references, strict=True))
    metrics.update(classes)
    return metrics, matrix
