"""PII detection: published test numbers, checksum properties, and text that must not match.

Valid card numbers are the payment networks' published test numbers; IBANs are the examples of the
national banking associations (as listed in the ISO 13616 registry); further IBANs are generated
with the ISO 7064 formula for check digits, written here independently of the module.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ragtune.govern.pii import KINDS, find_pii, iban_valid, luhn_valid, redact

CARDS = [
    "4111111111111111",  # Visa
    "4012888888881881",  # Visa
    "5555555555554444",  # Mastercard
    "5105105105105100",  # Mastercard
    "2223003122003222",  # Mastercard 2-series
    "378282246310005",  # American Express
    "371449635398431",  # American Express
    "6011111111111117",  # Discover
    "3530111333300000",  # JCB
    "30569309025904",  # Diners Club
]
IBANS = [
    "GB82 WEST 1234 5698 7654 32",
    "DE89 3704 0044 0532 0130 00",
    "FR14 2004 1010 0505 0001 3M02 606",
    "NL91 ABNA 0417 1643 00",
    "CH93 0076 2011 6238 5295 7",
    "BE68 5390 0754 7034",
    "ES91 2100 0418 4502 0005 1332",
]


def _kinds(text: str) -> list[tuple[str, str]]:
    return [(f.kind, f.value) for f in find_pii(text)]


def _grouped(card: str) -> str:
    if len(card) == 15:
        return f"{card[:4]} {card[4:10]} {card[10:]}"
    return " ".join(card[i:i + 4] for i in range(0, len(card), 4))


@pytest.mark.parametrize("card", CARDS)
def test_published_card_numbers_are_found_plain_and_grouped(card: str) -> None:
    assert luhn_valid(card)
    assert _kinds(f"charge {card} today") == [("credit_card", card)]
    grouped = _grouped(card)
    assert _kinds(f"card: {grouped}.") == [("credit_card", grouped)]
    dashed = grouped.replace(" ", "-")
    assert _kinds(f"card: {dashed}") == [("credit_card", dashed)]


@pytest.mark.parametrize("card", CARDS)
def test_every_single_digit_error_breaks_luhn(card: str) -> None:
    for position in range(len(card)):
        for digit in "0123456789":
            if digit == card[position]:
                continue
            wrong = card[:position] + digit + card[position + 1:]
            assert not luhn_valid(wrong), wrong
            assert all(f.kind != "credit_card" for f in find_pii(wrong)), wrong


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789", min_size=12, max_size=18))
def test_exactly_one_check_digit_completes_a_number(prefix: str) -> None:
    assert sum(luhn_valid(prefix + d) for d in "0123456789") == 1


@pytest.mark.parametrize("iban", IBANS)
def test_published_ibans_are_found(iban: str) -> None:
    assert iban_valid(iban)
    assert _kinds(f"Pay to {iban} by Friday") == [("iban", iban)]
    compact = iban.replace(" ", "")
    assert _kinds(f"IBAN:{compact}") == [("iban", compact)]
    # A following upper-case word is not swallowed into the account number.
    assert _kinds(f"{iban} NOW") == [("iban", iban)]


@pytest.mark.parametrize("iban", IBANS)
def test_every_single_digit_error_breaks_an_iban(iban: str) -> None:
    compact = iban.replace(" ", "")
    for position in range(2, len(compact)):
        if not compact[position].isdigit():
            continue
        for digit in "0123456789":
            if digit != compact[position]:
                wrong = compact[:position] + digit + compact[position + 1:]
                assert not iban_valid(wrong), wrong
                assert find_pii(wrong) == [] or find_pii(wrong)[0].kind != "iban"


def _iso7064_check(country: str, bban: str) -> str:
    """Check digits by the textbook formula: 98 - (BBAN + country as digits + "00") mod 97."""
    digits = "".join(str(ord(c) - 55) if c.isalpha() else c for c in bban + country + "00")
    return f"{98 - int(digits) % 97:02d}"


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789", min_size=18, max_size=18))
def test_generated_german_ibans_validate(account: str) -> None:
    iban = "DE" + _iso7064_check("DE", account) + account
    assert iban_valid(iban)
    assert _kinds(f"konto {iban}") == [("iban", iban)]


@pytest.mark.parametrize("text, expected", [
    ("mail jane.doe+hr@example.co.uk please", [("email", "jane.doe+hr@example.co.uk")]),
    ("call (555) 123-4567 or 555-987-6543", [("phone", "(555) 123-4567"), ("phone", "555-987-6543")]),
    ("office +44 20 7946 0958, mobile +14155552671", [("phone", "+44 20 7946 0958"), ("phone", "+14155552671")]),
    ("SSN 123-45-6789", [("us_ssn", "123-45-6789")]),
    ("server at 192.168.10.254 is down", [("ip_address", "192.168.10.254")]),
    ("a@b.io and 4111 1111 1111 1111", [("email", "a@b.io"), ("credit_card", "4111 1111 1111 1111")]),
])
def test_findings_in_text(text: str, expected: list[tuple[str, str]]) -> None:
    assert _kinds(text) == expected
    for finding in find_pii(text):
        assert text[finding.start:finding.end] == finding.value
        assert finding.kind in KINDS


@pytest.mark.parametrize("text", [
    "In 1999 there were 12,345 people; by 2024-01-15 there were 1,000,000.",
    "256626720691 + 1646615806005 = 4212883012996",  # sums in the DPO demo: long numbers, not cards
    "472547338 + 960397912423686 = 960398384971024",
    "4111 1111 1111 1112 fails Luhn",
    "GB82 WEST 1234 5698 7654 33 has wrong check digits",
    "SSN 000-12-3456 and 666-12-3456 are never issued",
    "999.1.1.1 is no address, nor is 256.0.0.1",
    "the price is $1,234.56 (ISBN 978-3-16-148410-0)",
    "email me at name at example dot com",
])
def test_no_false_positives(text: str) -> None:
    assert find_pii(text) == []


def test_redact_replaces_each_finding_with_its_kind() -> None:
    text = "Jane <jane@corp.example>, card 5555 5555 5555 4444, IBAN DE89370400440532013000, tel +33 1 42 68 53 00."
    assert redact(text) == "Jane <[EMAIL]>, card [CREDIT_CARD], IBAN [IBAN], tel [PHONE]."
    assert find_pii(redact(text)) == []
    plain = "No personal data here, only 42 apples."
    assert redact(plain) == plain


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_redaction_leaves_nothing_to_find(text: str) -> None:
    assert find_pii(redact(text)) == []
