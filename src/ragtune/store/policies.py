"""Collections' policies (migration 016): every version kept, the newest in force; and the vault
of pseudonymized values their PII rules make.

Setting a policy is one transaction: the collection row locked (writers of the collection wait, so
an ingest runs under one version from start to end of each batch's write), the next version
inserted with its source and parsed rules, ``collections.policy_version`` moved, and the change
appended to the audit log (``policy.set``, with the source's sha256).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from ragtune.errors import NotFoundError
from ragtune.models import Principal
from ragtune.store.audit import AuditEvent, append
from ragtune.store.database import Conn, Database


@dataclass(frozen=True)
class StoredPolicy:
    collection: str  # the collection's name; for an API key's policy, "key:<key id>"
    version: int
    source: str
    rules: dict[str, Any]
    created_by: str
    created_at: datetime


_COLUMNS = "c.name AS collection, p.version, p.source, p.rules, p.created_by, p.created_at"


def save_policy(db: Database, collection: str, source: str, rules: dict[str, Any], principal: Principal, *,
                audit: bool) -> StoredPolicy:
    """``source`` (already parsed into ``rules``) as ``collection``'s next policy version."""
    with db.transaction() as conn:
        row = conn.execute("SELECT id, policy_version FROM collections WHERE name = %s FOR UPDATE",
                           (collection,)).fetchone()
        if row is None:
            raise NotFoundError(f"no collection named {collection!r}")
        latest = conn.execute("SELECT coalesce(max(version), 0) AS v FROM policies WHERE collection_id = %s",
                              (row["id"],)).fetchone()
        assert latest is not None
        version = int(latest["v"]) + 1
        conn.execute("INSERT INTO policies (collection_id, version, source, rules, created_by)"
                     " VALUES (%s, %s, %s, %s, %s)", (row["id"], version, source, Jsonb(rules), principal.id))
        conn.execute("UPDATE collections SET policy_version = %s WHERE id = %s", (version, row["id"]))
        if audit:
            append(conn, AuditEvent("policy.set", principal, collection, details={
                "version": version, "previous": int(row["policy_version"]),
                "source_sha256": hashlib.sha256(source.encode()).hexdigest()}))
        stored = conn.execute(f"SELECT {_COLUMNS} FROM policies p JOIN collections c ON c.id = p.collection_id"
                              " WHERE p.collection_id = %s AND p.version = %s", (row["id"], version)).fetchone()
    assert stored is not None
    return StoredPolicy(**stored)


def load_policy(db: Database, collection: str, version: int | None = None) -> StoredPolicy | None:
    """The policy in force (or ``version`` of it); None when the collection has none."""
    with db.connection() as conn:
        exists = conn.execute("SELECT id, policy_version FROM collections WHERE name = %s", (collection,)).fetchone()
        if exists is None:
            raise NotFoundError(f"no collection named {collection!r}")
        wanted = exists["policy_version"] if version is None else version
        row = conn.execute(f"SELECT {_COLUMNS} FROM policies p JOIN collections c ON c.id = p.collection_id"
                           " WHERE p.collection_id = %s AND p.version = %s", (exists["id"], wanted)).fetchone()
    if row is None and version is not None:
        raise NotFoundError(f"collection {collection!r} has no policy version {version}")
    return StoredPolicy(**row) if row is not None else None


def policy_history(db: Database, collection: str) -> list[StoredPolicy]:
    with db.connection() as conn:
        if conn.execute("SELECT 1 FROM collections WHERE name = %s", (collection,)).fetchone() is None:
            raise NotFoundError(f"no collection named {collection!r}")
        rows = conn.execute(f"SELECT {_COLUMNS} FROM policies p JOIN collections c ON c.id = p.collection_id"
                            " WHERE c.name = %s ORDER BY p.version", (collection,)).fetchall()
    return [StoredPolicy(**r) for r in rows]


def save_key_policy(db: Database, key_id: str, source: str, rules: dict[str, Any], principal: Principal, *,
                    audit: bool) -> StoredPolicy:
    """``source`` as the API key ``key_id``'s next policy version (the key must exist, revoked or not)."""
    with db.transaction() as conn:
        if conn.execute("SELECT 1 FROM api_keys WHERE key_id = %s FOR UPDATE", (key_id,)).fetchone() is None:
            raise NotFoundError(f"no API key {key_id!r}")
        latest = conn.execute("SELECT coalesce(max(version), 0) AS v FROM policies WHERE key_id = %s",
                              (key_id,)).fetchone()
        assert latest is not None
        version = int(latest["v"]) + 1
        row = conn.execute(
            "INSERT INTO policies (key_id, version, source, rules, created_by) VALUES (%s, %s, %s, %s, %s)"
            f" RETURNING {_KEY_COLUMNS}", (key_id, version, source, Jsonb(rules), principal.id)).fetchone()
        if audit:
            append(conn, AuditEvent("policy.set", principal, None, details={
                "key_id": key_id, "version": version, "previous": version - 1,
                "source_sha256": hashlib.sha256(source.encode()).hexdigest()}))
    assert row is not None
    return StoredPolicy(**row)


def load_key_policy(db: Database, key_id: str) -> StoredPolicy | None:
    """The newest policy of the API key ``key_id`` (None: it has none)."""
    with db.connection() as conn:
        row = conn.execute(f"SELECT {_KEY_COLUMNS} FROM policies WHERE key_id = %s ORDER BY version DESC LIMIT 1",
                           (key_id,)).fetchone()
    return StoredPolicy(**row) if row is not None else None


_KEY_COLUMNS = "'key:' || key_id AS collection, version, source, rules, created_by, created_at"


def sealed_value(db: Database, token: str) -> tuple[str, bytes] | None:
    """A pseudonym's entity type and sealed value from the vault (``govern.pii.Vault`` opens it)."""
    with db.connection() as conn:
        row = conn.execute("SELECT entity, sealed FROM pii_vault WHERE token = %s", (token,)).fetchone()
    return None if row is None else (str(row["entity"]), bytes(row["sealed"]))


def add_sealed(conn: Conn, sealed: Sequence[tuple[str, str, bytes]]) -> None:
    """Pseudonymized values (token, entity, sealed) into the vault, in ``conn``'s transaction; a token
    already there is kept (the same value under the same key). In token order, so concurrent writers
    of the same values take their locks alike."""
    by_token = {s[0]: s for s in sealed}
    if by_token:
        conn.cursor().executemany(
            "INSERT INTO pii_vault (token, entity, sealed) VALUES (%s, %s, %s) ON CONFLICT (token) DO NOTHING",
            [by_token[t] for t in sorted(by_token)])
