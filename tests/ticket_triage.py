"""The ticket-triage task of issue 18: six support tickets, their gold triage as JSON, a task spec
with enums, and a planted "model" whose replies are all valid JSON but mostly wrong: the category
right on 2 of 6 tickets (one of them outside the enum), the priority always "P3". Without a spec,
such replies score json_valid = schema_valid = 1.0; with it, the report must show what is wrong.

``Planted`` is a real ``Generator`` whose replies are planted, as the other evaluation tests plant
a model's outputs: it answers the ticket it finds in the last user message."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from ragtune.models import Completion, Message

SPEC: dict[str, Any] = {
    "task": "json",
    "description": "support ticket triage",
    "schema": {
        "type": "object", "required": ["category", "priority", "summary"], "additionalProperties": False,
        "properties": {"category": {"enum": ["billing", "bug", "account"]},
                       "priority": {"enum": ["P1", "P2", "P3"]},
                       "summary": {"type": "string", "maxLength": 80}},
    },
    "fields": {"category": "accuracy", "priority": ["accuracy", "exact"], "summary": "f1"},
}
# The same spec in TOML (a file named *.toml).
SPEC_TOML = """\
task = "json"
description = "support ticket triage"

[schema]
type = "object"
required = ["category", "priority", "summary"]
additionalProperties = false

[schema.properties.category]
enum = ["billing", "bug", "account"]

[schema.properties.priority]
enum = ["P1", "P2", "P3"]

[schema.properties.summary]
type = "string"
maxLength = 80

[fields]
category = "accuracy"
priority = ["accuracy", "exact"]
summary = "f1"
"""

# ticket text -> (gold triage, planted reply)
TICKETS: dict[str, tuple[dict[str, str], str]] = {
    "I was charged twice for my March invoice.": (
        {"category": "billing", "priority": "P2", "summary": "duplicate charge on the March invoice"},
        '{"category": "billing", "priority": "P3", "summary": "charged twice on the March invoice"}'),
    "The app crashes whenever I open the settings page.": (
        {"category": "bug", "priority": "P1", "summary": "app crashes when opening settings"},
        '{"category": "account", "priority": "P3", "summary": "app crashes in settings"}'),
    "I cannot log in since I reset my password yesterday.": (
        {"category": "account", "priority": "P1", "summary": "cannot log in after a password reset"},
        '{"category": "bug", "priority": "P3", "summary": "login fails"}'),
    "Please send me copies of last year's receipts.": (
        {"category": "billing", "priority": "P3", "summary": "copies of last year's receipts"},
        '{"category": "refund", "priority": "P3", "summary": "receipt copies"}'),  # not in the enum
    "Exporting to CSV gives me an empty file.": (
        {"category": "bug", "priority": "P2", "summary": "CSV export produces an empty file"},
        '```json\n{"category": "bug", "priority": "P3", "summary": "CSV export produces an empty file"}\n```'),
    "How do I change the email address on my profile?": (
        {"category": "account", "priority": "P3", "summary": "change the profile email address"},
        '{"category": "billing", "priority": "P3", "summary": "change email"}'),
}
GOLD = [gold for gold, _ in TICKETS.values()]
REPLIES = [reply for _, reply in TICKETS.values()]


class Planted:
    """Replies with the planted reply of the ticket quoted in the last user message; ``prose``
    answers every ticket in words instead (a base model that has not learnt the format)."""

    def __init__(self, name: str = "planted", *, prose: bool = False) -> None:
        self.name = name
        self.prose = prose
        self.prompts: list[list[Message]] = []

    def generate(self, messages: Sequence[Message], *, max_tokens: int = 256,
                 on_token: Callable[[str], None] | None = None) -> Completion:
        started = time.perf_counter()
        self.prompts.append(list(messages))
        last = next(m.content for m in reversed(messages) if m.role == "user")
        # a RAG prompt quotes other tickets as sources before the question: answer the question's
        asked = last.rpartition("Question:")[2].strip() if "Question:" in last else last
        ticket = next((t for t in TICKETS if t in asked), None)
        if ticket is None:
            raise AssertionError(f"no planted reply for the prompt {last[:200]!r}")
        text = f"This ticket is about: {ticket}" if self.prose else TICKETS[ticket][1]
        if on_token is not None:
            on_token(text)
        return Completion(text, self.name, prompt_tokens=len(last.split()), completion_tokens=len(text.split()),
                          seconds=time.perf_counter() - started)
