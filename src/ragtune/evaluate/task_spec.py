"""Task specs: what a model's replies are supposed to be, so evaluation measures that and not only
whether they parse (issue 18). ``ragtune tune eval`` and ``ragtune eval answers`` take one with
``--task-spec FILE`` (JSON, or TOML when the file ends in ``.toml``); the Python API takes the same
content as a mapping. The format (docs/task-metrics.md has a full example)::

    {"task": "json",
     "schema": {"type": "object", "required": ["category", "priority"],
                "properties": {"category": {"enum": ["billing", "bug", "account"]},
                               "priority": {"enum": ["P1", "P2", "P3"]},
                               "summary": {"type": "string"}}},
     "fields": {"category": "accuracy", "priority": ["accuracy", "exact"], "summary": "f1"}}

* ``task``: ``json`` (the default when ``schema`` is given), ``text`` or ``tool_call``. Only the
  cases of that kind are scored by the spec; a spec whose kind none of the cases has is an error.
* ``schema`` (json only, required): a JSON Schema, checked here against its own metaschema; a
  reply counts as schema-valid only when this schema accepts it (``format`` is asserted).
* ``fields`` (json only): top-level properties of the schema to score one by one, each with one or
  more of ``FIELD_METRICS`` (``accuracy`` also gives macro-F1 and a confusion summary).
* ``description``: free text, for people.

Field names are restricted to letters, digits, ``_`` and ``-`` (``FIELD_NAME``) because they become
metric names (``field.<name>.<metric>``) that MLflow stores and promotion gates name; nested fields
are not scored on their own (score the object holding them with ``exact``).

Every problem is a ``ConfigError`` that names the spec's file (or ``<inline>``) and the problem.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.errors import ConfigError
from ragtune.extras import require

TASKS = ("json", "text", "tool_call")
# Per-field metrics a spec may declare; ``accuracy`` also reports ``macro_f1`` (over the classes).
FIELD_METRICS = ("exact", "f1", "accuracy")
FIELD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")
_KEYS = {"task", "schema", "fields", "description"}


@dataclass(frozen=True)
class FieldSpec:
    name: str
    metrics: tuple[str, ...]  # a subset of FIELD_METRICS, in the spec's order

    @property
    def is_class(self) -> bool:
        return "accuracy" in self.metrics

    def metric_names(self) -> list[str]:
        """The report's names for this field: ``field.<name>.<metric>``, plus macro-F1 for a class field."""
        names = [f"field.{self.name}.{m}" for m in self.metrics]
        return [*names, f"field.{self.name}.macro_f1"] if self.is_class else names


@dataclass(frozen=True)
class TaskSpec:
    task: str
    source: str  # the file, or "<inline>": every error about the spec names it
    schema: dict[str, Any] | None = None
    fields: tuple[FieldSpec, ...] = ()
    description: str = ""
    # The schema's validator, built once when the spec is parsed (not part of the value).
    validator: Any = field(default=None, compare=False, repr=False)

    def accepts(self, value: Any) -> bool:
        """The spec's schema accepts ``value`` (a spec without a schema accepts anything)."""
        return self.validator is None or bool(self.validator.is_valid(value))

    def field_metric_names(self) -> list[str]:
        return [name for f in self.fields for name in f.metric_names()]

    def to_dict(self) -> dict[str, Any]:
        """What a report records of the spec it was scored by."""
        return {"source": self.source, "task": self.task, "schema": self.schema,
                "fields": {f.name: list(f.metrics) for f in self.fields}, "description": self.description}


def load_task_spec(spec: str | Path | Mapping[str, Any] | TaskSpec) -> TaskSpec:
    """A spec from a file path, a mapping (the Python API's inline form) or an already parsed spec."""
    if isinstance(spec, TaskSpec):
        return spec
    if isinstance(spec, Mapping):
        return parse_task_spec(spec, "<inline>")
    path = Path(spec).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"task spec {path}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"task spec {path}: not valid TOML ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"task spec {path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
                          "name the file *.toml to write it in TOML") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"task spec {path}: expected an object at the top, got {type(data).__name__}")
    return parse_task_spec(data, str(path))


def parse_task_spec(data: Mapping[str, Any], source: str = "<inline>") -> TaskSpec:
    def bad(problem: str) -> ConfigError:
        return ConfigError(f"task spec {source}: {problem}")

    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise bad(f"unknown key(s) {', '.join(map(repr, unknown))}; expected {', '.join(sorted(_KEYS))}")
    task = data.get("task", "json" if "schema" in data or "fields" in data else None)
    if task not in TASKS:
        raise bad(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise bad(f"description must be a string, got {type(description).__name__}")
    if task != "json":
        extra = sorted({"schema", "fields"} & set(data))
        if extra:
            raise bad(f"a {task} task takes no {' or '.join(extra)} (they are for json tasks)")
        return TaskSpec(task, source, description=description)
    schema = data.get("schema")
    if not isinstance(schema, Mapping):
        raise bad("a json task needs a JSON Schema object under 'schema'"
                  + ("" if schema is None else f", got {type(schema).__name__}"))
    try:
        schema = json.loads(json.dumps(schema))  # a private copy, and plain JSON (TOML also has dates)
    except (TypeError, ValueError) as exc:
        raise bad(f"the schema holds a value that is not JSON ({exc})") from None
    validator = _validator(schema, bad)
    fields = _fields(data.get("fields", {}), schema, bad)
    return TaskSpec(task, source, schema, fields, description, validator)


def _validator(schema: dict[str, Any], bad: Callable[[str], ConfigError]) -> Any:
    jsonschema = require("jsonschema", "train", "task specs with a JSON Schema", error=ConfigError)
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "the top"
        raise bad(f"the schema is not a valid JSON Schema at {where}: {exc.message}") from None
    # ``format`` is only an annotation unless a checker is given; a spec that declares one means it.
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _fields(raw: Any, schema: dict[str, Any], bad: Callable[[str], ConfigError]) -> tuple[FieldSpec, ...]:
    if not isinstance(raw, Mapping):
        raise bad(f"fields must be a table of field name to metric(s), got {type(raw).__name__}")
    properties = schema.get("properties")
    known = set(properties) if isinstance(properties, Mapping) else set()
    if raw and schema.get("type", "object") != "object":
        raise bad(f"fields need an object schema, but the schema's type is {schema.get('type')!r}")
    out = []
    for name, metrics in raw.items():
        if not FIELD_NAME.fullmatch(str(name)):
            raise bad(f"field name {name!r} is not usable in a metric name: letters, digits, '_' and '-' only "
                      "(at most 64)")
        if name not in known:
            listed = ", ".join(sorted(known)) or "none"
            raise bad(f"field {name!r} is not a property of the schema (its top-level properties: {listed})")
        chosen = [metrics] if isinstance(metrics, str) else metrics
        if not isinstance(chosen, list) or not chosen or not all(isinstance(m, str) for m in chosen):
            raise bad(f"field {name!r}: expected a metric or a list of metrics, got {metrics!r}")
        wrong = [m for m in chosen if m not in FIELD_METRICS]
        if wrong:
            raise bad(f"field {name!r}: unknown metric(s) {', '.join(map(repr, wrong))}; expected "
                      f"{', '.join(FIELD_METRICS)}")
        out.append(FieldSpec(str(name), tuple(dict.fromkeys(chosen))))
    return tuple(out)
