"""Validated, versioned fine-tuning datasets in PostgreSQL.

``DatasetStore.import_file`` reads a file (``formats``), validates it (``validate``), splits it and
writes one new version in one transaction: the ``datasets`` row with its content hash, schema and
report, and every example in ``dataset_rows``. Importing the same bytes under the same name with the
same options again is a no-op that returns the stored version; anything else makes version + 1.
A failure at any point leaves nothing of the new version behind.

The train/eval split is a function of each row's content alone (``versions.assign_split``), so it is
the same on every import, whatever the order of the rows, and exact copies always share a split.

Access (issue 14). Every read takes a :class:`Principal` and goes through one predicate
(``access.visible`` for versions, ``row_visible`` for rows, where the ACL values are
described); rows made from documents (``import_examples``) get :func:`row_acl` of their documents'
ACLs. What a principal cannot read answers exactly as if it did not exist, and nothing about it
shows through what it can read: counts are of visible rows, the validation report of a version with
rows hidden from the principal is withheld, and eval sets it cannot read are not named in the
leakage report (``_view``). The ACL is not content: importing the same content again with another
ACL changes that version's ACL instead of making a new version, and ``set_acl`` changes it at any
time (admins only, as is ``remove``). Each version has its own ACL, so a redacted version can be
public while the original stays admins only; a new version leaves the older ones' ACLs alone.

Progress (``protocols.Progress``): an import sends "rows", the rows of the new version written so
far of all (none when the content is stored already).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from psycopg.types.json import Jsonb

from ragtune.errors import DatasetError, NotFoundError, PermissionDeniedError
from ragtune.finetune.data.access import (
    check_acl,
    row_acl,
    row_visible,
    sql_acl,
    visible,
    withheld,
    without_eval_sets,
)
from ragtune.finetune.data.examples import Example, canonical_json
from ragtune.finetune.data.formats import ParsedFile, parse_bytes
from ragtune.finetune.data.lengths import TemplateTokenCounter, TokenCounter
from ragtune.finetune.data.validate import apply_pii_policy, redact_examples, scan_pii, validate
from ragtune.finetune.data.versions import DatasetInfo, ImportOptions, ImportResult, assign_split, row_hash
from ragtune.govern.pii import Sealed
from ragtune.models import Principal
from ragtune.progress import emit
from ragtune.protocols import Progress
from ragtune.store.audit import AuditEvent, append
from ragtune.store.database import Conn, Database
from ragtune.store.policies import add_sealed

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_IMPORT_LOCK = 7_203_116  # advisory-lock namespace for dataset imports (one lock per name)
_BATCH = 256
_COLUMNS = ("id, name, version, format, source, content_hash, options, row_count, train_rows, eval_rows, schema,"
            " report, valid, reasons, eval_set, created_at, acl")


def _schema(parsed: ParsedFile, examples: list[Example], row_acls: Sequence[tuple[str, ...] | None] | None
            ) -> dict[str, Any]:
    kinds = sorted({e.kind for e in examples})
    return {
        "format": parsed.format, "kind": kinds[0] if len(kinds) == 1 else "mixed", "fields": parsed.fields,
        "roles": sorted({m["role"] for e in examples for m in e.messages}),
        "tools": any(e.tools for e in examples),
        "tool_calls": any(m.get("tool_calls") for e in examples for m in e.replies()),
        # Some row restricts its readers beyond its version's ACL: only then are rows counted per reader.
        "row_acls": any(row_acls or ()),
    }


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise DatasetError(f"invalid dataset name {name!r}: letters, digits, '.', '_' and '-', at most 128")


class DatasetStore:
    """Datasets in one database. ``counters`` pre-builds token counters by base name (the rest are
    built on first use from ``cache_dir``, where the packaged model is converted)."""

    def __init__(self, db: Database, *, cache_dir: Path, counters: Mapping[str, TokenCounter] | None = None,
                 audit: bool = False) -> None:
        self.db = db
        self.audit = audit  # imports, ACL changes and removals append to the audit log, in their transaction
        self.cache_dir = Path(cache_dir)
        self._counters: dict[str, TokenCounter] = dict(counters or {})

    def token_counter(self, base: str) -> TokenCounter:
        if base not in self._counters:
            self._counters[base] = TemplateTokenCounter.for_base(base, self.cache_dir)
        return self._counters[base]

    # -- import (the operator's: no principal; reads inside run as the system) ------------------
    def import_file(self, path: str | Path, *, name: str, options: ImportOptions | None = None,
                    progress: Progress | None = None) -> ImportResult:
        path = Path(path).expanduser()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
        return self.import_bytes(data, name=name, source=str(path.resolve()), options=options, progress=progress)

    def import_bytes(self, data: bytes, *, name: str, source: str, options: ImportOptions | None = None,
                     progress: Progress | None = None) -> ImportResult:
        options = options or ImportOptions()
        _check_name(name)
        parsed = parse_bytes(data, source=source, format=options.format)
        return self._import(parsed, name=name, source=source, content_hash=hashlib.sha256(data).hexdigest(),
                            options=options, row_acls=None, progress=progress)

    def import_examples(self, examples: Sequence[Example], *, name: str, source: str,
                        source_acls: Sequence[Sequence[Sequence[str]] | None] | None = None,
                        options: ImportOptions | None = None,
                        progress: Progress | None = None) -> ImportResult:
        """Rows built in code (from documents, say) as a version, validated like a file: they are
        written as chat JSON Lines and read back, so row ``i`` is line ``i + 1`` and a malformed row
        is a schema error of its line. ``source_acls[i]`` holds the ACLs of the documents row ``i``
        was made from (None or empty: from none); the row's ACL is their :func:`row_acl`, checked on
        top of the version's ``options.acl``."""
        options = options or ImportOptions()
        _check_name(name)
        if options.format not in ("auto", "chat"):
            raise DatasetError(f"examples are imported in the chat form, not {options.format!r}")
        if source_acls is not None and len(source_acls) != len(examples):
            raise DatasetError(f"{len(source_acls)} source ACL lists for {len(examples)} examples")
        data = "".join(canonical_json(e.content()) + "\n" for e in examples).encode("utf-8")
        parsed = parse_bytes(data, source=source, format="chat")
        acls = None if source_acls is None else [row_acl(a or ()) for a in source_acls]
        digest = hashlib.sha256(data)
        if acls is not None:  # the same rows with other ACLs are other content: a new version
            digest.update(canonical_json(acls).encode("utf-8"))
        return self._import(parsed, name=name, source=source, content_hash=digest.hexdigest(), options=options,
                            row_acls=None if acls is None else [acls[e.line - 1] for e in parsed.examples],
                            progress=progress)

    def _import(self, parsed: ParsedFile, *, name: str, source: str, content_hash: str, options: ImportOptions,
                row_acls: list[tuple[str, ...] | None] | None, progress: Progress | None) -> ImportResult:
        stored_options = options.stored(parsed.format)
        with self.db.transaction() as conn:
            kept = self._unchanged(conn, name, content_hash, stored_options, options.acl)
        if kept is not None:
            return kept
        if not parsed.examples:
            first = f"; line {parsed.issues[0].line}: {parsed.issues[0].message}" if parsed.issues else ""
            raise DatasetError(f"{source}: no valid rows ({len(parsed.issues)} schema error(s){first})")

        pii = scan_pii(parsed.examples)
        examples = redact_examples(parsed.examples) if options.redact_pii else parsed.examples
        pii["redacted"] = options.redact_pii
        sealed: dict[str, Sealed] = {}
        if options.pii_policy is not None:
            applied = apply_pii_policy(examples, options.pii_policy)
            if row_acls is not None:  # each kept row keeps its own ACL
                refused_lines = {r["line"] for r in applied.refused}
                row_acls = [a for e, a in zip(examples, row_acls, strict=True) if e.line not in refused_lines]
            examples, sealed = applied.examples, applied.sealed
            pii["policy"] = {"refused_rows": applied.refused[:100], "refused": len(applied.refused)}
            if not examples:
                raise DatasetError(f"{source}: every row holds personal data the policy refuses "
                                   f"({len(applied.refused)} rows)")
        hashes = [row_hash(e) for e in examples]
        splits = ["eval" if options.eval_set else assign_split(h, options.eval_fraction) for h in hashes]
        # Leakage is checked against every eval set, whoever may read them; what the report then
        # shows of the ones a reader cannot read is trimmed when it is read (``_view``).
        eval_sets = {} if options.eval_set else self.eval_sets(exclude=name, principal=Principal.system())
        report = validate(parsed, examples, splits, counter=self.token_counter(options.base), eval_sets=eval_sets,
                          pii=pii, options=options.validation())

        with self.db.transaction() as conn:
            kept = self._unchanged(conn, name, content_hash, stored_options, options.acl)
            if kept is not None:
                return kept
            latest = self._latest(conn, name)
            row = conn.execute(
                f"INSERT INTO datasets (name, version, format, source, content_hash, options, row_count, train_rows,"
                f" eval_rows, schema, report, valid, reasons, eval_set, acl)"
                f" VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
                (name, (latest.version if latest else 0) + 1, parsed.format, source, content_hash,
                 Jsonb(stored_options), len(examples), report.split["train"], report.split["eval"],
                 Jsonb(_schema(parsed, examples, row_acls)), Jsonb(report.to_dict()), report.valid, report.blocking,
                 options.eval_set, sql_acl(options.acl)),
            ).fetchone()
            assert row is not None
            info = DatasetInfo.from_row(row)
            self._write_rows(conn, info.id, examples, splits, hashes, row_acls, progress)
            add_sealed(conn, [(s.token, s.entity, s.sealed) for s in sealed.values()])
            self._audited(conn, "dataset.import", Principal.system(), {
                "dataset": name, "version": info.version, "rows": len(examples), "content_hash": content_hash,
                "source": source})
        return ImportResult(info, created=True)

    def _audited(self, conn: Conn, action: str, principal: Principal, details: dict[str, Any]) -> None:
        if self.audit:
            append(conn, AuditEvent(action, principal, details=details))

    def _unchanged(self, conn: Conn, name: str, content_hash: str, stored_options: dict[str, Any],
                   acl: tuple[str, ...] | None) -> ImportResult | None:
        """Takes the name's import lock (one import per name at a time keeps the version number and
        this check exact); the latest version when it holds this content already, its ACL set to
        ``acl``, else None."""
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_IMPORT_LOCK, name))
        latest = self._latest(conn, name)
        if latest is None or latest.content_hash != content_hash or latest.options != stored_options:
            return None
        if latest.acl == acl:
            return ImportResult(latest, created=False)
        row = conn.execute(f"UPDATE datasets SET acl = %s WHERE id = %s RETURNING {_COLUMNS}",
                           (sql_acl(acl), latest.id)).fetchone()
        assert row is not None
        return ImportResult(DatasetInfo.from_row(row), created=False, acl_changed=True)

    @staticmethod
    def _write_rows(conn: Conn, dataset_id: int, examples: list[Example], splits: list[str], hashes: list[str],
                    row_acls: list[tuple[str, ...] | None] | None, progress: Progress | None) -> None:
        def opt(value: Any) -> Any:
            return None if value is None else Jsonb(value)

        acls = row_acls or [None] * len(examples)
        with conn.cursor() as cur:
            for start in range(0, len(examples), _BATCH):
                cur.executemany(
                    "INSERT INTO dataset_rows (dataset_id, ordinal, line, split, row_hash, messages, tools, chosen,"
                    " rejected, acl) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [(dataset_id, i, e.line, splits[i], hashes[i], Jsonb(e.messages), opt(e.tools), opt(e.chosen),
                      opt(e.rejected), sql_acl(acls[i]))
                     for i, e in enumerate(examples[start:start + _BATCH], start=start)],
                )
                emit(progress, "rows", min(start + _BATCH, len(examples)), len(examples))

    # -- reading: every read takes the principal it reads for --------------------------------------
    @staticmethod
    def _latest(conn: Conn, name: str) -> DatasetInfo | None:
        """The latest version whoever may read it: for imports only."""
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM datasets WHERE name = %s ORDER BY version DESC LIMIT 1", (name,)
        ).fetchone()
        return DatasetInfo.from_row(row) if row else None

    def get(self, name: str, version: int | None = None, *, principal: Principal) -> DatasetInfo:
        """A version ``principal`` may read (default: the latest of those). One it may not read
        is reported exactly as a missing one, and the versions listed are those it may read."""
        vis, params = visible(principal)
        with self.db.connection() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM datasets d WHERE name = %s AND (%s::int IS NULL OR version = %s) AND {vis}"
                " ORDER BY version DESC LIMIT 1", (name, version, version, *params)).fetchone()
            if row is None:
                versions = [r["version"] for r in conn.execute(
                    f"SELECT version FROM datasets d WHERE name = %s AND {vis} ORDER BY version", (name, *params))]
                if not versions:
                    raise NotFoundError(f"no dataset named {name!r}")
                raise NotFoundError(f"dataset {name!r} has no version {version} (versions: {versions})")
            return self._view(conn, [DatasetInfo.from_row(row)], principal)[0]

    def versions(self, *, principal: Principal) -> list[DatasetInfo]:
        """Every version ``principal`` may read, by name then version."""
        vis, params = visible(principal)
        with self.db.connection() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM datasets d WHERE {vis} ORDER BY name, version",
                                params).fetchall()
            return self._view(conn, [DatasetInfo.from_row(r) for r in rows], principal)

    def _row_query(self, columns: str, dataset: DatasetInfo, split: str | None, principal: Principal) -> list[Any]:
        # The version's ACL is checked again here: a DatasetInfo may have been read by someone else.
        if split not in (None, "train", "eval"):
            raise DatasetError(f"split must be 'train' or 'eval', got {split!r}")
        vis, vparams = visible(principal)
        row_vis, rparams = row_visible(principal)
        with self.db.connection() as conn:
            return conn.execute(
                f"SELECT {columns} FROM dataset_rows r JOIN datasets d ON d.id = r.dataset_id WHERE r.dataset_id = %s"
                f" AND (%s::text IS NULL OR r.split = %s) AND {vis} AND {row_vis} ORDER BY r.ordinal",
                (dataset.id, split, split, *vparams, *rparams),
            ).fetchall()

    def rows(self, dataset: DatasetInfo, split: str | None = None, *, principal: Principal) -> list[Example]:
        """The examples of one version that ``principal`` may read, in file order, optionally of one
        split (none at all for a version it may not read)."""
        rows = self._row_query("r.line, r.messages, r.tools, r.chosen, r.rejected", dataset, split, principal)
        return [Example(r["line"], r["messages"], r["tools"], r["chosen"], r["rejected"]) for r in rows]

    def splits(self, dataset: DatasetInfo, *, principal: Principal) -> list[str]:
        """The split of each row ``rows(dataset, principal=principal)`` returns, in the same order."""
        return [r["split"] for r in self._row_query("r.split", dataset, None, principal)]

    def eval_sets(self, *, principal: Principal, exclude: str | None = None) -> dict[str, list[Example]]:
        """The rows ``principal`` may read of the latest version it may read of every registered
        eval set (but ``exclude``)."""
        vis, params = visible(principal)
        with self.db.connection() as conn:
            latest = conn.execute(
                f"SELECT DISTINCT ON (name) {_COLUMNS} FROM datasets d WHERE {vis} ORDER BY name, version DESC", params
            ).fetchall()
        return {r["name"]: self.rows(DatasetInfo.from_row(r), principal=principal) for r in latest
                if r["eval_set"] and r["name"] != exclude}

    def eval_set(self, name: str, *, principal: Principal) -> tuple[DatasetInfo, list[Example]]:
        """The latest version ``principal`` may read of the registered eval set ``name``, and its rows
        (those ``principal`` may read). A dataset that is not an eval set is refused as one that does not
        exist would be: evaluating on rows that may have been trained on would flatter the model."""
        vis, params = visible(principal)
        with self.db.connection() as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM datasets d WHERE name = %s AND {vis}"
                               " ORDER BY version DESC LIMIT 1", (name, *params)).fetchone()
            if row is None or not row["eval_set"]:
                known = [r["name"] for r in conn.execute(
                    f"SELECT DISTINCT ON (name) name, eval_set FROM datasets d WHERE {vis} ORDER BY name, version DESC",
                    params) if r["eval_set"]]
                why = "no dataset of that name" if row is None else "a dataset, but not registered as an eval set"
                raise NotFoundError(f"no evaluation set named {name!r} ({why}); registered evaluation sets: "
                                    f"{', '.join(known) or 'none'} (register one with `ragtune data import FILE "
                                    "--name NAME --eval-set`)")
            info = self._view(conn, [DatasetInfo.from_row(row)], principal)[0]
        return info, self.rows(info, principal=principal)

    def _view(self, conn: Conn, infos: list[DatasetInfo], principal: Principal) -> list[DatasetInfo]:
        """``infos`` (versions ``principal`` reads) as it may know them: with rows hidden from it,
        counts of the rest and nothing else computed over all rows; leakage into eval sets it cannot
        read (every row of) under neutral names."""
        if principal.admin or not infos:
            return infos
        row_vis, params = row_visible(principal)
        with_acls = [i.id for i in infos if i.schema.get("row_acls")]
        counts = {r["dataset_id"]: (r["n"], r["train"]) for r in conn.execute(
            f"SELECT r.dataset_id, count(*) AS n, count(*) FILTER (WHERE r.split = 'train') AS train"
            f" FROM dataset_rows r WHERE r.dataset_id = ANY(%s) AND {row_vis} GROUP BY r.dataset_id",
            (with_acls, *params))} if with_acls else {}
        named = {n for i in infos for n in i.report.get("leakage", {}).get("eval_sets", {})}
        readable = self._readable_eval_sets(conn, principal) if named else set()
        out = []
        for info in infos:
            rows, train = counts.get(info.id, (0, 0)) if info.id in with_acls else (info.row_count, info.train_rows)
            out.append(withheld(info, rows, train) if rows != info.row_count
                       else without_eval_sets(info, named - readable))
        return out

    @staticmethod
    def _readable_eval_sets(conn: Conn, principal: Principal) -> set[str]:
        """Names of the eval sets whose latest version ``principal`` may read, every row of it."""
        vis, vparams = visible(principal)
        row_vis, rparams = row_visible(principal)
        return {r["name"] for r in conn.execute(
            f"SELECT s.name FROM (SELECT DISTINCT ON (name) id, name, eval_set, schema FROM datasets d WHERE {vis}"
            f" ORDER BY name, version DESC) s WHERE s.eval_set AND NOT (coalesce((s.schema ->> 'row_acls')::boolean,"
            f" false) AND EXISTS (SELECT 1 FROM dataset_rows r WHERE r.dataset_id = s.id AND NOT {row_vis}))",
            (*vparams, *rparams))}

    # -- changes (admins only) ---------------------------------------------------------------------
    def _require_admin(self, conn: Conn, name: str, version: int | None, principal: Principal, action: str) -> None:
        """Refuse a non-admin: as missing when it cannot read the dataset (or version), else as
        forbidden."""
        if principal.admin:
            return
        vis, params = visible(principal)
        found = conn.execute(f"SELECT 1 FROM datasets d WHERE name = %s AND (%s::int IS NULL OR version = %s)"
                             f" AND {vis} LIMIT 1", (name, version, version, *params)).fetchone()
        if found is None:
            raise _missing(name, version)
        raise PermissionDeniedError(f"only an admin may {action} dataset {name!r}")

    def set_acl(self, name: str, acl: Iterable[str] | None, *, principal: Principal,
                version: int | None = None) -> int:
        """Set who may read one version, or every version, of a dataset (``acl`` as
        :attr:`ImportOptions.acl`); returns how many versions were changed."""
        checked = check_acl(acl)
        with self.db.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_IMPORT_LOCK, name))
            self._require_admin(conn, name, version, principal, "change the ACL of")
            cur = conn.execute("UPDATE datasets SET acl = %s WHERE name = %s AND (%s::int IS NULL OR version = %s)",
                               (sql_acl(checked), name, version, version))
            if cur.rowcount == 0:
                raise _missing(name, version)
            self._audited(conn, "dataset.acl", principal, {"dataset": name, "version": version,
                                                            "acl": list(checked) if checked is not None else None})
            return cur.rowcount

    def remove(self, name: str, version: int | None = None, *, principal: Principal) -> int:
        """Delete one version, or every version, of a dataset; returns how many were deleted."""
        with self.db.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_IMPORT_LOCK, name))
            self._require_admin(conn, name, version, principal, "remove")
            cur = conn.execute(
                "DELETE FROM datasets WHERE name = %s AND (%s::int IS NULL OR version = %s)", (name, version, version)
            )
            if cur.rowcount == 0:
                raise _missing(name, version)
            self._audited(conn, "dataset.remove", principal, {"dataset": name, "version": version,
                                                               "versions": cur.rowcount})
            return cur.rowcount


def _missing(name: str, version: int | None) -> NotFoundError:
    return NotFoundError(f"no dataset {name!r}" + (f" version {version}" if version is not None else ""))
