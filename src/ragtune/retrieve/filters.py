"""Metadata filters and the ACL condition, compiled to a parameterised SQL condition on ``chunks c``.

Keys and values always travel as bind parameters, never as SQL text, so a filter like
``title=x'; DROP TABLE chunks; --`` is just a value that matches nothing.

Size. Each condition is a containment test the planner combines with the others; thousands of
them cost PostgreSQL seconds to minutes (5,000 keys: ~60 s, measured), so ``check_size`` caps the
number of filters and of values across them (``max_filters``, ``max_filter_values``).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from ragtune.errors import LimitError, QueryError
from ragtune.models import Principal
from ragtune.store.access import readable

OPERATORS = ("eq", "ne", "in", "gt", "gte", "lt", "lte")
_RANGE_SQL = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_CLI_PATTERN = re.compile(r"^(?P<key>[^=<>!]+?)\s*(?P<op>>=|<=|!=|=|>|<)\s*(?P<value>.*)$", re.S)
_CLI_OPS = {"=": "eq", "!=": "ne", ">": "gt", ">=": "gte", "<": "lt", "<=": "lte"}


@dataclass(frozen=True)
class Filter:
    """``metadata[key] <op> value``; ``in`` takes a list; ranges take numbers or ISO dates."""

    key: str
    op: str
    value: Any

    def __post_init__(self) -> None:
        if not self.key:
            raise QueryError("a filter needs a metadata key")
        for part in (self.key, *(self.value if isinstance(self.value, list | tuple | set | frozenset)
                                 else (self.value,))):
            problem = bad_value(part)
            if problem:
                raise QueryError(f"filter {self.key!r}: {problem}")
        if self.op not in OPERATORS:
            raise QueryError(f"unknown filter operator {self.op!r} for {self.key!r}; use one of {OPERATORS}")
        if self.op == "in" and not isinstance(self.value, list | tuple | set | frozenset):
            raise QueryError(f"filter {self.key!r} in: expected a list of values, got {self.value!r}")
        if self.op in _RANGE_SQL and not isinstance(self.value, int | float | dt.date | dt.datetime):
            raise QueryError(
                f"filter {self.key} {self.op} {self.value!r}: a range needs a number or an ISO date"
            )

    @classmethod
    def parse(cls, text: str) -> Filter:
        """CLI syntax: ``key=value``, ``key=a|b`` (any of), ``key!=v``, ``key>=3``, ``key<2024-01-01``."""
        match = _CLI_PATTERN.match(text.strip())
        if not match:
            raise QueryError(f"cannot parse filter {text!r}: use key=value, key=a|b, key>=n or key<date")
        key, op, raw = match.group("key").strip(), _CLI_OPS[match.group("op")], match.group("value").strip()
        if op == "eq" and "|" in raw:
            return cls(key, "in", [parse_scalar(v) for v in raw.split("|")])
        value = parse_scalar(raw)
        if op in _RANGE_SQL and isinstance(value, str):
            raise QueryError(f"filter {text!r}: a range needs a number or an ISO date, got {raw!r}")
        return cls(key, op, value)


_SURROGATE = re.compile("[\ud800-\udfff]")
_MAX_INT = 2**63 - 1


def bad_text(value: str) -> str | None:
    """What makes ``value`` text PostgreSQL cannot store (None when it can)."""
    if "\x00" in value:
        return "a NUL character"
    if _SURROGATE.search(value):
        return "a lone surrogate (not valid Unicode text)"
    return None


def bad_value(value: Any) -> str | None:
    """What makes a filter key or value unusable: bad text, an integer beyond 64 bits, a non-finite number."""
    if isinstance(value, str):
        problem = bad_text(value)
        return f"holds {problem}" if problem else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and abs(value) > _MAX_INT:
        return "a number out of range (more than 64 bits)"
    if isinstance(value, float) and not math.isfinite(value):
        return "not a finite number"
    return None


@dataclass(frozen=True)
class FilterLimits:
    """How many filters, and values across them, one search may have."""

    max_filters: int = 32
    max_values: int = 256


def check_size(filters: Sequence[Filter], limits: FilterLimits) -> None:
    if len(filters) > limits.max_filters:
        raise LimitError(f"at most {limits.max_filters} filters per search (max_filters), got {len(filters)}",
                         "max_filters")
    values = sum(len(f.value) if f.op == "in" else 1 for f in filters)
    if values > limits.max_values:
        raise LimitError(f"at most {limits.max_values} filter values per search (max_filter_values), got {values}",
                         "max_filter_values")


def parse_scalar(raw: str) -> Any:
    """Typed value from text: int, float, bool, ISO date/datetime, else the string itself."""
    if re.fullmatch(r"[+-]?\d+", raw):
        return int(raw)
    if re.fullmatch(r"[+-]?(\d+\.\d*|\.\d+)([eE][+-]?\d+)?", raw):
        return float(raw)
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
        try:
            return dt.date.fromisoformat(raw)
        except ValueError:
            return raw
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([+-]\d{2}:?\d{2}|Z)?", raw):
        try:
            return dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            return raw
    return raw


def json_value(value: Any) -> Any:
    """How a typed value is stored in metadata JSON (dates as ISO strings)."""
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    return value


def _equals(key: str, value: Any) -> tuple[sql.Composable, list[Any]]:
    # Containment is answered by the GIN index; the array form matches list-valued metadata
    # ("tags": ["a", "b"] contains "a"), and numbers also match their string spelling.
    forms = [json_value(value)]
    if isinstance(value, int | float) and not isinstance(value, bool):
        forms.append(str(value))
    parts: list[sql.Composable] = []
    params: list[Any] = []
    for form in forms:
        parts.append(sql.SQL("c.metadata @> %s OR c.metadata @> %s"))
        params.extend([Jsonb({key: form}), Jsonb({key: [form]})])
    return sql.SQL("(") + sql.SQL(" OR ").join(parts) + sql.SQL(")"), params


def _condition(f: Filter) -> tuple[sql.Composable, list[Any]]:
    if f.op == "eq":
        return _equals(f.key, f.value)
    if f.op == "ne":
        cond, params = _equals(f.key, f.value)
        return sql.SQL("NOT ") + cond, params
    if f.op == "in":
        parts, params = [], []
        for v in f.value:
            cond, p = _equals(f.key, v)
            parts.append(cond)
            params.extend(p)
        if not parts:
            return sql.SQL("FALSE"), []
        return sql.SQL("(") + sql.SQL(" OR ").join(parts) + sql.SQL(")"), params
    op = sql.SQL(_RANGE_SQL[f.op])
    if isinstance(f.value, dt.date | dt.datetime):
        value = f.value if isinstance(f.value, dt.datetime) else dt.datetime.combine(f.value, dt.time())
        return (
            sql.SQL("ragtune_try_timestamptz(c.metadata ->> %s) ") + op + sql.SQL(" %s::timestamptz"),
            [f.key, value.isoformat()],
        )
    return (
        sql.SQL("(CASE WHEN jsonb_typeof(c.metadata -> %s) = 'number' THEN (c.metadata ->> %s)::float8 END) ")
        + op + sql.SQL(" %s::float8"),
        [f.key, f.key, float(f.value)],
    )


@dataclass(frozen=True)
class Condition:
    """A SQL boolean over ``chunks c`` plus its parameters; ``restrictive`` if it may drop rows."""

    sql: sql.Composable
    params: list[Any]
    restrictive: bool


def compile_conditions(filters: Iterable[Filter], principal: Principal, *, quarantine: bool = False) -> Condition:
    """``quarantine``: the collection holds quarantined chunks (``CollectionInfo.quarantined``), which
    no one retrieves, admins included; a collection without any gets no condition for them."""
    parts: list[sql.Composable] = []
    params: list[Any] = []
    if quarantine:
        parts.append(sql.SQL("NOT c.quarantined"))
    for f in filters:
        cond, p = _condition(f)
        parts.append(cond)
        params.extend(p)
    if not principal.admin:
        acl, acl_params = readable(principal, "c.acl")  # the one read rule (store.access)
        parts.append(acl)
        params.extend(acl_params)
    if not parts:
        return Condition(sql.SQL("TRUE"), [], False)
    return Condition(sql.SQL(" AND ").join(parts), params, True)


def as_filters(filters: Sequence[Filter | str] | dict[str, Any] | None) -> list[Filter]:
    """Accept Filter objects, CLI strings, or a ``{key: value}`` dict (list value = any of)."""
    if filters is None:
        return []
    if isinstance(filters, dict):
        return [Filter(k, "in", list(v)) if isinstance(v, list | tuple) else Filter(k, "eq", v)
                for k, v in filters.items()]
    return [f if isinstance(f, Filter) else Filter.parse(f) for f in filters]
