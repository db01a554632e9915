"""A collection's policy applied to an answer (``Ragtune.ask``): before the search, a blocked topic,
a generator the policy does not allow and its cap on sources; after the answer, its PII rules and
its disclaimer. Every decision is returned as plain data for the answer's span and audit event.

An answer under a PII policy leaves whole: its text, sentences, citations and prompt are screened
(``refuse`` withholds the answer and says why), so it cannot stream token by token: ``on_token``
gets the screened text once (``held_tokens``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ragtune.errors import PermissionDeniedError
from ragtune.govern.pii import PiiPolicy, apply_policy
from ragtune.govern.policy import BlockedTopic, Policy
from ragtune.models import Answer, Message

POLICY_MODEL = "policy"


def check_generator(policy: Policy, collection: str, generator: str) -> None:
    allowed = policy.answers.generators
    if allowed and generator not in allowed:
        whose = f"collection {collection!r}'s policy (version {policy.version})" + (
            f" with the API key's (version {policy.key_version})" if policy.key_version else "")
        raise PermissionDeniedError(f"{whose} allows the generators {', '.join(allowed)}, not {generator!r}")


def blocked_answer(question: str, topic: BlockedTopic, policy: Policy) -> tuple[Answer, dict[str, Any]]:
    """The refusal of a question on a blocked topic: no search, no generator, the stated reason."""
    text = f"This question is about {topic.topic}, which this collection does not answer: {topic.reason}"
    if policy.answers.disclaimer:
        text = f"{text}\n\n{policy.answers.disclaimer}"
    decisions = {**_versions(policy), "blocked": topic.topic}
    return Answer(question=question, text=text, citations=[], hits=[], model=POLICY_MODEL, abstained=True,
                  grounded=False, decided_by="policy"), decisions


def _versions(policy: Policy) -> dict[str, Any]:
    """Which policies decided: the collection's version, and the API key's when one was added."""
    return {"version": policy.version, **({"key_version": policy.key_version} if policy.key_version else {})}


def held_tokens(policy: Policy, on_token: Callable[[str], None] | None) -> Callable[[str], None] | None:
    """What the generator streams to: nothing when the policy screens answers (they leave whole)."""
    return None if policy.pii.watched else on_token


def apply_answer_policy(answer: Answer, policy: Policy) -> tuple[Answer, dict[str, Any]]:
    """``answer`` screened by the policy's PII rules, with its disclaimer; and the decisions made."""
    decisions: dict[str, Any] = _versions(policy)
    if policy.answers.max_sources:
        decisions["max_sources"] = policy.answers.max_sources
    if policy.pii.watched:
        answer, found = _screened(answer, policy.pii)
        if found:
            decisions["pii"] = found
    flagged = [h for h in answer.hits if h.injection_flag]
    if flagged:
        decisions["injection"] = {"action": policy.injection.action,
                                  "chunks": [h.chunk.id for h in flagged]}
        if policy.injection.action == "warn":
            uris = ", ".join(sorted({h.uri for h in flagged}))
            answer = dataclasses.replace(answer, text=f"{answer.text}\n\nWarning: {len(flagged)} source(s) ({uris}) "
                                                      "hold text that reads as instructions to an AI model; "
                                                      "this answer may follow them.")
    if policy.answers.disclaimer:
        answer = dataclasses.replace(answer, text=f"{answer.text}\n\n{policy.answers.disclaimer}")
        decisions["disclaimer"] = True
    return answer, decisions


def _screened(answer: Answer, pii: PiiPolicy) -> tuple[Answer, dict[str, Any]]:
    """The answer's texts screened: a refused type in the answer itself withholds it; elsewhere
    (sources, prompt) a refused value is redacted, as the answer is withheld or does not use it."""
    counts: dict[str, int] = {}
    refused: set[str] = set()
    shown = dataclasses.replace(pii, actions={e: "redact" if a == "refuse" else a for e, a in pii.actions.items()})

    def screen(text: str, *, answer_text: bool = False) -> str:
        result = apply_policy(text, pii if answer_text else shown)
        for entity, n in result.counts.items():
            counts[entity] = counts.get(entity, 0) + n
        refused.update(result.refused)
        return result.text

    text = screen(answer.text, answer_text=True)
    sentences = [dataclasses.replace(s, text=screen(s.text, answer_text=True)) for s in answer.sentences]
    citations = [dataclasses.replace(c, text=screen(c.text)) for c in answer.citations]
    prompt = [Message(m.role, screen(m.content)) for m in answer.prompt]
    # stored chunks were screened at ingest, unless their document predates the policy version
    hits = [dataclasses.replace(h, chunk=dataclasses.replace(h.chunk, text=screen(h.chunk.text))) for h in answer.hits]
    span = answer.span and dataclasses.replace(answer.span, text=screen(answer.span.text),
                                               sentence=screen(answer.span.sentence))
    found: dict[str, Any] = {"counts": dict(sorted(counts.items()))} if counts else {}
    if refused:
        kinds = ", ".join(sorted(refused))
        found["withheld"] = sorted(refused)
        return dataclasses.replace(
            answer, text=f"This answer was withheld: it contained personal data ({kinds}) that this collection's "
                         "policy does not let answers show.",
            sentences=[], citations=[], prompt=prompt, hits=hits, abstained=True, grounded=False,
            decided_by="policy", span=None), found
    return dataclasses.replace(answer, text=text, sentences=sentences, citations=citations, prompt=prompt,
                               hits=hits, span=span), found
