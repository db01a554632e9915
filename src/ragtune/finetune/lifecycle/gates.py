"""Promotion gates: which metrics a candidate model version must not be worse on than the current
production version, which direction is better, and how much worse still passes.

Configured as ``[training] promotion_gates`` (ragtune.toml, or ``RAGTUNE_TRAINING_PROMOTION_GATES``
as JSON), a table of metric name to ``"higher"``, ``"lower"``, ``"higher:TOLERANCE"`` or
``{better = "lower", tolerance = 0.05}``::

    [training.promotion_gates]
    "eval.token_f1" = "higher"
    "eval.loss" = { better = "lower", tolerance = 0.02 }

Metric names are those a registered version's MLflow run holds: ``eval.<metric>`` for the tuned side
of ``ragtune tune eval`` (``eval.base.<metric>`` for its base side), among them a task spec's
per-field metrics (``eval.field.<name>.<metric>``, e.g. ``eval.field.category.macro_f1``;
docs/task-metrics.md), and the training metrics (``eval_loss``, ``train_loss`` ...). A gate applies
when the production version has the metric; a candidate without it fails that gate (it was not
measured, so it cannot be shown not to be worse).
Tolerance is absolute: ``higher`` passes when ``candidate >= production - tolerance``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from ragtune.settings import Gate


@dataclass(frozen=True)
class GateResult:
    gate: Gate
    candidate: float | None
    production: float
    passed: bool

    def describe(self) -> str:
        sign = ">=" if self.gate.higher_is_better else "<="
        bound = self.production - self.gate.tolerance if self.gate.higher_is_better else (
            self.production + self.gate.tolerance)
        got = "missing" if self.candidate is None else f"{self.candidate:.4f}"
        return f"{self.gate.metric}: candidate {got}, needs {sign} {bound:.4f} (production {self.production:.4f})"


def check_gates(gates: tuple[Gate, ...], candidate: Mapping[str, float],
                production: Mapping[str, float]) -> list[GateResult]:
    """One result per gate whose metric the production version has."""
    results = []
    for gate in gates:
        if gate.metric not in production:
            continue
        theirs, ours = float(production[gate.metric]), candidate.get(gate.metric)
        passed = ours is not None and math.isfinite(float(ours)) and gate.passes(float(ours), theirs)
        results.append(GateResult(gate, None if ours is None else float(ours), theirs, passed))
    return results
