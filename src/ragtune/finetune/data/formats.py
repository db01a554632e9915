"""Training-example files in, the internal chat form out (:class:`~ragtune.finetune.data.examples.Example`).

Formats read:

* ``chat``: OpenAI chat JSONL, ``{"messages": [...], "tools": [...]}``; also OpenAI's preference
  rows ``{"input": {"messages", "tools"}, "preferred_output": [...], "non_preferred_output": [...]}``
  and ``{"messages", "chosen", "rejected"}``;
* ``alpaca``: ``instruction``, ``input``, ``output``, optional ``system`` and ``history``
  (``[[question, answer], ...]``), or ``chosen``/``rejected`` instead of ``output``;
* ``sharegpt``: ``conversations`` of ``{"from", "value"}`` turns (``human``, ``gpt``, ``system``,
  ``function_call``, ``observation``), optional ``system`` and ``tools`` (a JSON string or a list),
  and for preference rows ``chosen`` and ``rejected`` (the DPO demo format of LLaMA-Factory).

A file is a JSON list or JSON Lines, whatever its suffix. Each row keeps the line it starts on.
A malformed line, or a row that does not fit its format, becomes a :class:`SchemaIssue` with that
line number; the other rows are kept. Only a file that cannot be read at all raises.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.errors import DatasetError
from ragtune.finetune.data.examples import Example, Message, canonical_json

FORMATS = ("chat", "alpaca", "sharegpt")

_CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
               "tool": "tool", "function": "tool"}
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "model": "assistant", "chatgpt": "assistant", "system": "system", "observation": "tool",
                   "tool": "tool", "function": "tool", "function_call": "assistant"}


@dataclass(frozen=True)
class SchemaIssue:
    line: int
    message: str


@dataclass(frozen=True)
class ParsedFile:
    source: str
    format: str
    examples: list[Example]
    issues: list[SchemaIssue]
    records: int  # rows read, good and bad
    fields: list[str] = field(default_factory=list)  # keys seen in the good rows


class _Bad(ValueError):
    """A row that does not fit its format; becomes a SchemaIssue with the row's line."""


