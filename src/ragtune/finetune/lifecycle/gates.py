"""Promotion gates: what a candidate model version must show before it becomes production — metrics
it must not be worse on than the current production version (which direction is better, how much
worse still passes), and absolute bounds it must meet on its own.

Configured as ``[training] promotion_gates`` (ragtune.toml, or ``RAGTUNE_TRAINING_PROMOTION_GATES``
as JSON), a table of metric name to a gate (parsed in ``ragtune.settings.gates``)::

    [training.promotion_gates]
    "eval.token_f1" = "higher"                      # not worse than production
    "eval.loss" = { better = "lower", tolerance = 0.02 }
    "eval.json_valid" = ">= 0.95"                   # an absolute bound (also <=, >, <)
    "eval.schema_valid" = "higher:0.01, >= 0.9"     # both
    "eval.tool_args_accuracy" = { better = "higher", min = 0.5 }   # min/max are inclusive

Metric names are those a registered version's MLflow run holds: ``eval.<metric>`` for the tuned side
of ``ragtune tune eval`` (``eval.base.<metric>`` for its base side), among them a task spec's
per-field metrics (``eval.field.<name>.<metric>``, e.g. ``eval.field.category.macro_f1``;
docs/task-metrics.md), and the training metrics (``eval_loss``, ``train_loss`` ...).

When a gate applies: its comparison when there is a production version that has the metric (a
production version without it, or none at all, leaves nothing to compare); its bounds always, the
first promotion included. A candidate without the metric fails every gate that applies to it: it
was not measured, so it can be shown neither not worse nor within bounds. Tolerance is absolute:
``higher`` passes when ``candidate >= production - tolerance``.

One ``GateResult`` per check, each with its own message: the metric missing on the candidate, the
comparison with production, each bound.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from ragtune.settings import Gate, GateBound

Check = Literal["missing", "production", "bound"]
# How a bound that fails is described, by its operator.
_FAILS = {">=": "is below", ">": "is not above", "<=": "is above", "<": "is not below"}


@dataclass(frozen=True)
class GateResult:
    gate: Gate
    check: Check  # "missing": the candidate has no value; else one comparison or one bound
    candidate: float | None
    passed: bool
    production: float | None = None  # with check == "production"
    bound: GateBound | None = None  # with check == "bound"
    hint: str = ""  # with check == "missing": how the metric gets measured

    def describe(self) -> str:
        metric = self.gate.metric
        if self.check == "missing" or self.candidate is None:
            return f"candidate has no {metric} (not measured){': ' + self.hint if self.hint else ''}"
        got = f"{self.candidate:.4f}"
        if self.check == "bound":
            assert self.bound is not None
            verdict = "meets" if self.passed else _FAILS[self.bound.op]
            return f"{metric}: candidate {got} {verdict} the absolute bound {self.bound}"
        assert self.production is not None
        sign = ">=" if self.gate.higher_is_better else "<="
        needs = f"needs {sign} {self.gate.needed(self.production):.4f}"
        if self.passed:
            return f"{metric}: candidate {got}, {needs} (production {self.production:.4f})"
        beyond = f" by more than the tolerance {self.gate.tolerance:g}" if self.gate.tolerance else ""
        return f"{metric}: candidate {got} is worse than production {self.production:.4f}{beyond} ({needs})"


def measure_hint(metric: str, run_id: str) -> str:
    """Why a candidate lacks ``metric`` and what measures it."""
    run = run_id or "RUN"
    if metric.startswith("eval.field."):
        return f"run `ragtune tune eval {run} --task-spec FILE` (or `--set NAME`) and promote again"
    if metric.startswith("eval."):
        return f"run `ragtune tune eval {run}` and promote again"
    return f"training run {run} did not record it"


def check_gates(gates: tuple[Gate, ...], candidate: Mapping[str, float], production: Mapping[str, float] | None,
                *, run_id: str = "") -> list[GateResult]:
    """The results of every check that applies (see the module docstring); ``production`` is None
    when there is no production version. ``run_id`` (the candidate's run) goes into the hint for
    a missing metric."""
    results: list[GateResult] = []
    for gate in gates:
        theirs = _finite(production.get(gate.metric)) if production is not None else None
        compare = gate.compares and theirs is not None
        if not (compare or gate.bounds):
            continue
        ours = _finite(candidate.get(gate.metric))
        if ours is None:
            results.append(GateResult(gate, "missing", None, False, hint=measure_hint(gate.metric, run_id)))
            continue
        if compare:
            assert theirs is not None
            results.append(GateResult(gate, "production", ours, gate.passes(ours, theirs), production=theirs))
        results.extend(GateResult(gate, "bound", ours, b.holds(ours), bound=b) for b in gate.bounds)
    return results


def _finite(value: float | None) -> float | None:
    """A metric's value, None when absent or not a finite number (not a measurement)."""
    return float(value) if value is not None and math.isfinite(float(value)) else None
