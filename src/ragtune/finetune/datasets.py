"""Validated, versioned fine-tuning datasets in PostgreSQL.

``DatasetStore.import_file`` reads a file (``formats``), validates it (``validate``), splits it and
writes one new version in one transaction: the ``datasets`` row with its content hash, schema and
report, and every example in ``dataset_rows``. Importing the same bytes under the same name with the
same options again is a no-op that returns the stored version; anything else makes version + 1.
A failure at any point leaves nothing of the new version behind.

The train/eval split is a function of each row's content alone (``assign_split``), so it is the same
on every import, whatever the order of the rows, and exact copies always share a split.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg.types.json import Jsonb

from ragtune.errors import DatasetError, DatasetValidationError, NotFoundError
from ragtune.finetune.examples import Example, canonical_json
from ragtune.finetune.formats import FORMATS, ParsedFile, parse_bytes
from ragtune.finetune.lengths import TemplateTokenCounter, TokenCounter
from ragtune.finetune.validate import ValidationOptions, redact_examples, scan_pii, validate
from ragtune.store.database import Conn, Database

ProgressCallback = Callable[[int], None]  # rows written so far
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_IMPORT_LOCK = 7_203_116  # advisory-lock namespace for dataset imports (one lock per name)
_BATCH = 256
_COLUMNS = ("id, name, version, format, source, content_hash, options, row_count, train_rows, eval_rows, schema,"
            " report, valid, reasons, eval_set, created_at")


@dataclass(frozen=True)
class ImportOptions:
    format: str = "auto"
    redact_pii: bool = False
    eval_fraction: float = 0.1
    # A registered eval set: every row is eval, and other datasets are checked against it.
    eval_set: bool = False
    base: str = "smollm2"  # the model whose tokenizer and context window measure the rows
    max_tokens: int | None = None  # default: the base model's context window
    near_duplicate_threshold: float = 0.8

    def __post_init__(self) -> None:
        if self.format not in (*FORMATS, "auto"):
            raise DatasetError(f"unknown dataset format {self.format!r}; use one of {', '.join(FORMATS)} or auto")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise DatasetError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if not self.base.strip():
            raise DatasetError("base must name a model")
        self.validation()  # checks max_tokens and the threshold

    def validation(self) -> ValidationOptions:
        return ValidationOptions(max_tokens=self.max_tokens, near_duplicate_threshold=self.near_duplicate_threshold)

    def stored(self, resolved_format: str) -> dict[str, Any]:
        """What an import depends on besides the bytes: equal values make a re-import a no-op."""
        return {"format": resolved_format, "redact_pii": self.redact_pii, "eval_set": self.eval_set,
                "eval_fraction": 1.0 if self.eval_set else self.eval_fraction, "base": self.base,
                "max_tokens": self.max_tokens, "near_duplicate_threshold": self.near_duplicate_threshold}


@dataclass(frozen=True)
class DatasetInfo:
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

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> DatasetInfo:
        return cls(**{**row, "reasons": tuple(row["reasons"]), "created_at": str(row["created_at"])})

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "report"}


@dataclass(frozen=True)
class ImportResult:
    dataset: DatasetInfo
    created: bool  # False when the same content was already the latest version


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


def _schema(parsed: ParsedFile, examples: list[Example]) -> dict[str, Any]:
    kinds = sorted({e.kind for e in examples})
    return {
        "format": parsed.format, "kind": kinds[0] if len(kinds) == 1 else "mixed", "fields": parsed.fields,
        "roles": sorted({m["role"] for e in examples for m in e.messages}),
        "tools": any(e.tools for e in examples),
        "tool_calls": any(m.get("tool_calls") for e in examples for m in e.replies()),
    }


class DatasetStore:
    """Datasets in one database. ``counters`` pre-builds token counters by base name (the rest are
    built on first use from ``cache_dir``, where the packaged model is converted)."""

    def __init__(self, db: Database, *, cache_dir: Path, counters: Mapping[str, TokenCounter] | None = None) -> None:
        self.db = db
        self.cache_dir = Path(cache_dir)
        self._counters: dict[str, TokenCounter] = dict(counters or {})

    def token_counter(self, base: str) -> TokenCounter:
        if base not in self._counters:
            self._counters[base] = TemplateTokenCounter.for_base(base, self.cache_dir)
        return self._counters[base]

    # -- import --------------------------------------------------------------------------------
    def import_file(self, path: str | Path, *, name: str, options: ImportOptions | None = None,
                    progress: ProgressCallback | None = None) -> ImportResult:
        path = Path(path).expanduser()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
        return self.import_bytes(data, name=name, source=str(path.resolve()), options=options, progress=progress)

    def import_bytes(self, data: bytes, *, name: str, source: str, options: ImportOptions | None = None,
                     progress: ProgressCallback | None = None) -> ImportResult:
        options = options or ImportOptions()
        if not _NAME.fullmatch(name):
            raise DatasetError(f"invalid dataset name {name!r}: letters, digits, '.', '_' and '-', at most 128")
        parsed = parse_bytes(data, source=source, format=options.format)
        content_hash = hashlib.sha256(data).hexdigest()
        stored_options = options.stored(parsed.format)
        with self.db.connection() as conn:
            latest = self._latest(conn, name)
        if latest is not None and latest.content_hash == content_hash and latest.options == stored_options:
            return ImportResult(latest, created=False)
        if not parsed.examples:
            first = f"; line {parsed.issues[0].line}: {parsed.issues[0].message}" if parsed.issues else ""
            raise DatasetError(f"{source}: no valid rows ({len(parsed.issues)} schema error(s){first})")

        pii = scan_pii(parsed.examples)
        examples = redact_examples(parsed.examples) if options.redact_pii else parsed.examples
        pii["redacted"] = options.redact_pii
        hashes = [row_hash(e) for e in examples]
        splits = ["eval" if options.eval_set else assign_split(h, options.eval_fraction) for h in hashes]
        eval_sets = {} if options.eval_set else self.eval_sets(exclude=name)
        report = validate(parsed, examples, splits, counter=self.token_counter(options.base), eval_sets=eval_sets,
                          pii=pii, options=options.validation())

        with self.db.transaction() as conn:
            # One import per name at a time: the version number and the no-op check stay exact.
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_IMPORT_LOCK, name))
            latest = self._latest(conn, name)
            if latest is not None and latest.content_hash == content_hash and latest.options == stored_options:
                return ImportResult(latest, created=False)
            row = conn.execute(
                f"INSERT INTO datasets (name, version, format, source, content_hash, options, row_count, train_rows,"
                f" eval_rows, schema, report, valid, reasons, eval_set)"
                f" VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
                (name, (latest.version if latest else 0) + 1, parsed.format, source, content_hash,
                 Jsonb(stored_options), len(examples), report.split["train"], report.split["eval"],
                 Jsonb(_schema(parsed, examples)), Jsonb(report.to_dict()), report.valid, report.blocking,
                 options.eval_set),
            ).fetchone()
            assert row is not None
            info = DatasetInfo.from_row(row)
            self._write_rows(conn, info.id, examples, splits, hashes, progress)
        return ImportResult(info, created=True)

    @staticmethod
    def _write_rows(conn: Conn, dataset_id: int, examples: list[Example], splits: list[str], hashes: list[str],
                    progress: ProgressCallback | None) -> None:
        def opt(value: Any) -> Any:
            return None if value is None else Jsonb(value)

        with conn.cursor() as cur:
            for start in range(0, len(examples), _BATCH):
                cur.executemany(
                    "INSERT INTO dataset_rows (dataset_id, ordinal, line, split, row_hash, messages, tools, chosen,"
                    " rejected) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [(dataset_id, i, e.line, splits[i], hashes[i], Jsonb(e.messages), opt(e.tools), opt(e.chosen),
                      opt(e.rejected))
                     for i, e in enumerate(examples[start:start + _BATCH], start=start)],
                )
                if progress is not None:
                    progress(min(start + _BATCH, len(examples)))

    # -- reading -------------------------------------------------------------------------------
    @staticmethod
    def _latest(conn: Conn, name: str) -> DatasetInfo | None:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM datasets WHERE name = %s ORDER BY version DESC LIMIT 1", (name,)
        ).fetchone()
        return DatasetInfo.from_row(row) if row else None

    def get(self, name: str, version: int | None = None) -> DatasetInfo:
        with self.db.connection() as conn:
            if version is None:
                info = self._latest(conn, name)
                if info is None:
                    raise NotFoundError(f"no dataset named {name!r}")
                return info
            row = conn.execute(f"SELECT {_COLUMNS} FROM datasets WHERE name = %s AND version = %s",
                               (name, version)).fetchone()
            if row is None:
                versions = [r["version"] for r in conn.execute(
                    "SELECT version FROM datasets WHERE name = %s ORDER BY version", (name,))]
                if not versions:
                    raise NotFoundError(f"no dataset named {name!r}")
                raise NotFoundError(f"dataset {name!r} has no version {version} (versions: {versions})")
            return DatasetInfo.from_row(row)

    def versions(self) -> list[DatasetInfo]:
        """Every version of every dataset, by name then version."""
        with self.db.connection() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM datasets ORDER BY name, version").fetchall()
        return [DatasetInfo.from_row(r) for r in rows]

    def rows(self, dataset: DatasetInfo, split: str | None = None) -> list[Example]:
        """The stored examples of one version in file order, optionally of one split."""
        if split not in (None, "train", "eval"):
            raise DatasetError(f"split must be 'train' or 'eval', got {split!r}")
        with self.db.connection() as conn:
            rows = conn.execute(
                "SELECT line, messages, tools, chosen, rejected FROM dataset_rows WHERE dataset_id = %s"
                " AND (%s::text IS NULL OR split = %s) ORDER BY ordinal",
                (dataset.id, split, split),
            ).fetchall()
        return [Example(r["line"], r["messages"], r["tools"], r["chosen"], r["rejected"]) for r in rows]

    def splits(self, dataset: DatasetInfo) -> list[str]:
        with self.db.connection() as conn:
            return [r["split"] for r in conn.execute(
                "SELECT split FROM dataset_rows WHERE dataset_id = %s ORDER BY ordinal", (dataset.id,))]

    def eval_sets(self, *, exclude: str | None = None) -> dict[str, list[Example]]:
        """The rows of the latest version of every registered eval set (but ``exclude``)."""
        with self.db.connection() as conn:
            latest = conn.execute(
                f"SELECT DISTINCT ON (name) {_COLUMNS} FROM datasets ORDER BY name, version DESC"
            ).fetchall()
        return {r["name"]: self.rows(DatasetInfo.from_row(r)) for r in latest
                if r["eval_set"] and r["name"] != exclude}

    def remove(self, name: str, version: int | None = None) -> int:
        """Delete one version, or every version, of a dataset; returns how many were deleted."""
        with self.db.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_IMPORT_LOCK, name))
            cur = conn.execute(
                "DELETE FROM datasets WHERE name = %s AND (%s::int IS NULL OR version = %s)", (name, version, version)
            )
            if cur.rowcount == 0:
                what = f"dataset {name!r}" + (f" version {version}" if version is not None else "")
                raise NotFoundError(f"no {what}")
            return cur.rowcount
