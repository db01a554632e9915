"""Promotion gates: which metrics a candidate model version must not be worse on than the current
production version, which direction is better, and how much worse still passes.

Configured as ``promotion_gates`` (ragtune.toml, or ``RAGTUNE_PROMOTION_GATES`` as JSON), a table of
metric name to ``"higher"``, ``"lower"``, ``"higher:TOLERANCE"`` or ``{better = "lower", tolerance =
0.05}``::

    [promotion_gates]
    "eval.token_f1" = "higher"
    "eval.loss" = { better = "lower", tolerance = 0.02 }

Metric names are those a registered version's MLflow run holds: ``eval.<metric>`` for the tuned side
of ``ragtune tune eval`` (``eval.base.<metric>`` for its base side) and the training metrics
(``eval_loss``, ``train_loss`` ...). A gate applies when the production version has the metric; a
candidate without it fails that gate (it was not measured, so it cannot be shown not to be worse).
Tolerance is absolute: ``higher`` passes when ``candidate >= production - tolerance``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ragtune.errors import ConfigError

DEFAULT_GATES: dict[str, Any] = {
    "eval.loss": "lower",
    "eval.token_f1": "higher",
    "eval.rouge_l": "higher",
    "eval.json_valid": "higher",
    "eval.schema_valid": "higher",
    "eval.tool_name_accuracy": "higher",
    "eval.tool_args_accuracy": "higher",
}


@dataclass(frozen=True)
class Gate:
    metric: str
    higher_is_better: bool
    tolerance: float = 0.0

    def passes(self, candidate: float, production: float) -> bool:
        if self.higher_is_better:
            return candidate >= production - self.tolerance
        return candidate <= production + self.tolerance


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


def parse_gates(value: Mapping[str, Any] | str | None) -> tuple[Gate, ...]:
    """Gates from the setting's value; a bad entry raises ``ConfigError`` naming it."""
    if value is None:
        return ()
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as exc:
            raise ConfigError(f"invalid setting promotion_gates={value!r}: not a JSON object ({exc.msg})") from None
    if not isinstance(value, Mapping):
        raise ConfigError(f"invalid setting promotion_gates={value!r}: expected a table of metric = direction")
    gates = []
    for metric, spec in value.items():
        where = f"promotion_gates.{metric}"
        tolerance: Any
        if isinstance(spec, str):
            better, _, tolerance = spec.partition(":")
            tolerance = tolerance or 0.0
        elif isinstance(spec, Mapping):
            unknown = sorted(set(spec) - {"better", "tolerance"})
            if unknown:
                raise ConfigError(f"invalid setting {where}: unknown key(s) {', '.join(unknown)}")
            better, tolerance = str(spec.get("better", "")), spec.get("tolerance", 0.0)
        else:
            raise ConfigError(f"invalid setting {where}={spec!r}: expected 'higher', 'lower' or a table")
        if better.strip() not in ("higher", "lower"):
            raise ConfigError(f"invalid setting {where}={spec!r}: better must be 'higher' or 'lower'")
        try:
            tol = float(str(tolerance).strip())
        except (TypeError, ValueError):
            raise ConfigError(f"invalid setting {where}={spec!r}: tolerance must be a number") from None
        if not (math.isfinite(tol) and tol >= 0):
            raise ConfigError(f"invalid setting {where}={spec!r}: tolerance must be >= 0")
        if not str(metric).strip():
            raise ConfigError("invalid setting promotion_gates: empty metric name")
        gates.append(Gate(str(metric), better.strip() == "higher", tol))
    return tuple(gates)


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
