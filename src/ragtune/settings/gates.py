"""The format of the ``[training] promotion_gates`` setting (``finetune/lifecycle/gates.py`` applies them)."""

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

_WHERE = "training.promotion_gates"


@dataclass(frozen=True)
class Gate:
    metric: str
    higher_is_better: bool
    tolerance: float = 0.0

    def passes(self, candidate: float, production: float) -> bool:
        if self.higher_is_better:
            return candidate >= production - self.tolerance
        return candidate <= production + self.tolerance


def parse_gates(value: Mapping[str, Any] | str | None) -> tuple[Gate, ...]:
    """Gates from the setting's value; a bad entry raises ``ConfigError`` naming it."""
    if value is None:
        return ()
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as exc:
            raise ConfigError(f"invalid setting {_WHERE}={value!r}: not a JSON object ({exc.msg})") from None
    if not isinstance(value, Mapping):
        raise ConfigError(f"invalid setting {_WHERE}={value!r}: expected a table of metric = direction")
    gates = []
    for metric, spec in value.items():
        where = f"{_WHERE}.{metric}"
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
            raise ConfigError(f"invalid setting {_WHERE}: empty metric name")
        gates.append(Gate(str(metric), better.strip() == "higher", tol))
    return tuple(gates)
