"""The gates in front of Presidio's recognizers (``govern.presidio.gate_of``) skip texts, never findings.

A gated detector and one that runs every recognizer on every text (``gated=False``) must agree on
every text: values Faker makes for many countries in sentences with context words, and arbitrary
strings of the characters the gates look at.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ragtune.govern.pii import NER_ENTITIES, PiiDetector, known_entities

pytest.importorskip("presidio_analyzer")

GATED = ("CREDENTIAL", "CREDIT_CARD", "EMAIL_ADDRESS", "IBAN_CODE", "IP_ADDRESS", "PHONE_NUMBER", "URL", "US_SSN")
PRESIDIO_REGIONS = ("US", "GB", "DE", "FR", "IL", "IN", "CA", "BR")
LOCALES = ("en_US", "en_GB", "de_DE", "de_AT", "fr_FR", "he_IL", "en_IN", "pt_BR", "en_CA", "it_IT", "es_ES",
           "nl_NL", "pl_PL", "ja_JP", "zh_CN", "ru_RU", "sv_SE", "en_AU", "ar_AA", "lu_LU")
CONTEXT = ("phone", "call", "card", "iban", "ssn", "ip", "mail", "bank", "key", "token", "")


def _values(seed: int) -> list[str]:
    from faker import Faker

    values: list[str] = []
    for locale in LOCALES:
        try:
            fake = Faker(locale)
        except AttributeError:  # a locale this Faker does not have
            continue
        fake.seed_instance(seed)
        for _ in range(12):
            values.append(fake.phone_number())
        for method in ("email", "url", "ipv4", "ipv6", "credit_card_number", "iban", "ssn", "date", "msisdn",
                       "postcode", "bban", "domain_name", "uri", "mac_address", "isbn13", "ean13"):
            if hasattr(fake, method):
                values.append(str(getattr(fake, method)()))
    return values


def _sentences(seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for value in _values(seed):
        word = rng.choice(CONTEXT)
        year, share = rng.randint(1000, 2099), rng.randint(1, 999) / 10
        out.append(f"{word.title()} {value}. In {year} it was {share}%")
        out.append(f"({value})")  # value at the very edges and bracketed
        out.append(value)
    return out


@pytest.fixture(scope="module")
def every_type() -> tuple[PiiDetector, PiiDetector]:
    entities = [e for e in known_entities() if e not in NER_ENTITIES]  # patterns: the NER tier has no gate
    return (PiiDetector(entities, phone_regions=PRESIDIO_REGIONS, min_score=0.0),
            PiiDetector(entities, phone_regions=PRESIDIO_REGIONS, min_score=0.0, gated=False))


@pytest.mark.parametrize("regions", [("US", "GB"), PRESIDIO_REGIONS, ("DE",)])
def test_gates_lose_no_finding_on_values_from_many_countries(regions: tuple[str, ...]) -> None:
    gated = PiiDetector(GATED, phone_regions=regions, min_score=0.0)
    reference = PiiDetector(GATED, phone_regions=regions, min_score=0.0, gated=False)
    texts = _sentences(seed=3)
    found = 0
    for text in texts:
        expected = reference.find(text)
        assert gated.find(text) == expected, text
        found += bool(expected)
    assert found > len(texts) // 3  # the sample holds findings of every kind, not only misses


def test_gates_lose_no_finding_of_any_presidio_type(every_type: tuple[PiiDetector, PiiDetector]) -> None:
    gated, reference = every_type
    found = 0
    for text in _sentences(seed=11)[::2]:
        expected = reference.find(text)
        assert gated.find(text) == expected, text
        found += len({f.entity for f in expected} - set(GATED))
    assert found  # types behind the plain "a digit" gate were found too


_ALPHABET = "0123456789 -.:+()/@x#\nAaBbDdEeFfZzKk_"
# URLs and e-mail addresses: their recognizers blank the runs between white space that cannot hold
# one; U+001C and U+00A0 are white space to Python and not to Presidio's regex module, or the reverse
_WEB_ALPHABET = "ab.-/@ \x1c\xa0\t\"'<:wsthpcomCOMuk1"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=_ALPHABET, min_size=1, max_size=40))
def test_gates_lose_no_finding_on_arbitrary_strings(text: str) -> None:
    gated, reference = _pair()
    assert gated.find(text) == reference.find(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["http://", "www.", "a.com", "b.co.uk", "x@y.org", "/p", "..", "'", '"', " ",
                                 "\x1c", "\xa0", "\t", "q", "A.B", "COM"]), max_size=12).map("".join)
       | st.text(alphabet=_WEB_ALPHABET, min_size=1, max_size=40))
@example("see a.com/p\x1cq now")  # U+001C is in a URL's path for Presidio; str.isspace() says white space
def test_blanking_word_runs_loses_no_url_or_address(text: str) -> None:
    gated, reference = _pair()
    assert gated.find(text) == reference.find(text)


@lru_cache(maxsize=1)
def _pair() -> tuple[PiiDetector, PiiDetector]:  # hypothesis calls the test without fixtures per example
    return (PiiDetector(GATED, phone_regions=PRESIDIO_REGIONS, min_score=0.0),
            PiiDetector(GATED, phone_regions=PRESIDIO_REGIONS, min_score=0.0, gated=False))


def test_a_gate_that_is_not_a_necessary_condition_is_caught() -> None:
    """The comparison has teeth: a card gate wanting 17 digits loses the 16-digit cards Faker makes."""
    too_strict = PiiDetector(("CREDIT_CARD",), min_score=0.0)
    too_strict._gates = ((("CREDIT_CARD",), re.compile(r"\d(?:[- ]?\d){16}")),)
    reference = PiiDetector(("CREDIT_CARD",), min_score=0.0, gated=False)
    lost = [t for t in _sentences(seed=3) if too_strict.find(t) != reference.find(t)]
    assert lost


def test_a_credential_with_no_digit_is_looked_for() -> None:
    """CREDENTIAL's gate is each pattern's fixed beginning: an AWS key id of letters only (about 1 in
    200 are) is found, as it was not when every type was assumed to need a digit."""
    [finding] = PiiDetector(("CREDENTIAL",)).find("aws_access_key_id = AKIAQWERTYUIOPASDFGH")
    assert finding.entity == "CREDENTIAL"
