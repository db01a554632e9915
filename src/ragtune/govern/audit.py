"""The audit log: who read and changed what, hash-chained in the store (``store.audit``,
migration 015), checked and exported here.

Writes (ingest, deletion, key changes) append their event in their own transaction
(``store.audit.append``), so an action without its event never commits. A read (a search, an
answer, a document read) appends its event right after it, before its result is returned: if the
event cannot be written the read fails. ``[governance] audit_reads = "async"`` commits a read's
event without waiting for the disk (see ``GovernanceSettings``).

``verify`` recomputes every row's hash in order and names the first broken link: an edited row
(its hash no longer matches its content), a removed one (a gap in the sequence), a reordered or
rewritten stretch (a row that does not follow the one before it). A chain cut short at its end
looks whole; an ``anchor`` (a row's sequence number and hash written down earlier, as ``verify``
prints the head) catches that too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

from psycopg import sql

from ragtune.errors import QueryError
from ragtune.settings import GovernanceSettings
from ragtune.store.audit import CHECKED, GENESIS, AuditEvent, append
from ragtune.store.database import Database

# What the actions are named, for help texts (``store.audit.AuditEvent.action``).
ACTIONS = ("search, ask, document.read, trace.read, ingest, document.update, delete, collection.drop, feedback, "
           "schedule.create, schedule.delete, dataset.import, dataset.acl, dataset.remove, key.create, key.revoke, "
           "model.promote, model.rollback, policy.set, pii.reveal, quarantine.release or erasure")


@dataclass(frozen=True)
class Verification:
    """What ``verify`` found: ``ok`` with ``checked`` rows up to the head, or the first broken link."""

    ok: bool
    checked: int
    head_seq: int
    head_hash: str | None
    broken_at: int | None = None
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _problem(row: dict[str, Any], expected: int, previous: bytes, anchor: tuple[int, str] | None) -> str | None:
    """What is wrong with ``row`` as the chain's row ``expected`` after a row hashed ``previous``."""
    seq = row["seq"]
    if seq != expected:
        return f"row {expected} is missing: the next row is {seq}" + (
            f" (rows {expected}-{seq - 1} were removed)" if seq > expected + 1 else "")
    stored = bytes(row["hash"])
    if bytes(row["computed"]) != stored:
        return f"row {seq} was altered: its content does not give its hash"
    if bytes(row["prev_hash"]) != previous:
        return (f"row {seq} does not follow row {seq - 1}: the link between them is broken (rows were altered, "
                "removed or reordered and the chain rewritten from there)")
    if anchor is not None and seq == anchor[0] and stored.hex() != anchor[1]:
        return (f"row {seq} is not the anchored one: its hash is {stored.hex()}, the anchor says {anchor[1]} "
                "(the chain was rewritten up to here)")
    return None


def _hex(digest: bytes, checked: int) -> str | None:
    """The head's hash as hex; None before any row was checked (the genesis is no row's)."""
    return digest.hex() if checked else None


def parse_anchor(text: str) -> tuple[int, str]:
    """``SEQ:HASH`` (as ``verify`` prints the head) as a pair; a clear error otherwise."""
    seq, _, digest = text.strip().partition(":")
    if not seq.isdigit() or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
        raise QueryError(f"anchor {text!r}: expected SEQ:HASH, a row number and its 64-hex-digit hash "
                         "(`ragtune audit verify` prints the head as one)")
    return int(seq), digest.lower()


