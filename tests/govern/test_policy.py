"""Policy files (issue 20, part 5): what parses, every problem with its line, and how an API key's
policy is added to a collection's (the stricter rule wins). No database: parsing and combining."""

from __future__ import annotations

import pytest

from ragtune.errors import PolicyError
from ragtune.govern.pii import known_entities
from ragtune.govern.policy import combined, parse_policy

FULL = """
[pii]
min_score = 0.5
phone_regions = ["US"]
[pii.entities]
EMAIL_ADDRESS = "redact"
US_SSN = "flag"

[injection]
action = "quarantine"
threshold = 0.6

[answers]
disclaimer = "Not legal advice."
max_sources = 5
generators = ["local", "extractive"]
[[answers.blocked_topics]]
topic = "salaries"
terms = ["salary", "pay band"]
reason = "ask HR"
"""


def test_a_full_policy_parses_into_its_rules() -> None:
    policy = parse_policy(FULL, known_entities=known_entities)
    assert policy.pii.actions == {"EMAIL_ADDRESS": "redact", "US_SSN": "flag"} and policy.pii.min_score == 0.5
    assert policy.pii.watched == ("EMAIL_ADDRESS", "US_SSN") and policy.pii.phone_regions == ("US",)
    assert (policy.injection.action, policy.injection.threshold) == ("quarantine", 0.6)
    assert policy.answers.max_sources == 5 and policy.answers.generators == ("local", "extractive")
    topic = policy.answers.blocked("What is my pay band?")
    assert topic is not None and topic.topic == "salaries"
    assert policy.answers.blocked("How do I pay for parking?") is None  # words, not substrings
    assert policy.answers.blocked("What is the SALARY of a clerk?") is not None
    assert parse_policy("").rules() == parse_policy("# nothing\n").rules()


@pytest.mark.parametrize("source, line, words", [
    ("[pii\nx = 1", None, "not valid TOML"),
    ('[pii.entities]\nE_MAIL = "redact"', 2, "unknown PII entity type 'E_MAIL'"),
    ('[pii.entities]\nUS_SSN = "shred"', 2, "one of allow, flag, redact, pseudonymize, refuse"),
    ("[pii]\nmin_score = 2", 2, "min_score must be a number from 0 to 1"),
    ('[pii]\nphone_regions = ["usa"]', 2, "not an ISO 3166"),
    ('[injection]\naction = "delete"', 2, "off, warn, demote, quarantine"),
    ("[answers]\n\nmax_sources = true", 3, "whole number"),
    ('[[answers.blocked_topics]]\ntopic = "pay"\nterms = ["salary"]', 1, "needs a reason"),
    ('[[answers.blocked_topics]]\ntopic = "pay"\nterms = []\nreason = "x"', 3, "list of non-empty strings"),
    ("[answers]\ncolour = 1", 2, "unknown key 'colour'"),
    ("[rules]\nx = 1", 1, "unknown section [rules]"),
])
def test_each_problem_is_named_with_its_line(source: str, line: int | None, words: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(source, name="p.toml", known_entities=known_entities)
    [problem] = caught.value.problems
    assert words in problem
    assert problem.startswith(f"p.toml:{line}:" if line else "p.toml: ")


def test_every_problem_is_listed_in_line_order() -> None:
    source = '[answers]\nmax_sources = -1\n[pii.entities]\nE = "redact"\nUS_SSN = "x"\n'
    with pytest.raises(PolicyError) as caught:
        parse_policy(source, name="p.toml", known_entities=known_entities)
    assert [p.split(":")[1] for p in caught.value.problems] == ["2", "4", "5"]


def test_a_keys_policy_adds_the_stricter_rules() -> None:
    collection = parse_policy(FULL, known_entities=known_entities, version=3)
    key = parse_policy("""
[pii.entities]
US_SSN = "refuse"
EMAIL_ADDRESS = "flag"
PHONE_NUMBER = "redact"
[answers]
disclaimer = "For staff only."
max_sources = 3
generators = ["extractive"]
[[answers.blocked_topics]]
topic = "layoffs"
terms = ["layoff"]
reason = "not before the announcement"
""", known_entities=known_entities, version=2)
    both = combined(collection, key)
    assert both.pii.actions == {"EMAIL_ADDRESS": "redact", "US_SSN": "refuse", "PHONE_NUMBER": "redact"}
    assert both.answers.max_sources == 3 and both.answers.generators == ("extractive",)
    assert both.answers.disclaimer == "Not legal advice.\n\nFor staff only."
    assert {t.topic for t in both.answers.blocked_topics} == {"salaries", "layoffs"}
    assert both.injection == collection.injection  # what is stored is the collection's business
    assert (both.version, both.key_version) == (3, 2)
    disjoint = combined(collection, parse_policy('[answers]\ngenerators = ["openai:gpt-4o"]'))
    assert "no generator in common" in disjoint.answers.generators[0]