# -- reading -----------------------------------------------------------------------------------
def read_records(data: bytes, source: str) -> tuple[list[tuple[int, Any]], list[SchemaIssue]]:
    """``(line, value)`` of every row of a JSON list or JSON Lines file, and the lines that could
    not be read. A JSON list that does not parse raises ``DatasetError`` with the line: past a syntax
    error its items cannot be told apart."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if data.lstrip()[:1] == b"[":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{source}: not UTF-8 (byte {exc.start})") from None
        return _read_array(text, source), []
    records: list[tuple[int, Any]] = []
    issues: list[SchemaIssue] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            records.append((number, json.loads(raw.decode("utf-8"))))
        except UnicodeDecodeError as exc:
            issues.append(SchemaIssue(number, f"not UTF-8 (byte {exc.start} of the line)"))
        except json.JSONDecodeError as exc:
            issues.append(SchemaIssue(number, f"invalid JSON: {exc.msg} (column {exc.colno})"))
    if not records and len(issues) > 1:
        # Perhaps one pretty-printed object rather than JSON Lines.
        try:
            whole = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return records, issues
        if isinstance(whole, dict):
            return [(1, whole)], []
    return records, issues


def _read_array(text: str, source: str) -> list[tuple[int, Any]]:
    decoder = json.JSONDecoder()
    out: list[tuple[int, Any]] = []
    pos, line, counted = text.index("[") + 1, 1, 0

    def skip(at: int) -> int:
        while at < len(text) and text[at] in " \t\r\n":
            at += 1
        return at

    try:
        pos = skip(pos)
        if pos < len(text) and text[pos] == "]":
            return out
        while True:
            line += text.count("\n", counted, pos)
            counted = pos
            value, pos = decoder.raw_decode(text, pos)
            out.append((line, value))
            pos = skip(pos)
            if pos < len(text) and text[pos] == ",":
                pos = skip(pos + 1)
                continue
            if pos < len(text) and text[pos] == "]":
                return out
            raise json.JSONDecodeError("expected ',' or ']'", text, pos)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{source}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None


def detect_format(records: list[tuple[int, Any]], source: str = "input") -> str:
    votes: Counter[str] = Counter()
    for _, record in records[:200]:
        if not isinstance(record, dict):
            continue
        if "messages" in record or "preferred_output" in record:
            votes["chat"] += 1
        elif "conversations" in record:
            votes["sharegpt"] += 1
        elif "instruction" in record:
            votes["alpaca"] += 1
    if not votes:
        first = next((sorted(r) for _, r in records if isinstance(r, dict)), None)
        raise DatasetError(f"{source}: cannot tell the format (keys {first}); pass --format chat|alpaca|sharegpt")
    return votes.most_common(1)[0][0]


def parse_bytes(data: bytes, *, source: str, format: str = "auto") -> ParsedFile:
    if format not in (*FORMATS, "auto"):
        raise DatasetError(f"unknown dataset format {format!r}; use one of {', '.join(FORMATS)} or auto")
    records, issues = read_records(data, source)
    total = len(records) + len(issues)
    if format == "auto":
        format = detect_format(records, source) if records else "chat"
    normalise = {"chat": _chat, "alpaca": _alpaca, "sharegpt": _sharegpt}[format]
    examples: list[Example] = []
    fields: set[str] = set()
    for line, record in records:
        try:
            if not isinstance(record, dict):
                raise _Bad(f"expected a JSON object, got {type(record).__name__}")
            example = normalise(line, record)
            if "\x00" in canonical_json(example.content()):
                raise _Bad("contains a NUL character")
        except _Bad as exc:
            issues.append(SchemaIssue(line, str(exc)))
            continue
        examples.append(example)
        fields.update(record)
    issues.sort(key=lambda i: i.line)
    return ParsedFile(source, format, examples, issues, total, sorted(fields))


def parse_file(path: Path, format: str = "auto") -> ParsedFile:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_bytes(data, source=str(path), format=format)


# -- one normaliser per format -----------------------------------------------------------------
def _text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # OpenAI content parts
        parts = [p.get("text") for p in value if isinstance(p, dict) and p.get("type") == "text"]
        if len(parts) == len(value) and all(isinstance(p, str) for p in parts):
            return "".join(parts)  # type: ignore[arg-type]
        raise _Bad(f"{where}: only text content parts are supported")
    raise _Bad(f"{where}: content must be a string, got {type(value).__name__}")


def _json_value(value: Any, where: str) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value) if value.strip() else None
        except json.JSONDecodeError as exc:
            raise _Bad(f"{where} is not valid JSON: {exc.msg}") from None
    return value


def _tool_call(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Bad(f"{where}: a tool call must be an object")
    fn = value.get("function", value)
    name, args = (fn.get("name"), fn.get("arguments", {})) if isinstance(fn, dict) else (None, None)
    if not isinstance(name, str) or not name:
        raise _Bad(f"{where}: tool call without a name")
    args = _json_value(args, f"{where}: arguments of {name!r}")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise _Bad(f"{where}: arguments of {name!r} must be a JSON object")
    return {"type": "function", "function": {"name": name, "arguments": args}}


def _tools(value: Any, where: str = "tools") -> list[dict[str, Any]] | None:
    value = _json_value(value, where)
    if value is None or value == []:
        return None
    if not isinstance(value, list):
        raise _Bad(f"{where} must be a list of functions")
    out = []
    for i, tool in enumerate(value):
        fn = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _Bad(f"{where}[{i}] is not a function with a name")
        out.append({"type": "function", "function": fn})
    return out


def _chat_message(m: Any, where: str) -> Message:
    if not isinstance(m, dict):
        raise _Bad(f"{where} must be an object")
    role = _CHAT_ROLES.get(m.get("role"))  # type: ignore[arg-type]
    if role is None:
        raise _Bad(f"{where}: unknown role {m.get('role')!r}")
    calls = m.get("tool_calls") or ([m["function_call"]] if m.get("function_call") else [])
    if calls and role != "assistant":
        raise _Bad(f"{where}: only assistant turns call tools")
    content = m.get("content")
    out: Message = {"role": role, "content": "" if content is None and calls else _text(content, where)}
    if calls:
        if not isinstance(calls, list):
            raise _Bad(f"{where}: tool_calls must be a list")
        out["tool_calls"] = [_tool_call(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(calls)]
    return out


def _chat_messages(value: Any, where: str) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise _Bad(f"{where} must be a non-empty list")
    return [_chat_message(m, f"{where}[{i}]") for i, m in enumerate(value)]


def _reply(value: Any, where: str, read: Callable[[Any, str], Message]) -> Message:
    if isinstance(value, list):
        if len(value) != 1:
            raise _Bad(f"{where} must hold exactly one assistant message")
        value = value[0]
    if isinstance(value, str):
        return {"role": "assistant", "content": value}
    message = read(value, where)
    if message["role"] != "assistant":
        raise _Bad(f"{where} must be an assistant message, not {message['role']}")
    return message


def _chat(line: int, record: dict[str, Any]) -> Example:
    if "preferred_output" in record:
        prompt = record.get("input")
        if not isinstance(prompt, dict):
            raise _Bad("'input' must be an object with 'messages'")
        messages = _chat_messages(prompt.get("messages"), "input.messages")
        chosen = _reply(record.get("preferred_output"), "preferred_output", _chat_message)
        rejected = _reply(record.get("non_preferred_output"), "non_preferred_output", _chat_message)
        return _checked(Example(line, messages, _tools(prompt.get("tools")), chosen, rejected))
    if "messages" not in record:
        raise _Bad("missing 'messages'")
    messages = _chat_messages(record["messages"], "messages")
    tools = _tools(record.get("tools") or record.get("functions"))
    if "chosen" in record or "rejected" in record:
        chosen = _reply(record.get("chosen"), "chosen", _chat_message)
        rejected = _reply(record.get("rejected"), "rejected", _chat_message)
        return _checked(Example(line, messages, tools, chosen, rejected))
    return _checked(Example(line, messages, tools))


def _string_field(record: dict[str, Any], key: str, *, required: bool) -> str:
    value = record.get(key)
    if value is None:
        if required:
            raise _Bad(f"missing '{key}'")
        return ""
    if not isinstance(value, str):
        raise _Bad(f"'{key}' must be a string, got {type(value).__name__}")
    return value


def _alpaca(line: int, record: dict[str, Any]) -> Example:
    instruction = _string_field(record, "instruction", required=True)
    query = "\n".join(p for p in (instruction, _string_field(record, "input", required=False)) if p)
    messages: list[Message] = []
    system = _string_field(record, "system", required=False)
    if system:
        messages.append({"role": "system", "content": system})
    history = record.get("history") or []
    if not isinstance(history, list):
        raise _Bad("'history' must be a list of [question, answer] pairs")
    for i, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise _Bad(f"history[{i}] must be a [question, answer] pair of strings")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    messages.append({"role": "user", "content": query})
    if "chosen" in record or "rejected" in record:
        chosen = _string_field(record, "chosen", required=True)
        rejected = _string_field(record, "rejected", required=True)
        return _checked(Example(line, messages, None, {"role": "assistant", "content": chosen},
                                {"role": "assistant", "content": rejected}))
    messages.append({"role": "assistant", "content": _string_field(record, "output", required=True)})
    return _checked(Example(line, messages))


def _sharegpt_turn(turn: Any, where: str) -> Message:
    if not isinstance(turn, dict):
        raise _Bad(f"{where} must be an object")
    tag = turn.get("from", turn.get("role"))
    role = _SHAREGPT_ROLES.get(tag)  # type: ignore[arg-type]
    if role is None:
        raise _Bad(f"{where}: unknown role {tag!r}")
    value = _text(turn.get("value", turn.get("content")), where)
    if tag == "function_call":
        calls = _json_value(value, f"{where} (function_call)")
        calls = calls if isinstance(calls, list) else [calls]
        return {"role": "assistant", "content": "",
                "tool_calls": [_tool_call(c, f"{where}.function_call") for c in calls]}
    return {"role": role, "content": value}


def _sharegpt(line: int, record: dict[str, Any]) -> Example:
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise _Bad("missing 'conversations' (a non-empty list)")
    messages = [_sharegpt_turn(t, f"conversations[{i}]") for i, t in enumerate(turns)]
    system = _string_field(record, "system", required=False)
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    tools = _tools(record.get("tools"))
    if "chosen" in record or "rejected" in record:
        chosen = _reply(record.get("chosen"), "chosen", _sharegpt_turn)
        rejected = _reply(record.get("rejected"), "rejected", _sharegpt_turn)
        return _checked(Example(line, messages, tools, chosen, rejected))
    return _checked(Example(line, messages, tools))


def _checked(example: Example) -> Example:
    """Rules every format shares: some user turn; a reply to learn from; system only first."""
    roles = [m["role"] for m in example.messages]
    if "user" not in roles:
        raise _Bad("no user turn")
    if "system" in roles[1:]:
        raise _Bad(f"a system message at position {roles.index('system', 1)}; only the first turn may be one")
    if example.kind == "preference":
        if roles[-1] == "assistant":
            raise _Bad("a preference prompt must end with a user or tool turn, before chosen/rejected")
    elif "assistant" not in roles:
        raise _Bad("no assistant turn to learn from")
    return example
