"""A dataset version as a value, and what identifies and splits its rows: the part of the datasets
that the training side needs without the store (``lora.trainset`` splits a file's rows exactly as an
import splits them, and refuses an invalid version).

A row's identity is the sha256 of its canonical JSON (``row_hash``); its split is a function of that
hash alone (``assign_split``), so it is the same on every import, whatever the order of the rows,
and exact copies always share a split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ragtune.errors import DatasetError, DatasetValidationError
from ragtune.finetune.data.access import check_acl
from ragtune.finetune.data.examples import Example, canonical_json
from ragtune.finetune.data.formats import FORMATS
from ragtune.finetune.data.validate import ValidationOptions
from ragtune.govern.pii import PiiPolicy
from ragtune.settings.sections import TrainingSettings


@dataclass(frozen=True)
class ImportOptions:
    format: str = "auto"
    redact_pii: bool = False
    eval_fraction: float = 0.1
    # A registered eval set: every row is eval, and other datasets are checked against it.
    eval_set: bool = False
    base: str = "smollm2"  # the model whose tokenizer and context window measure the rows
    max_tokens: int | None = None  # default: the base model's context window
    # Jaccard of word 3-grams from which two rows are near duplicates (and eval/train rows leak):
    # the default here is the setting's default; ``from_settings`` takes the project's value.
    near_duplicate_threshold: float = TrainingSettings.dataset_near_duplicate_threshold
    # Who may read the version: None admins only, () every principal, else principals in any group.
    # Not part of ``stored``: the same content imported with another ACL changes the ACL.
    acl: tuple[str, ...] | None = None
    # A policy's PII rules (govern.pii), applied to every text before the rows are stored: a row
    # holding a type the policy refuses is left out and reported by line. None: rows as they are
    # (``redact_pii`` replaces the usual types).
    pii_policy: PiiPolicy | None = None

    def __post_init__(self) -> None:
        if self.format not in (*FORMATS, "auto"):
            raise DatasetError(f"unknown dataset format {self.format!r}; use one of {', '.join(FORMATS)} or auto")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise DatasetError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if not self.base.strip():
            raise DatasetError("base must name a model")
        self.validation()  # checks max_tokens and the threshold
        object.__setattr__(self, "acl", check_acl(self.acl))

    @classmethod
    def from_settings(cls, training: TrainingSettings, **values: Any) -> ImportOptions:
        """``values`` over the project's settings: ``near_duplicate_threshold`` is
        ``[training] dataset_near_duplicate_threshold`` unless given (what ``ragtune data import``
        does; ``ImportOptions(...)`` alone reads no settings)."""
        values.setdefault("near_duplicate_threshold", training.dataset_near_duplicate_threshold)
        return cls(**values)

    def validation(self) -> ValidationOptions:
        return ValidationOptions(max_tokens=self.max_tokens, near_duplicate_threshold=self.near_duplicate_threshold)

    def stored(self, resolved_format: str) -> dict[str, Any]:
        """What an import depends on besides the bytes: equal values make a re-import a no-op."""
        policy = None if self.pii_policy is None else {
            "entities": dict(sorted(self.pii_policy.actions.items())), "min_score": self.pii_policy.min_score,
            "phone_regions": list(self.pii_policy.phone_regions)}
        return {"format": resolved_format, "redact_pii": self.redact_pii, "pii_policy": policy,
                "eval_set": self.eval_set,
                "eval_fraction": 1.0 if self.eval_set else self.eval_fraction, "base": self.base,
                "max_tokens": self.max_tokens, "near_duplicate_threshold": self.near_duplicate_threshold}


@dataclass(frozen=True)
class DatasetInfo:
    """A version as one principal may know it: counts, schema, report and reasons cover only what it
    can read (``DatasetStore._view``)."""

    id: int
    name: str
    version: int
    format: str
    source: str
    content_hash: str
    options: dict[str, Any]
    row_count: int
    train_rows: int
    eval_rows: int
    schema: dict[str, Any]
    report: dict[str, Any]
    valid: bool
    reasons: tuple[str, ...]
    eval_set: bool
    created_at: str
    acl: tuple[str, ...] | None  # None admins only, () every principal, else groups

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> DatasetInfo:
        return cls(**{**row, "reasons": tuple(row["reasons"]), "created_at": str(row["created_at"]),
                      "acl": None if row["acl"] is None else tuple(row["acl"])})

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "report"}


@dataclass(frozen=True)
class ImportResult:
    dataset: DatasetInfo
    created: bool  # False when the same content was already the latest version
    acl_changed: bool = False  # the content was there, with another ACL, now replaced by the import's


def row_hash(example: Example) -> str:
    return hashlib.sha256(canonical_json(example.content()).encode("utf-8")).hexdigest()


def assign_split(content_hash: str, eval_fraction: float) -> str:
    """``eval`` when the first 64 bits of the row's hash, as a fraction of 2**64, fall below
    ``eval_fraction``; the expected share of eval rows is ``eval_fraction``."""
    return "eval" if int(content_hash[:16], 16) / 2.0**64 < eval_fraction else "train"


def require_valid(dataset: DatasetInfo, force: bool = False) -> tuple[str, ...]:
    """Refuse a dataset whose validation failed unless ``force``; returns the reasons overridden
    (empty for a valid dataset) so the caller can record them with its run."""
    if dataset.valid:
        return ()
    if not force:
        raise DatasetValidationError(dataset.name, dataset.version, dataset.reasons)
    return dataset.reasons
