"""Task metrics for one generated reply against the held-out reference, by kind of reply.

* ``text``: exact match, token F1 and ROUGE-L (``evaluate.text_metrics``, shared with
  ``eval answers``).
* ``json`` (a reference that is a JSON object or array): JSON validity of the whole reply (code
  fences allowed) and conformance to a schema inferred from the reference (the same JSON types,
  every key of each reference object required). With a json task spec (``evaluate.task_spec``),
  conformance to the spec's schema instead, and the spec's per-field metrics
  (``evaluate.task_metrics``): an inferred schema has no enums, so a reply with every field wrong
  conforms to it.
* ``tool_call`` (a reference turn that calls tools): JSON validity as above; schema conformance
  (every call is ``{"name", "arguments"}``, names a declared tool, and its arguments validate
  against that tool's ``parameters`` with ``jsonschema``); name accuracy (the called names, in
  order, equal the reference's); argument accuracy (the calls equal the reference's, names and
  arguments); and argument F1 over ``(name, key, value)`` triples for partial credit.

Calls are read leniently so a model gets credit for the call it meant: the whole reply, else the
first JSON value inside it; a single call or a list of calls; ``{"name", "arguments"}`` or the
OpenAI form ``{"function": {"name", "arguments"}}``, arguments as an object or a JSON string.
Validity stays strict (the whole reply must parse): that is the property a caller relies on.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from ragtune.evaluate.task_metrics import first_json, json_task_scores, strict_json
from ragtune.evaluate.task_spec import TaskSpec
from ragtune.evaluate.text_metrics import exact_match, rouge_l, token_f1
from ragtune.extras import require
from ragtune.finetune.data.examples import canonical_json

KINDS = ("text", "json", "tool_call")


# -- text ------------------------------------------------------------------------------------------
def text_scores(prediction: str, reference: str) -> dict[str, float]:
    return {"exact_match": exact_match(prediction, [reference]), "token_f1": token_f1(prediction, [reference]),
            "rouge_l": rouge_l(prediction, reference)}


# -- JSON ------------------------------------------------------------------------------------------
def json_reference(text: str) -> Any:
    """The reference as a JSON object or array, or None when it is prose (or a bare scalar)."""
    body = text.strip()
    if not body.startswith(("{", "[")):
        return None
    ok, value = strict_json(body)
    return value if ok and isinstance(value, dict | list) else None


def infer_schema(value: Any) -> dict[str, Any]:
    """A JSON Schema the reference satisfies: its types, recursively; every key required."""
    if isinstance(value, dict):
        return {"type": "object", "properties": {k: infer_schema(v) for k, v in value.items()},
                "required": sorted(value)}
    if isinstance(value, list):
        return {"type": "array", "items": infer_schema(value[0])} if value else {"type": "array"}
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int | float):
        return {"type": "number"}
    if isinstance(value, str):
        return {"type": "string"}
    return {"type": "null"}


def conforms(value: Any, schema: dict[str, Any]) -> bool:
    """``value`` validates against ``schema``; a schema that is itself invalid accepts any value
    of the declared top-level type (the tool declarations in public sets are not all valid)."""
    jsonschema = require("jsonschema", "train", "schema conformance")
    try:
        validator = jsonschema.validators.validator_for(schema)(schema)
        return bool(validator.is_valid(value))
    except (jsonschema.SchemaError, TypeError, ValueError, KeyError):
        kind = schema.get("type") if isinstance(schema, dict) else None
        return kind != "object" or isinstance(value, dict)


def json_scores(prediction: str, reference: Any, spec: TaskSpec | None = None) -> dict[str, float]:
    """Validity and schema conformance: to the spec's schema, with its per-field metrics, when a json
    task spec is given (``evaluate.task_metrics``), else to the schema inferred from the reference."""
    if spec is not None and spec.task == "json":
        return json_task_scores(spec, prediction, reference)
    ok, value = strict_json(prediction)
    return {"json_valid": float(ok), "schema_valid": float(ok and conforms(value, infer_schema(reference)))}


# -- tool calls ------------------------------------------------------------------------------------
def reference_calls(message: dict[str, Any]) -> list[dict[str, Any]]:
    """``[{"name", "arguments"}]`` of an assistant turn in the internal chat form."""
    return [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
            for c in message.get("tool_calls", ())]


def parse_calls(text: str) -> list[dict[str, Any]] | None:
    """The calls in a reply (see the module docstring), or None when there are none."""
    return calls_in(first_json(text))


def calls_in(value: Any) -> list[dict[str, Any]] | None:
    """The calls a decoded JSON value holds, or None when it is not one call or a list of calls."""
    if isinstance(value, dict) and isinstance(value.get("tool_calls"), list):
        value = value["tool_calls"]
    items = value if isinstance(value, list) else [value]
    calls: list[dict[str, Any]] = []
    for item in items:
        if not isinstance(item, dict):
            return None
        fn = item["function"] if isinstance(item.get("function"), dict) else item
        name, arguments = fn.get("name"), fn.get("arguments", fn.get("parameters", {}))
        if isinstance(arguments, str):
            with contextlib.suppress(json.JSONDecodeError, ValueError):
                arguments = json.loads(arguments)
        if not isinstance(name, str):
            return None
        calls.append({"name": name, "arguments": arguments})
    return calls or None


def _calls_conform(calls: list[dict[str, Any]] | None, tools: Sequence[dict[str, Any]] | None) -> bool:
    if not calls:
        return False
    declared = {t["function"]["name"]: t["function"].get("parameters") for t in tools or ()}
    for call in calls:
        if not isinstance(call["arguments"], dict):
            return False
        if tools:
            if call["name"] not in declared:
                return False
            parameters = declared[call["name"]]
            if isinstance(parameters, dict) and not conforms(call["arguments"], parameters):
                return False
    return True


def _triples(calls: Sequence[dict[str, Any]]) -> Counter[tuple[str, str, str]]:
    out: Counter[tuple[str, str, str]] = Counter()
    for call in calls:
        arguments = call["arguments"] if isinstance(call["arguments"], dict) else {"": call["arguments"]}
        out.update((call["name"], str(k), canonical_json(v)) for k, v in arguments.items())
        if not arguments:
            out[(call["name"], "", "")] += 1
    return out


def tool_call_scores(prediction: str, reference: list[dict[str, Any]],
                     tools: Sequence[dict[str, Any]] | None) -> dict[str, float]:
    ok, value = strict_json(prediction)
    calls = parse_calls(prediction)
    names = [c["name"] for c in calls or ()]
    exact = calls is not None and [(c["name"], canonical_json(c["arguments"])) for c in calls] == [
        (c["name"], canonical_json(c["arguments"])) for c in reference]
    gold, got = _triples(reference), _triples(calls or [])
    common = sum((gold & got).values())
    f1 = 0.0 if common == 0 else 2 * common / (sum(gold.values()) + sum(got.values()))
    return {
        "json_valid": float(ok),
        "schema_valid": float(ok and _calls_conform(calls_in(value), tools)),
        "tool_name_accuracy": float(names == [c["name"] for c in reference]),
        "tool_args_accuracy": float(exact),
        "tool_args_f1": f1,
    }
