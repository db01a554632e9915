"""The format of the ``[training] promotion_gates`` setting (``finetune/lifecycle/gates.py`` applies them).

A gate is a comparison with the production version (``"higher"``, ``"lower"``, optionally
``:TOLERANCE``), absolute bounds the candidate must meet on its own (``">= 0.95"``, ``"> N"``,
``"<= N"``, ``"< N"``), or both, joined by commas (``"higher:0.01, >= 0.95"``); or a table
``{better = "higher", tolerance = 0.01, min = 0.95, max = 1.0}`` (``min``/``max`` are inclusive).
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Mapping
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
FORMS = ("a gate is 'higher' or 'lower' (optionally ':TOLERANCE', e.g. 'lower:0.02'), an absolute bound "
         "'>= N', '> N', '<= N' or '< N', both joined by ',' (e.g. 'higher:0.01, >= 0.95'), or a table "
         "{better = 'higher', tolerance = 0.01, min = 0.95, max = 1.0}")
_OPS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, ">": operator.gt, "<=": operator.le,
                                                   "<": operator.lt}
_BOUND = re.compile(r"^(>=|<=|>|<)\s*(\S+)$")


@dataclass(frozen=True)
class GateBound:
    """An absolute threshold: the candidate must satisfy ``value OP limit`` on its own, whether or
    not there is a production version to compare with."""

    op: str
    limit: float

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ConfigError(f"invalid gate bound operator {self.op!r}: expected one of {', '.join(_OPS)}")
        if not math.isfinite(self.limit):
            raise ConfigError(f"invalid gate bound {self.op} {self.limit}: the limit must be a finite number")

    @property
    def lower(self) -> bool:
        """A floor (``>=``, ``>``) rather than a ceiling."""
        return self.op.startswith(">")

    def holds(self, value: float) -> bool:
        return _OPS[self.op](value, self.limit)

    def __str__(self) -> str:
        return f"{self.op} {self.limit:g}"


@dataclass(frozen=True)
class Gate:
    """One metric's gate: a comparison with production (``higher_is_better`` not None; a candidate
    passes when it is not worse by more than ``tolerance``, absolute) and/or absolute ``bounds``."""

    metric: str
    higher_is_better: bool | None = None  # None: no comparison with production, bounds only
    tolerance: float = 0.0
    bounds: tuple[GateBound, ...] = ()

    def __post_init__(self) -> None:
        if self.higher_is_better is None and not self.bounds:
            raise ConfigError(f"invalid gate {self.metric!r}: it needs a direction, a bound or both; {FORMS}")

    @property
    def compares(self) -> bool:
        return self.higher_is_better is not None

    def needed(self, production: float) -> float:
        """The least good value that still passes against ``production``."""
        return production - self.tolerance if self.higher_is_better else production + self.tolerance

    def passes(self, candidate: float, production: float) -> bool:
        """The comparison with production only (the bounds are checked one by one: ``GateBound.holds``)."""
        if self.higher_is_better is None:
            return True
        if self.higher_is_better:
            return candidate >= self.needed(production)
        return candidate <= self.needed(production)


def parse_gates(value: Mapping[str, Any] | str | None) -> tuple[Gate, ...]:
    """Gates from the setting's value; a bad entry raises ``ConfigError`` naming it and the accepted forms."""
    if value is None:
        return ()
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as exc:
            raise ConfigError(f"invalid setting {_WHERE}={value!r}: not a JSON object ({exc.msg})") from None
    if not isinstance(value, Mapping):
        raise ConfigError(f"invalid setting {_WHERE}={value!r}: expected a table of metric = gate; {FORMS}")
    gates = []
    for metric, spec in value.items():
        if not str(metric).strip():
            raise ConfigError(f"invalid setting {_WHERE}: empty metric name")
        gates.append(_gate(str(metric), spec))
    return tuple(gates)


def _gate(metric: str, spec: Any) -> Gate:
    where = f"{_WHERE}.{metric}"

    def bad(problem: str) -> ConfigError:
        return ConfigError(f"invalid setting {where}={spec!r}: {problem}; {FORMS}")

    better: str | None = None
    tolerance: Any = None
    bounds: list[GateBound] = []
    if isinstance(spec, str):
        for part in (p.strip() for p in spec.split(",")):
            match = _BOUND.match(part)
            if match:
                bounds.append(GateBound(match.group(1), _number(match.group(2), bad, "a bound's limit")))
            elif part.partition(":")[0].strip() in ("higher", "lower"):
                if better is not None:
                    raise bad("more than one direction")
                better, _, tolerance = (s.strip() for s in part.partition(":"))
                tolerance = tolerance or None
            else:
                raise bad(f"{part!r} is neither a direction nor a bound")
    elif isinstance(spec, Mapping):
        unknown = sorted(set(spec) - {"better", "tolerance", "min", "max"})
        if unknown:
            raise bad(f"unknown key(s) {', '.join(map(str, unknown))}")
        better = None if spec.get("better") is None else str(spec["better"]).strip()
        if better is not None and better not in ("higher", "lower"):
            raise bad("better must be 'higher' or 'lower'")
        tolerance = spec.get("tolerance")
        for key, op in (("min", ">="), ("max", "<=")):
            if spec.get(key) is not None:
                bounds.append(GateBound(op, _number(spec[key], bad, key)))
    else:
        raise bad("expected text or a table")
    if tolerance is not None and better is None:
        raise bad("a tolerance needs a direction ('higher' or 'lower') to apply to")
    tol = 0.0 if tolerance is None else _number(tolerance, bad, "tolerance")
    if tol < 0:
        raise bad("tolerance must be >= 0")
    if better is None and not bounds:
        raise bad("no direction and no bound")
    floors, ceilings = [b for b in bounds if b.lower], [b for b in bounds if not b.lower]
    if len(floors) > 1 or len(ceilings) > 1:
        raise bad("at most one lower bound (>=, >, min) and one upper bound (<=, <, max)")
    if floors and ceilings:
        low, high = floors[0], ceilings[0]
        if low.limit > high.limit or (low.limit == high.limit and (low.op == ">" or high.op == "<")):
            raise bad(f"no value meets both {low} and {high}")
    return Gate(metric, None if better is None else better == "higher", tol, tuple(bounds))


def _number(value: Any, bad: Callable[[str], ConfigError], what: str) -> float:
    if isinstance(value, bool):
        raise bad(f"{what} must be a number")
    try:
        number = float(str(value).strip())
    except (TypeError, ValueError):
        raise bad(f"{what} must be a number") from None
    if not math.isfinite(number):
        raise bad(f"{what} must be a finite number")
    return number
