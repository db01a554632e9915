"""Personal data in text: find it, or replace it with a placeholder.

``find_pii(text)`` returns every finding with its kind and character span; ``redact(text)``
replaces each with ``[KIND]`` (``[EMAIL]``, ``[PHONE]`` ...). Kinds:

* ``email``;
* ``credit_card``: a number of the length its issuer prefix calls for (Visa 16 or 19, Mastercard
  16, Amex 15, Discover, JCB, UnionPay, Diners) that passes the Luhn check, written as one run of
  digits or in the usual groups (4-4-4-4, Amex 4-6-5) separated by spaces or dashes;
* ``iban``: country code, two check digits and the account, passing the ISO 13616 mod-97 check and,
  for the countries listed in ``IBAN_LENGTHS``, of that country's length;
* ``us_ssn``: ``123-45-6789`` outside the ranges never issued (000, 666, 9xx, 00, 0000);
* ``phone``: ``+`` and 8 to 15 digits in groups (10 to 13 when written without separators), or a
  North American ``(555) 123-4567`` / ``555-123-4567`` (a separator is required there: a bare run of
  digits is too often something else);
* ``ip_address``: a dotted IPv4 address with every octet at most 255.

Concessions, said plainly: these are patterns with checksums, not a named-entity model. Names and
street addresses are not found; a national phone number written without separators is not found;
a version string such as ``1.2.3.4`` is reported as an IP address; one long number in ten passes
Luhn, so a long number in arithmetic with a card's prefix and length is reported as a card. When
two findings overlap, the one of the earlier kind in the list above wins.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

KINDS = ("email", "iban", "credit_card", "us_ssn", "phone", "ip_address")

# ISO 13616 lengths of the countries whose IBANs we are most likely to meet; other country codes
# are accepted at any length from 15 to 34 when the check digits hold.
IBAN_LENGTHS = {
    "AD": 24, "AT": 20, "BE": 16, "BG": 22, "CH": 21, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "EE": 20,
    "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GR": 27, "HR": 21, "HU": 28, "IE": 22, "IS": 26, "IT": 27,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MT": 31, "NL": 18, "NO": 15, "PL": 28, "PT": 25,
    "RO": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TR": 26,
}


@dataclass(frozen=True)
class PiiFinding:
    kind: str
    start: int
    end: int
    value: str

    @property
    def placeholder(self) -> str:
        return f"[{self.kind.upper()}]"


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check of a string of digits."""
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """ISO 13616: move the first four characters to the end, letters to 10..35, mod 97 == 1."""
    iban = iban.replace(" ", "").upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}", iban):
        return False
    expected = IBAN_LENGTHS.get(iban[:2])
    if expected is not None and len(iban) != expected:
        return False
    number = "".join(str(int(ch, 36)) for ch in iban[4:] + iban[:4])
    return int(number) % 97 == 1


_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"[A-Za-z]{2,24}(?![\w-])"
)
_CARD = re.compile(r"(?<![\d-])[2-6](?:[ -]?\d){12,18}(?![\d])")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![a-z0-9])")
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])")
_PHONE_INTL = re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,5}\)?){2,6}(?![\w-])")
_PHONE_NANP = re.compile(r"(?<![\w(+-])(?:\(\d{3}\) ?|\d{3}[-. ])\d{3}[-. ]\d{4}(?![\w-])")
_IPV4 = re.compile(
    r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w.]|\.\d)"
)


def _emails(text: str) -> Iterator[tuple[int, int]]:
    for m in _EMAIL.finditer(text):
        yield m.start(), m.end()


def card_length_ok(digits: str) -> bool:
    """Whether an issuer with this prefix (IIN) issues card numbers of this length."""
    n = len(digits)
    two, four = int(digits[:2]), int(digits[:4])
    if digits[0] == "4":
        return n in (16, 19)
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return n == 16
    if two in (34, 37):
        return n == 15
    if 3528 <= four <= 3589 or digits.startswith(("6011", "65", "644", "645", "646", "647", "648", "649", "62")):
        return 16 <= n <= 19
    if two in (36, 38, 39) or 300 <= int(digits[:3]) <= 305:
        return 14 <= n <= 19
    return False


def _card_groups_ok(raw: str) -> bool:
    groups = [len(g) for g in re.split(r"[ -]", raw)]
    if len(groups) == 1:
        return True
    if len(set(re.findall(r"[ -]", raw))) > 1:
        return False
    return groups in ([4, 6, 5], [4, 6, 4]) or (all(g == 4 for g in groups[:-1]) and 1 <= groups[-1] <= 4)


def _cards(text: str) -> Iterator[tuple[int, int]]:
    for m in _CARD.finditer(text):
        raw = m.group()
        digits = re.sub(r"[ -]", "", raw)
        if _card_groups_ok(raw) and card_length_ok(digits) and len(set(digits)) > 1 and luhn_valid(digits):
            yield m.start(), m.end()


def _ibans(text: str) -> Iterator[tuple[int, int]]:
    for m in _IBAN.finditer(text):
        raw = m.group()
        # The pattern may run on into a following upper-case word: try the longest valid prefix.
        positions = [i + 1 for i, ch in enumerate(raw) if ch != " "]
        for n in range(len(positions), 14, -1):
            if iban_valid(raw[: positions[n - 1]]):
                yield m.start(), m.start() + positions[n - 1]
                break


def _ssns(text: str) -> Iterator[tuple[int, int]]:
    for m in _SSN.finditer(text):
        yield m.start(), m.end()


def _phones(text: str) -> Iterator[tuple[int, int]]:
    for m in _PHONE_INTL.finditer(text):
        digits = sum(ch.isdigit() for ch in m.group())
        compact = m.group()[1:].isdigit()
        if (10 <= digits <= 13) if compact else (8 <= digits <= 15):
            yield m.start(), m.end()
    for m in _PHONE_NANP.finditer(text):
        yield m.start(), m.end()


def _ips(text: str) -> Iterator[tuple[int, int]]:
    for m in _IPV4.finditer(text):
        yield m.start(), m.end()


_DETECTORS: tuple[tuple[str, Callable[[str], Iterator[tuple[int, int]]]], ...] = (
    ("email", _emails), ("iban", _ibans), ("credit_card", _cards), ("us_ssn", _ssns),
    ("phone", _phones), ("ip_address", _ips),
)


def find_pii(text: str) -> list[PiiFinding]:
    """Every finding in ``text``, in order of position; overlapping findings are resolved in
    favour of the kind listed first in ``KINDS``."""
    taken: list[tuple[int, int]] = []
    found: list[PiiFinding] = []
    for kind, detect in _DETECTORS:
        for start, end in detect(text):
            if any(start < e and s < end for s, e in taken):
                continue
            taken.append((start, end))
            found.append(PiiFinding(kind, start, end, text[start:end]))
    return sorted(found, key=lambda f: f.start)


def redact(text: str) -> str:
    """``text`` with every finding replaced by its placeholder (``[EMAIL]``, ``[CREDIT_CARD]`` ...)."""
    out: list[str] = []
    pos = 0
    for finding in find_pii(text):
        out.append(text[pos:finding.start])
        out.append(finding.placeholder)
        pos = finding.end
    out.append(text[pos:])
    return "".join(out)
