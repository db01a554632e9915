"""PII detection with Presidio's recognizers as ragtune builds them (no NLP model, no download):
published test numbers, checksum properties, text that must not match; policies' actions, the
offsets map, pseudonyms and the vault; ragtune's own and a plugin's recognizer.

Valid card numbers are the payment networks' published test numbers; IBANs are the examples of the
national banking associations (as listed in the ISO 13616 registry); further IBANs are generated
with the ISO 7064 formula for check digits, written here independently of the module.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ragtune.errors import ConfigError
from ragtune.govern.pii import (
    DATASET_ENTITIES,
    PiiDetector,
    PiiPolicy,
    Vault,
    apply_policy,
    find_pii,
    known_entities,
    original_offset,
    redact,
)

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
    return [(f.entity, text[f.start:f.end]) for f in find_pii(text)]


def luhn_valid(digits: str) -> bool:
    """The Luhn check, written here independently of Presidio's."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """ISO 13616 mod 97, written here independently of Presidio's."""
    compact = iban.replace(" ", "")
    digits = "".join(str(int(c, 36)) for c in compact[4:] + compact[:4])
    return int(digits) % 97 == 1


def _grouped(card: str) -> str:
    if len(card) in (14, 15):  # Amex 4-6-5, Diners 4-6-4
        return f"{card[:4]} {card[4:10]} {card[10:]}"
    return " ".join(card[i:i + 4] for i in range(0, len(card), 4))


@pytest.mark.parametrize("card", CARDS)
def test_published_card_numbers_are_found_plain_and_grouped(card: str) -> None:
    assert luhn_valid(card)
    assert _kinds(f"charge {card} today") == [("CREDIT_CARD", card)]
    grouped = _grouped(card)
    assert _kinds(f"card: {grouped}.") == [("CREDIT_CARD", grouped)]
    dashed = grouped.replace(" ", "-")
    assert _kinds(f"card: {dashed}") == [("CREDIT_CARD", dashed)]


@pytest.mark.parametrize("card", CARDS)
def test_every_single_digit_error_breaks_luhn(card: str) -> None:
    for position in range(len(card)):
        for digit in "0123456789":
            if digit == card[position]:
                continue
            wrong = card[:position] + digit + card[position + 1:]
            assert not luhn_valid(wrong), wrong
            assert all(f.entity != "CREDIT_CARD" for f in find_pii(wrong)), wrong


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789", min_size=12, max_size=18))
def test_exactly_one_check_digit_completes_a_number(prefix: str) -> None:
    assert sum(luhn_valid(prefix + d) for d in "0123456789") == 1


@pytest.mark.parametrize("iban", IBANS)
def test_published_ibans_are_found(iban: str) -> None:
    assert iban_valid(iban)
    assert _kinds(f"Pay to {iban} by Friday") == [("IBAN_CODE", iban)]
    compact = iban.replace(" ", "")
    assert _kinds(f"IBAN:{compact}") == [("IBAN_CODE", compact)]
    # A following upper-case word is not swallowed into the account number.
    assert _kinds(f"{iban} NOW") == [("IBAN_CODE", iban)]


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
                assert find_pii(wrong) == [] or find_pii(wrong)[0].entity != "IBAN_CODE"


def _iso7064_check(country: str, bban: str) -> str:
    """Check digits by the textbook formula: 98 - (BBAN + country as digits + "00") mod 97."""
    digits = "".join(str(ord(c) - 55) if c.isalpha() else c for c in bban + country + "00")
    return f"{98 - int(digits) % 97:02d}"


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789", min_size=18, max_size=18))
def test_generated_german_ibans_validate(account: str) -> None:
    iban = "DE" + _iso7064_check("DE", account) + account
    assert iban_valid(iban)
    assert _kinds(f"konto {iban}") == [("IBAN_CODE", iban)]


@pytest.mark.parametrize("text, expected", [
    ("mail jane.doe+hr@example.co.uk please", [("EMAIL_ADDRESS", "jane.doe+hr@example.co.uk")]),
    ("call (202) 456-1111 or 415-555-2671", [("PHONE_NUMBER", "(202) 456-1111"), ("PHONE_NUMBER", "415-555-2671")]),
    ("office +44 20 7946 0958, mobile +14155552671",
     [("PHONE_NUMBER", "+44 20 7946 0958"), ("PHONE_NUMBER", "+14155552671")]),
    ("SSN 536-22-1234", [("US_SSN", "536-22-1234")]),
    ("server at 192.168.10.254 is down", [("IP_ADDRESS", "192.168.10.254")]),
    ("a@b.io and 4111 1111 1111 1111", [("EMAIL_ADDRESS", "a@b.io"), ("CREDIT_CARD", "4111 1111 1111 1111")]),
])
def test_findings_in_text(text: str, expected: list[tuple[str, str]]) -> None:
    assert _kinds(text) == expected
    for finding in find_pii(text):
        assert finding.entity in DATASET_ENTITIES and 0 < finding.score <= 1


@pytest.mark.parametrize("text", [
    "In 1999 there were 12,345 people; by 2024-01-15 there were 1,000,000.",
    "256626720691 + 4212883012996",  # sums in the DPO demo: long numbers, not cards (13 digits passing Luhn)
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
    text = "Jane <jane@corp.example.com>, card 5555 5555 5555 4444, IBAN DE89370400440532013000, tel +33 1 42 68 53 00."
    assert redact(text) == "Jane <<EMAIL_ADDRESS>>, card <CREDIT_CARD>, IBAN <IBAN_CODE>, tel <PHONE_NUMBER>."
    assert find_pii(redact(text)) == []
    plain = "No personal data here, only 42 apples."
    assert redact(plain) == plain


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_redaction_leaves_nothing_to_find(text: str) -> None:
    assert find_pii(redact(text)) == []


# -- policies: actions, offsets, pseudonyms, recognizers ----------------------------------------------
POLICY = PiiPolicy({"EMAIL_ADDRESS": "redact", "PHONE_NUMBER": "pseudonymize", "IBAN_CODE": "flag",
                    "US_SSN": "refuse", "CREDIT_CARD": "allow"})
VAULT = Vault("sixteen or more characters")


def test_each_action_does_what_it_says() -> None:
    text = "Mail jane@corp.example.com or ring +44 20 7946 0958; pay DE89370400440532013000 by 4111111111111111."
    out = apply_policy(text, POLICY, vault=VAULT)
    phone_token = VAULT.token("PHONE_NUMBER", "+44 20 7946 0958")
    assert out.text == (f"Mail <EMAIL_ADDRESS> or ring {phone_token}; pay DE89370400440532013000 by "
                        "4111111111111111.")
    assert out.counts == {"EMAIL_ADDRESS": 1, "IBAN_CODE": 1, "PHONE_NUMBER": 1}  # the card is allowed: not looked for
    assert [f.entity for f in out.flagged] == ["IBAN_CODE"] and out.refused == ()
    [sealed] = out.sealed
    assert sealed.token == phone_token and VAULT.open(sealed.token, sealed.sealed) == "+44 20 7946 0958"
    refused = apply_policy(f"{text} SSN 536-22-1234", POLICY, vault=VAULT)
    assert refused.refused == ("US_SSN",) and refused.text.endswith("536-22-1234")  # the caller refuses it


def test_pseudonyms_are_stable_per_key_and_only_that_key_opens_them() -> None:
    other = Vault("another key, also long enough")
    assert VAULT.token("EMAIL_ADDRESS", "a@b.io") == VAULT.token("EMAIL_ADDRESS", "a@b.io")
    assert VAULT.token("EMAIL_ADDRESS", "a@b.io") != other.token("EMAIL_ADDRESS", "a@b.io")
    assert VAULT.token("EMAIL_ADDRESS", "a@b.io") != VAULT.token("EMAIL_ADDRESS", "c@b.io")
    sealed = VAULT.seal("EMAIL_ADDRESS", "a@b.io")
    with pytest.raises(ConfigError, match="another key"):
        other.open(sealed.token, sealed.sealed)
    with pytest.raises(ConfigError, match="16 characters"):
        Vault("short")


def test_pseudonymizing_without_the_vault_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(Vault.ENV, raising=False)
    with pytest.raises(ConfigError, match=Vault.ENV):
        apply_policy("ring +44 20 7946 0958", POLICY)
    assert apply_policy("nothing personal", POLICY).text == "nothing personal"  # no finding: no key needed


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["word ", "jane@corp.example.com ", "+44 20 7946 0958 ", "x" * 30 + " ", "é "]),
                max_size=12))
def test_offsets_outside_replacements_map_back_to_the_same_character(parts: list[str]) -> None:
    text = "".join(parts)
    out = apply_policy(text, POLICY, vault=VAULT)
    inside = {i for r in out.replacements for i in range(r.start, r.end)}
    for i, ch in enumerate(out.text):
        if i not in inside:
            assert text[original_offset(out.replacements, i)] == ch
    for r in out.replacements:
        assert text[r.original_start:r.original_end] in ("jane@corp.example.com", "+44 20 7946 0958")
        assert original_offset(out.replacements, r.start + 1) == r.original_start


def test_overlapping_findings_keep_the_stronger_one() -> None:
    detector = PiiDetector(["EMAIL_ADDRESS", "URL"])
    text = "write to jane.doe@example.com or see https://example.org/help"
    assert [(f.entity, text[f.start:f.end]) for f in detector.find(text)] == [
        ("EMAIL_ADDRESS", "jane.doe@example.com"), ("URL", "https://example.org/help")]


def test_credentials_are_found_by_ragtunes_own_recognizer() -> None:
    detector = PiiDetector(["CREDENTIAL"])
    secrets = ["AKIAIOSFODNN7EXAMPLE", "ghp_" + "a1B2" * 9, "-----BEGIN RSA PRIVATE KEY-----",
               "rt_0123456789ab_" + "x" * 43]
    for secret in secrets:
        [found] = detector.find(f"the key is {secret} (rotate it)")
        assert found.entity == "CREDENTIAL"
    assert detector.find("AKIA is an acronym; ghp_short; rt_key") == []


def test_a_plugin_registers_its_own_entity_type() -> None:
    from ragtune.govern.presidio import pattern_recognizer
    from ragtune.plugins import Plugins

    plugins = Plugins.load(entry_points=False)
    plugins.add("test-plugin", lambda p: p.pii_recognizers.register(
        "EMPLOYEE_ID", lambda: pattern_recognizer("EMPLOYEE_ID", [("id", r"\bEMP-\d{6}\b", 0.9)])))
    assert "EMPLOYEE_ID" in known_entities(plugins)
    detector = PiiDetector(["EMPLOYEE_ID"], plugins=plugins)
    assert [f.entity for f in detector.find("badge EMP-004211 expired")] == ["EMPLOYEE_ID"]
    with pytest.raises(ConfigError, match="upper-case"):
        plugins.pii_recognizers.register("employee id", lambda: None)


def test_an_unknown_entity_type_is_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown PII entity type 'E_MAIL'.*EMAIL_ADDRESS"):
        PiiDetector(["E_MAIL"])
    with pytest.raises(ConfigError, match="one of allow"):
        PiiPolicy({"EMAIL_ADDRESS": "delete"})


def test_detection_makes_no_network_call() -> None:
    """Presidio's e-mail recognizer downloads the public suffix list on first use; ours never tries.
    In a fresh process (nothing loaded yet), with every connection refused."""
    import subprocess
    import sys

    code = """
import socket
def refuse(*args, **kwargs):
    raise SystemExit("PII detection tried to reach the network")
socket.socket.connect = refuse
socket.getaddrinfo = refuse
from ragtune.govern.pii import PiiDetector
found = PiiDetector(["EMAIL_ADDRESS", "URL", "PHONE_NUMBER"]).find("jane@mail.example.co.uk")
print([f.entity for f in found])
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "['EMAIL_ADDRESS']"
    assert "Traceback" not in done.stderr
