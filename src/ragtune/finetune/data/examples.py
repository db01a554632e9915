"""The internal chat form every dataset row becomes, whatever file format it came from.

An :class:`Example` is a list of messages ``{"role", "content"}`` with roles ``system``, ``user``,
``assistant`` and ``tool``; an assistant turn that calls tools carries ``tool_calls`` in the form
Hugging Face chat templates take (``[{"type": "function", "function": {"name", "arguments": {...}}}]``);
a row may declare the ``tools`` it can call (``[{"type": "function", "function": {"name",
"description", "parameters"}}]``); a preference (DPO) row has a ``chosen`` and a ``rejected``
assistant message after its prompt. ``formats`` reads files into this form; ``template_messages``
renders it for any chat template.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

Message = dict[str, Any]


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class Example:
    """One training row in the internal chat form; ``line`` is where it starts in its file."""

    line: int
    messages: list[Message]
    tools: list[dict[str, Any]] | None = None
    chosen: Message | None = None
    rejected: Message | None = None

    @property
    def kind(self) -> str:
        return "preference" if self.chosen is not None else "sft"

    def content(self) -> dict[str, Any]:
        """Everything but the line number: what is stored, hashed and compared."""
        out: dict[str, Any] = {"messages": self.messages}
        if self.tools is not None:
            out["tools"] = self.tools
        if self.chosen is not None:
            out["chosen"], out["rejected"] = self.chosen, self.rejected
        return out

    def replies(self) -> list[Message]:
        """The turns a model is trained to write: assistant messages, and the preference pair."""
        found = [m for m in self.messages if m["role"] == "assistant"]
        return found + [m for m in (self.chosen, self.rejected) if m is not None]

    def map_text(self, fn: Callable[[str], str]) -> Example:
        """The same row with ``fn`` applied to every content string and tool-call argument string."""
        def message(m: Message | None) -> Message | None:
            if m is None:
                return None
            out = {**m, "content": fn(m["content"])}
            if "tool_calls" in m:
                out["tool_calls"] = [
                    {**c, "function": {**c["function"], "arguments": _map_strings(c["function"]["arguments"], fn)}}
                    for c in m["tool_calls"]
                ]
            return out

        return replace(self, messages=[message(m) for m in self.messages],  # type: ignore[misc]
                       chosen=message(self.chosen), rejected=message(self.rejected))

    @classmethod
    def from_content(cls, line: int, content: dict[str, Any]) -> Example:
        """The inverse of :meth:`content`."""
        return cls(line, content["messages"], content.get("tools"), content.get("chosen"), content.get("rejected"))


def _map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    return value


def template_messages(example: Example, reply: Message | None = None) -> list[dict[str, str]]:
    """Plain ``{"role", "content"}`` messages any chat template renders, ``reply`` (a preference
    row's chosen or rejected turn) appended. Templates that ignore ``tools`` and ``tool_calls``
    (SmolLM2's does) would drop them, so tools go into the system message as JSON and a tool call
    becomes its JSON as the assistant's content: every token the model reads or writes is there."""
    messages = [*example.messages, *([reply] if reply is not None else [])]
    out: list[dict[str, str]] = []
    for m in messages:
        content = m["content"]
        calls = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                 for c in m.get("tool_calls", ())]
        if calls:
            content = (content + "\n" if content else "") + canonical_json(calls if len(calls) > 1 else calls[0])
        out.append({"role": m["role"], "content": content})
    if example.tools:
        declared = "Tools you can call: " + canonical_json([t["function"] for t in example.tools])
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + declared}
        else:
            out.insert(0, {"role": "system", "content": declared})
    return out
