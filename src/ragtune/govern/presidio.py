"""Presidio's recognizers, run with no NLP model: the detection half of ``govern.pii``.

Presidio's ``AnalyzerEngine`` normally loads a spaCy model (and downloads one when it is missing).
We build its recognizer registry explicitly instead, from the recognizers that need no model:

* every ``PatternRecognizer`` Presidio ships (regular expressions with checksums and context words:
  e-mail, credit card with Luhn, IBAN with mod 97, IP, URL, US SSN, UK NHS with its check digit and
  some 80 national identifiers), built for English text; two of them amended: the e-mail one checks
  domains offline (``OfflineEmailRecognizer``), the card one knows issuers' lengths and series
  (``CardRecognizer``), and the URL one passes over ellipses and "Co.Ltd" (``UrlRecognizer``);
* the phone recognizer (Google's ``phonenumbers``), for the regions the caller names;
* the recognizers plugins register (``Plugins.pii_recognizers``), ragtune's own among them.

The NLP engine Presidio still asks for is ``Tokens``: a regular-expression tokenizer whose lower-cased
tokens stand in for lemmas, so the context words of a recognizer ("ssn", "card", "phone") still raise
a finding's score as they do with spaCy (a plural such as "cards" does not: there is no lemmatizer).

This module imports Presidio (and so spaCy: about 4 s), so it is imported only when a policy needs a
detector (``govern.pii.PiiDetector``).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from typing import Any, cast

from ragtune.errors import ConfigError
from ragtune.extras import needs

with needs("governance", "finding personal data (PII policies)", error=ConfigError):
    import presidio_analyzer.predefined_recognizers as predefined
    import tldextract
    from presidio_analyzer import AnalyzerEngine, EntityRecognizer, Pattern, PatternRecognizer, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngine
    from spacy.lang.en.stop_words import STOP_WORDS

LANGUAGE = "en"
_TOKEN = re.compile(r"\w+|[^\w\s]")

# The public suffix list bundled with tldextract: its default first tries to download the list.
_OFFLINE_SUFFIXES = tldextract.TLDExtract(suffix_list_urls=())


class OfflineEmailRecognizer(predefined.EmailRecognizer):
    """Presidio's e-mail recognizer, checking the domain against the bundled public suffix list
    (never a download: the stock one calls ``tldextract.extract``, which fetches the list first)."""

    def validate_result(self, pattern_text: str) -> bool:
        return bool(_OFFLINE_SUFFIXES(pattern_text).fqdn)


class CardRecognizer(predefined.CreditCardRecognizer):
    """Presidio's card recognizer (Luhn-checked) with what it misses and what it takes wrongly:
    Mastercard's 2221-2720 series and Diners' 4-6-4 grouping are found; a number whose length its
    issuer never uses (a 13-digit "Visa") is not a card, which keeps long sums and ids out."""

    PATTERNS = [*predefined.CreditCardRecognizer.PATTERNS,  # noqa: RUF012 (Presidio's own class attribute)
                Pattern("Mastercard 2-series", r"\b2(?:22[1-9]|2[3-9]\d|[3-6]\d\d|7[01]\d|720)(?:[- ]?\d{4}){3}\b",
                        0.3),
                Pattern("Diners 4-6-4", r"\b3[0689]\d{2}[- ]\d{6}[- ]\d{4}\b", 0.3),
                # Presidio's pattern stops at 17 digits: Visa, Discover, JCB, UnionPay issue 19
                Pattern("19 digits", r"\b[46]\d{3}(?:[- ]?\d{4}){3}[- ]?\d{3}\b", 0.3)]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(patterns=self.PATTERNS, **kwargs)

    def invalidate_result(self, pattern_text: str) -> bool:
        digits = "".join(c for c in pattern_text if c.isdigit())
        return not card_length_ok(digits) or bool(super().invalidate_result(pattern_text))


def card_length_ok(digits: str) -> bool:
    """Whether an issuer with this prefix (IIN) issues card numbers of this length."""
    n = len(digits)
    two, three, four = int(digits[:2]), int(digits[:3]), int(digits[:4])
    if digits[0] == "4":
        return n in (16, 19)
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return n == 16
    if two in (34, 37):
        return n == 15
    if 3528 <= four <= 3589 or digits.startswith(("6011", "65", "644", "645", "646", "647", "648", "649", "62")):
        return 16 <= n <= 19
    if two in (36, 38, 39) or 300 <= three <= 305 or four == 3095:
        return 14 <= n <= 19
    return False


class UrlRecognizer(predefined.UrlRecognizer):
    """Presidio's URL recognizer, without two kinds of prose it takes for a bare domain (measured on
    Wikipedia paragraphs, benchmarks/pii_quality.py): an ellipsis run into the next word
    ("collapse...This": .this is no domain but .th is) and a capitalised ending ("Co.Ltd")."""

    def invalidate_result(self, pattern_text: str) -> bool:
        lowered = pattern_text.lower()
        if lowered.startswith(("http://", "https://", "www.")) or "/" in pattern_text:
            return False
        return ".." in pattern_text or pattern_text.rsplit(".", 1)[-1][:1].isupper()


class Tokens(NlpEngine):
    """Tokens and lower-cased "lemmas" for Presidio's context words; no entities, no model."""

    def load(self) -> None:
        pass

    def is_loaded(self) -> bool:
        return True

    def process_text(self, text: str, language: str) -> Any:
        tokens, starts = [], []
        for m in _TOKEN.finditer(text):
            tokens.append(m.group())
            starts.append(m.start())
        # Presidio's context enhancer iterates the tokens and takes their lengths: a list of strings
        # serves as well as a spaCy Doc.
        return NlpArtifacts(entities=[], tokens=cast(Any, tokens), tokens_indices=starts,
                            lemmas=[t.lower() for t in tokens], nlp_engine=self, language=language)

    def process_batch(self, texts: Iterable[str], language: str, batch_size: int = 1, n_process: int = 1,
                      **kwargs: Any) -> Iterator[tuple[str, Any]]:
        for text in texts:
            yield text, self.process_text(text, language)

    def is_stopword(self, word: str, language: str) -> bool:
        return word.lower() in STOP_WORDS

    def is_punct(self, word: str, language: str) -> bool:
        return len(word) == 1 and not word.isalnum()

    def get_supported_entities(self) -> list[str]:
        return []

    def get_supported_languages(self) -> list[str]:
        return [LANGUAGE]