class AuditLog:
    """The project's audit log; ``enabled`` is ``[governance] audit``."""

    def __init__(self, db: Database, settings: GovernanceSettings) -> None:
        self.db = db
        self.settings = settings

    @property
    def enabled(self) -> bool:
        return self.settings.audit

    def record(self, event: AuditEvent, *, read: bool = False) -> int | None:
        """``event`` in its own transaction (a read's, or an action outside the store's own
        transactions); its sequence number, or None with the log off."""
        if not self.enabled:
            return None
        with self.db.autocommitted() as conn:  # one statement, one round trip
            return append(conn, event, wait=not read or self.settings.audit_reads == "sync")

    def verify(self, *, anchor: tuple[int, str] | None = None,
               progress: Callable[[int], None] | None = None) -> Verification:
        """Every row checked in order (see the module docstring); ``progress`` is told the rows
        checked so far, every 10,000."""
        expected, previous, checked = 1, GENESIS, 0
        anchored = anchor is None
        with self.db.snapshot() as conn, conn.cursor(name="ragtune_audit_verify") as cursor:
            cursor.itersize = 10_000
            cursor.execute(CHECKED + " ORDER BY seq")
            for row in cursor:
                problem = _problem(row, expected, previous, anchor)
                if problem is not None:
                    return Verification(False, checked, expected - 1, _hex(previous, checked),
                                        min(row["seq"], expected), problem)
                anchored = anchored or (anchor is not None and row["seq"] == anchor[0])
                previous, expected, checked = bytes(row["hash"]), row["seq"] + 1, checked + 1
                if progress is not None and checked % 10_000 == 0:
                    progress(checked)
        head = expected - 1
        if not anchored:
            assert anchor is not None
            return Verification(False, checked, head, _hex(previous, checked), anchor[0],
                                f"row {anchor[0]} (the anchor) is gone: the chain ends at row {head}, so rows "
                                "were removed from its end")
        return Verification(True, checked, head, _hex(previous, checked))

    def events(self, *, since: datetime | None = None, until: datetime | None = None, principal: str | None = None,
               action: str | None = None, collection: str | None = None, after_seq: int = 0,
               limit: int | None = 100) -> list[dict[str, Any]]:
        """Events in order, filtered; ``after_seq`` pages on from a row."""
        return list(self._rows(since=since, until=until, principal=principal, action=action,
                               collection=collection, after_seq=after_seq, limit=limit))

    def counts(self) -> dict[str, int]:
        """Events by action, most first."""
        with self.db.connection() as conn:
            rows = conn.execute("SELECT action, count(*) AS n FROM audit_events GROUP BY action"
                                " ORDER BY n DESC, action").fetchall()
        return {r["action"]: int(r["n"]) for r in rows}

    def export(self, out: TextIO, *, since: datetime | None = None, until: datetime | None = None) -> int:
        """Events as JSON Lines, in order, hashes included (so a copy can be checked on its own);
        returns how many."""
        n = 0
        for event in self._rows(since=since, until=until, limit=None):
            out.write(json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n")
            n += 1
        return n

    def _rows(self, *, since: datetime | None = None, until: datetime | None = None, principal: str | None = None,
              action: str | None = None, collection: str | None = None, after_seq: int = 0,
              limit: int | None) -> Iterator[dict[str, Any]]:
        if limit is not None and not 1 <= limit <= 10_000:
            raise QueryError(f"limit={limit}: from 1 to 10000")
        where: list[sql.Composable] = [sql.SQL("seq > %s")]
        values: list[Any] = [after_seq]
        for column, value, op in (("at", since, ">="), ("at", until, "<"), ("principal", principal, "="),
                                  ("action", action, "="), ("collection", collection, "=")):
            if value is not None:
                where.append(sql.SQL("{} " + op + " %s").format(sql.Identifier(column)))
                values.append(value)
        query = sql.SQL("SELECT seq, at, principal, key_id, origin, action, collection, documents, details,"
                        " encode(prev_hash, 'hex') AS prev_hash, encode(hash, 'hex') AS hash FROM audit_events"
                        " WHERE {} ORDER BY seq").format(sql.SQL(" AND ").join(where))
        if limit is not None:
            query = query + sql.SQL(" LIMIT %s")
            values.append(limit)
        with self.db.snapshot() as conn, conn.cursor(name="ragtune_audit_rows") as cursor:
            cursor.itersize = 5_000
            cursor.execute(query, values)
            for row in cursor:
                yield {**row, "at": row["at"].isoformat()}