@lru_cache(maxsize=1)
def presidio_pattern_recognizers() -> dict[str, type[Any]]:
    """Entity type -> the class of every model-free pattern recognizer Presidio ships."""
    found: dict[str, type[Any]] = {}
    for name in predefined.__all__:
        cls: Any = getattr(predefined, name)
        if inspect.isclass(cls) and issubclass(cls, PatternRecognizer):
            recognizer = cast(Any, cls)(supported_language=LANGUAGE)
            for entity in recognizer.supported_entities:
                found.setdefault(entity, cls)
    found["EMAIL_ADDRESS"] = OfflineEmailRecognizer
    found["CREDIT_CARD"] = CardRecognizer
    found["URL"] = UrlRecognizer
    return found


def presidio_entities() -> list[str]:
    return sorted([*presidio_pattern_recognizers(), "PHONE_NUMBER"])


def build_recognizer(entity: str, *, phone_regions: Sequence[str]) -> Any:
    """Presidio's recognizer of ``entity`` (``None`` if Presidio has none)."""
    if entity == "PHONE_NUMBER":
        return predefined.PhoneRecognizer(supported_language=LANGUAGE, supported_regions=tuple(phone_regions))
    cls = presidio_pattern_recognizers().get(entity)
    return None if cls is None else cls(supported_language=LANGUAGE)


def analyzer(recognizers: Sequence[Any]) -> Any:
    """An ``AnalyzerEngine`` holding exactly ``recognizers`` and the model-free ``Tokens`` engine."""
    registry = RecognizerRegistry(supported_languages=[LANGUAGE])
    for recognizer in recognizers:
        if not isinstance(recognizer, EntityRecognizer):
            raise ConfigError(f"a PII recognizer must be a presidio_analyzer EntityRecognizer, got {recognizer!r}")
        registry.add_recognizer(recognizer)
    return AnalyzerEngine(registry=registry, nlp_engine=Tokens(), supported_languages=[LANGUAGE])


def pattern_recognizer(entity: str, patterns: Sequence[tuple[str, str, float]], context: Sequence[str] = ()) -> Any:
    """A Presidio ``PatternRecognizer`` of ``entity`` from (name, regex, score) triples: how
    ragtune's own recognizers, and a plugin's, are written."""
    return PatternRecognizer(supported_entity=entity, supported_language=LANGUAGE, name=f"{entity.title()}Recognizer",
                             patterns=[Pattern(name, regex, score) for name, regex, score in patterns],
                             context=list(context))
