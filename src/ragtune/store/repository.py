"""Reads and writes of collections, documents, chunks and the lexical index.

Every change to one document happens in one transaction that first locks its collection row:
chunks, vectors, postings (and their packed blocks), document frequencies and the collection's
BM25 statistics move together, so readers (who use a snapshot) see either the old version or the
new one, and BM25 statistics stay exact under inserts and deletes. The same statistics are also
kept per ACL class (migration 007), so a search can use those of just the chunks its principal
can read.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from ragtune.errors import EmbedderMismatchError, IngestError, NotFoundError, QueryError
from ragtune.models import Chunk, Document, Principal
from ragtune.store.access import WriteAccess, check_replace, readable
from ragtune.store.audit import AuditEvent, append
from ragtune.store.database import Conn, Database
from ragtune.store.policies import add_sealed

# Postings are also packed into blocks of 2**BLOCK_BITS chunk ids per term (migration 005), one
# bytea of big-endian int4 triples (chunk id - block base, tf, dl) each: ~50 rows per term of a
# 66k-chunk collection, and an append rewrites at most 48 KB. Migration 005 packs with the same
# width: changing it takes a migration that re-packs every block.
BLOCK_BITS = 12
_PACKED_POSTING = sql.SQL("int4send((p.chunk_id & {mask})::int4) || int4send(p.tf) || int4send(p.dl)").format(
    mask=sql.Literal((1 << BLOCK_BITS) - 1))


@dataclass(frozen=True)
class CollectionInfo:
    id: int
    name: str
    embedder: str
    dimension: int
    n_chunks: int
    total_len: int
    documents: int = 0
    policy_version: int = 0  # the collection's policy in force (store.policies); 0: none
    quarantined: int = 0  # chunks its injection policy holds out of retrieval
    injection_screen: str | None = None  # the injection scorer version its chunks were scored by


@dataclass
class AclClassDelta:
    """What some chunks of one ACL add to (negative: take from) their ACL class's BM25 statistics."""

    chunks: int = 0
    length: int = 0
    df: dict[int, int] = field(default_factory=dict)  # term id -> how many of the chunks hold it


@dataclass(frozen=True)
class ExistingDocument:
    id: int
    content_hash: str
    version: int
    metadata: dict[str, Any]
    acl: tuple[str, ...]
    user_metadata: dict[str, Any]
    policy_version: int = 0  # the collection policy version it was screened under (0: none)


@dataclass
class PreparedDocument:
    """A document ready to be written: chunks with vectors and lexical term counts.

    ``metadata`` is what the loader found (and the title); ``user_metadata`` what the caller gave,
    which wins over it. ``acl`` and ``user_metadata`` None keep the stored document's values (a new
    document: public, none), read under the write's row lock so a concurrent change is never undone.
    """

    uri: str
    title: str | None
    text: str
    content_hash: str
    metadata: dict[str, Any]
    user_metadata: dict[str, Any] | None
    acl: tuple[str, ...] | None
    chunks: list[Chunk]
    vectors: np.ndarray
    term_counts: list[Counter[str]]
    minhash: bytes | None = None  # ingest/duplicates.py
    duplicate_of: str | None = None  # a near-duplicate stored without chunks: the URI it copies
    pii: dict[str, Any] = field(default_factory=dict)  # what its policy found and did (govern.screening)
    sealed: Sequence[tuple[str, str, bytes]] = ()  # pseudonymized values for the vault: (token, entity, sealed)
    injection: Sequence[float | None] = ()  # each chunk's injection score (govern.injection); () not screened
    quarantined: Sequence[bool] = ()  # each chunk held out of retrieval by its collection's policy


@dataclass(frozen=True)
class _Attributes:
    """A document's metadata and ACL as they will be stored."""

    metadata: dict[str, Any]
    user_metadata: dict[str, Any]
    acl: tuple[str, ...]


def _resolve(access: WriteAccess, uri: str, loader_metadata: dict[str, Any], user_metadata: dict[str, Any] | None,
             acl: tuple[str, ...] | None, current: dict[str, Any] | None) -> _Attributes:
    """The attributes a write stores, given the locked row it replaces (None: a new document);
    raises when ``access`` may not make the write (``store.access``)."""
    stored_acl = tuple(sorted(current["acl"])) if current is not None else ()
    target_acl = tuple(sorted(set(acl))) if acl is not None else stored_acl
    if current is not None:
        check_replace(access, uri, stored_acl, target_acl)
    user = user_metadata if user_metadata is not None else (current["user_metadata"] if current is not None else {})
    return _Attributes({**loader_metadata, **user}, dict(user), target_acl)


# One rule for every edge (CLI, HTTP, Python): a name that is safe in a URL path, a file name and a log line.
COLLECTION_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"
_COLLECTION_NAME = re.compile(COLLECTION_NAME)


def check_collection_name(name: str) -> str:
    if not isinstance(name, str) or not _COLLECTION_NAME.fullmatch(name):
        raise QueryError(f"invalid collection name {name!r}: 1 to 200 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return name


def text_hash(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Repository:
    """The store's collections, documents and chunks. With ``audit``, every write appends its
    event to the audit log in its own transaction (``store.audit``)."""

    def __init__(self, db: Database, *, audit: bool = False) -> None:
        self.db = db
        self.audit = audit

    def _audited(self, conn: Conn, event: AuditEvent) -> None:
        if self.audit:
            append(conn, event)

    # -- collections -------------------------------------------------------------------------
    def ensure_collection(self, name: str, embedder: str, dimension: int, *, m: int, ef_construction: int
                          ) -> CollectionInfo:
        check_collection_name(name)
        # no statement_timeout: building the HNSW index of a filled collection takes minutes
        with self.db.transaction(statement_timeout=0) as conn:
            conn.execute(
                "INSERT INTO collections (name, embedder, dimension) VALUES (%s, %s, %s)"
                " ON CONFLICT (name) DO NOTHING",
                (name, embedder, dimension),
            )
            info = self._collection(conn, name)
            if info.embedder != embedder or info.dimension != dimension:
                raise EmbedderMismatchError(
                    f"collection {name!r} was built with embedder {info.embedder!r} ({info.dimension}-d), "
                    f"not {embedder!r} ({dimension}-d): use the same embedder or another collection"
                )
            # The partial HNSW index over the typed cast is what makes one table hold collections
            # of different dimensions; the query must repeat the same expression and predicate.
            conn.execute(
                sql.SQL(
                    "CREATE INDEX IF NOT EXISTS {} ON chunks USING hnsw ((embedding::vector({})) vector_cosine_ops)"
                    " WITH (m = {}, ef_construction = {}) WHERE collection_id = {}"
                ).format(
                    sql.Identifier(f"chunks_hnsw_{info.id}"), sql.Literal(dimension), sql.Literal(m),
                    sql.Literal(ef_construction), sql.Literal(info.id),
                )
            )
        return info

    def collection(self, name: str, conn: Conn | None = None) -> CollectionInfo:
        if conn is not None:
            return self._collection(conn, name)
        with self.db.connection() as c:
            return self._collection(c, name)

    @staticmethod
    def _collection(conn: Conn, name: str) -> CollectionInfo:
        # No document count here: this runs on every search, and counting is O(documents).
        row = conn.execute(
            "SELECT id, name, embedder, dimension, n_chunks, total_len, policy_version, quarantined, injection_screen"
            " FROM collections c WHERE name = %s",
            (name,),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no collection named {name!r}")
        return CollectionInfo(**row)

    def collections(self) -> list[CollectionInfo]:
        with self.db.connection() as conn:
            rows = conn.execute(
                "SELECT id, name, embedder, dimension, n_chunks, total_len,"
                " (SELECT count(*) FROM documents d WHERE d.collection_id = c.id) AS documents"
                " FROM collections c ORDER BY name"
            ).fetchall()
        return [CollectionInfo(**r) for r in rows]

    def visible_collections(self, principal: Principal, name: str | None = None) -> list[CollectionInfo]:
        """The collections (all, or the one named) holding a document ``principal`` may read, with
        counts of those only (``total_len`` is not counted: 0), so nothing of what it cannot read
        shows, not even a name."""
        if principal.admin:
            return [c for c in self.collections() if name is None or c.name == name]
        chunk_ok, chunk_params = readable(principal, "k.acl")
        doc_ok, doc_params = readable(principal, "d.acl")
        with self.db.connection() as conn:
            rows = conn.execute(sql.SQL(
                "SELECT c.id, c.name, c.embedder, c.dimension, 0 AS total_len, v.documents,"
                " (SELECT count(*) FROM chunks k WHERE k.collection_id = c.id AND {chunk_ok}) AS n_chunks"
                " FROM collections c CROSS JOIN LATERAL (SELECT count(*) AS documents FROM documents d"
                "  WHERE d.collection_id = c.id AND {doc_ok}) v"
                " WHERE v.documents > 0 AND (%s::text IS NULL OR c.name = %s) ORDER BY c.name"
            ).format(chunk_ok=chunk_ok, doc_ok=doc_ok), [*chunk_params, *doc_params, name, name]).fetchall()
        return [CollectionInfo(**r) for r in rows]

    def has_visible_documents(self, collection_id: int, principal: Principal) -> bool:
        if principal.admin:
            return True
        ok, params = readable(principal, "d.acl")
        with self.db.connection() as conn:
            row = conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM documents d WHERE d.collection_id = %s"
                                       " AND {ok}) AS visible").format(ok=ok), [collection_id, *params]).fetchone()
        return bool(row and row["visible"])

    def drop_collection(self, name: str, *, principal: Principal) -> None:
        with self.db.transaction(statement_timeout=0) as conn:  # deletes every row of a collection
            info = self._collection(conn, name)
            n = conn.execute("SELECT count(*) AS n FROM documents WHERE collection_id = %s", (info.id,)).fetchone()
            conn.execute(
                "DELETE FROM postings p USING chunks c WHERE c.collection_id = %s AND p.chunk_id = c.id",
                (info.id,),
            )
            conn.execute("DELETE FROM posting_blocks b USING terms t WHERE t.collection_id = %s AND b.term_id = t.id",
                         (info.id,))
            conn.execute("DELETE FROM chunks WHERE collection_id = %s", (info.id,))
            conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(f"chunks_hnsw_{info.id}")))
            conn.execute("DELETE FROM collections WHERE id = %s", (info.id,))
            self._audited(conn, AuditEvent("collection.drop", principal, name,
                                           details={"documents": n["n"] if n else 0}))

    # -- quarantined chunks (migration 017) ----------------------------------------------------
    def injection_releases(self, collection_id: int) -> set[str]:
        with self.db.connection() as conn:
            rows = conn.execute("SELECT text_hash FROM injection_releases WHERE collection_id = %s",
                                (collection_id,)).fetchall()
        return {r["text_hash"] for r in rows}

    def rescore_injection(self, collection_id: int, version: str, score: Callable[[str], float],
                          hold: Callable[[str, float], bool]) -> tuple[int, int]:
        """Score every chunk of a collection again (``score(text)``) and hold out of retrieval those
        ``hold(text, score)`` says, recording ``version`` as the collection's scorer; one
        transaction under the collection's lock. Returns (chunks scored, chunks quarantined)."""
        with self.db.transaction() as conn:
            conn.execute("SELECT 1 FROM collections WHERE id = %s FOR UPDATE", (collection_id,))
            rows = conn.execute("SELECT id, body FROM chunks WHERE collection_id = %s", (collection_id,)).fetchall()
            ids, scores, holds = [], [], []
            for row in rows:
                value = score(row["body"])
                ids.append(row["id"])
                scores.append(value)
                holds.append(hold(row["body"], value))
            conn.execute(
                "UPDATE chunks c SET injection = v.score, quarantined = v.hold"
                " FROM unnest(%s::int8[], %s::float4[], %s::bool[]) AS v(id, score, hold) WHERE c.id = v.id",
                (ids, scores, holds))
            conn.execute("UPDATE collections SET injection_screen = %s, quarantined = %s WHERE id = %s",
                         (version, sum(holds), collection_id))
        return len(ids), sum(holds)

    def quarantined_chunks(self, collection: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """The chunks a collection's injection policy holds out of retrieval, highest score first
        (for an admin's review: their text is shown)."""
        with self.db.connection() as conn:
            info = self._collection(conn, collection)
            return conn.execute(
                "SELECT c.id, c.document_id, d.uri, c.ordinal, c.injection, c.body FROM chunks c"
                " JOIN documents d ON d.id = c.document_id WHERE c.collection_id = %s AND c.quarantined"
                " ORDER BY c.injection DESC, c.id LIMIT %s", (info.id, limit)).fetchall()

    def release_quarantined(self, collection: str, chunk_ids: Sequence[int], principal: Principal) -> int:
        """Return quarantined chunks to retrieval (their texts stay released through re-ingests);
        audited as ``quarantine.release``. Returns how many were released."""
        with self.db.transaction() as conn:
            info = self._collection(conn, collection)
            conn.execute("SELECT 1 FROM collections WHERE id = %s FOR UPDATE", (info.id,))
            rows = conn.execute(
                "UPDATE chunks c SET quarantined = false FROM documents d WHERE d.id = c.document_id"
                " AND c.collection_id = %s AND c.id = ANY(%s) AND c.quarantined"
                " RETURNING c.id, c.body, c.document_id, d.uri, d.content_hash",
                (info.id, list(chunk_ids))).fetchall()
            if not rows:
                raise NotFoundError(f"no quarantined chunk {', '.join(map(str, chunk_ids))} in {collection!r}")
            conn.execute("UPDATE collections SET quarantined = quarantined - %s WHERE id = %s", (len(rows), info.id))
            conn.cursor().executemany(
                "INSERT INTO injection_releases (collection_id, text_hash, released_by) VALUES (%s, %s, %s)"
                " ON CONFLICT DO NOTHING", [(info.id, content_hash(r["body"]), principal.id) for r in rows])
            self._audited(conn, AuditEvent("quarantine.release", principal, collection, [
                {"id": r["document_id"], "uri": r["uri"], "hash": r["content_hash"], "chunks": [r["id"]]}
                for r in rows]))
        return len(rows)

    # -- documents ---------------------------------------------------------------------------
    def existing(self, collection_id: int, uris: Sequence[str]) -> dict[str, ExistingDocument]:
        with self.db.connection() as conn:
            rows = conn.execute(
                "SELECT id, uri, content_hash, version, metadata, acl, user_metadata,"
                " coalesce((pii->>'policy')::int, 0) AS policy FROM documents"
                " WHERE collection_id = %s AND uri = ANY(%s)",
                (collection_id, list(uris)),
            ).fetchall()
        return {
            r["uri"]: ExistingDocument(r["id"], r["content_hash"], r["version"], r["metadata"],
                                       tuple(sorted(r["acl"])), r["user_metadata"], r["policy"])
            for r in rows
        }

    def folder_attributes(self, collection_id: int, root: str) -> dict[str, set[tuple[tuple[str, ...], str]]]:
        """For every folder under ``root`` (an absolute path) holding stored documents, the distinct
        (ACL, given metadata as canonical JSON) pairs of the documents from files directly in it."""
        prefix = root.rstrip("/") + "/"
        with self.db.connection() as conn:
            rows = conn.execute(
                "SELECT DISTINCT regexp_replace(split_part(uri, '#', 1), '/[^/]*$', '') AS folder, acl,"
                " user_metadata::text AS meta FROM documents WHERE collection_id = %s AND starts_with(uri, %s)",
                (collection_id, prefix),
            ).fetchall()
        found: dict[str, set[tuple[tuple[str, ...], str]]] = {}
        for r in rows:
            found.setdefault(r["folder"] or "/", set()).add((tuple(sorted(r["acl"])), r["meta"]))
        return found

    def write_document(self, info: CollectionInfo, doc: PreparedDocument, access: WriteAccess) -> str:
        """Insert or replace one document atomically; returns "added" or "updated"."""
        return self.write_documents(info, [doc], access)[0]

    def write_documents(self, info: CollectionInfo, docs: Sequence[PreparedDocument], access: WriteAccess
                        ) -> list[str]:
        """Insert or replace several documents in one transaction; returns "added" or "updated"
        for each. Readers see all of them or none, so never part of a document; set-based
        statements make the database work per document a fraction of writing them one by one.
        The URIs must be distinct. A replacement ``access`` may not make (``store.access``)
        raises and writes nothing."""
        if not docs:
            return []
        if len({d.uri for d in docs}) != len(docs):
            raise QueryError("write_documents: the same URI twice in one group")
        for doc in docs:
            if doc.vectors.shape != (len(doc.chunks), info.dimension):
                raise EmbedderMismatchError(
                    f"{doc.uri}: vectors of shape {doc.vectors.shape} for {len(doc.chunks)} chunks of a "
                    f"{info.dimension}-d collection")
        try:
            return self._write_documents(info, docs, access)
        except psycopg.errors.DataError as exc:  # e.g. a NUL character, which PostgreSQL text cannot hold
            source = docs[0].uri if len(docs) == 1 else f"{len(docs)} documents from {docs[0].uri}"
            raise IngestError(source, f"the database refused the text: {exc}") from exc

    def _write_documents(self, info: CollectionInfo, docs: Sequence[PreparedDocument], access: WriteAccess
                         ) -> list[str]:
        with self.db.transaction() as conn:
            conn.execute("SELECT 1 FROM collections WHERE id = %s FOR UPDATE", (info.id,))
            # the rows are locked before the check, so what is checked is what gets replaced
            current = {r["uri"]: r for r in conn.execute(
                "SELECT id, uri, acl, user_metadata FROM documents WHERE collection_id = %s AND uri = ANY(%s)"
                " ORDER BY id FOR UPDATE",
                (info.id, [d.uri for d in docs])).fetchall()}
            attrs = {d.uri: _resolve(access, d.uri, d.metadata, d.user_metadata, d.acl, current.get(d.uri))
                     for d in docs}
            existing = {uri: r["id"] for uri, r in current.items()}
            if existing:
                self._remove_chunks(conn, info.id, list(existing.values()))
                conn.cursor().executemany(
                    "UPDATE documents SET content_hash = %s, version = version + 1, title = %s, body = %s,"
                    " metadata = %s, user_metadata = %s, acl = %s, minhash = %s, duplicate_of = %s, pii = %s,"
                    " updated_at = now() WHERE id = %s",
                    [(d.content_hash, d.title, d.text, Jsonb(attrs[d.uri].metadata), Jsonb(attrs[d.uri].user_metadata),
                      list(attrs[d.uri].acl), d.minhash, d.duplicate_of, Jsonb(d.pii), existing[d.uri])
                     for d in docs if d.uri in existing])
                _mark_copies_stale(conn, info.id, list(existing), [d.uri for d in docs])
            new = [d for d in docs if d.uri not in existing]
            ids = dict(existing)
            if new:
                fresh = _next_ids(conn, "documents_id_seq", len(new))
                with conn.cursor().copy("COPY documents (id, collection_id, uri, content_hash, title, body,"
                                        " metadata, user_metadata, acl, minhash, duplicate_of, pii)"
                                        " FROM STDIN (FORMAT BINARY)") as cp:
                    cp.set_types(["int8", "int4", "text", "text", "text", "text", "jsonb", "jsonb", "text[]", "bytea",
                                  "text", "jsonb"])
                    for doc_id, d in zip(fresh, new, strict=True):
                        a = attrs[d.uri]
                        cp.write_row((doc_id, info.id, d.uri, d.content_hash, d.title, d.text, Jsonb(a.metadata),
                                      Jsonb(a.user_metadata), list(a.acl), d.minhash, d.duplicate_of, Jsonb(d.pii)))
                ids.update((d.uri, doc_id) for doc_id, d in zip(fresh, new, strict=True))
            self._insert_chunks(conn, info, [(ids[d.uri], d, attrs[d.uri]) for d in docs])
            add_sealed(conn, [s for d in docs for s in d.sealed])
            self._audited(conn, AuditEvent("ingest", access.principal, info.name, [
                {"id": ids[d.uri], "uri": d.uri, "hash": d.content_hash,
                 "change": "updated" if d.uri in existing else "added", **_screening(d)} for d in docs]))
        return ["updated" if d.uri in existing else "added" for d in docs]

    def update_document_attributes(self, collection_id: int, uri: str, loader_metadata: dict[str, Any],
                                   user_metadata: dict[str, Any] | None, acl: Sequence[str] | None,
                                   access: WriteAccess) -> bool:
        """Same text, new metadata or ACL: no re-embedding, but chunks get the new copies too.
        None keeps the stored value; returns False when nothing changed."""
        with self.db.transaction() as conn:
            # the collection first, as every writer locks it: an ACL change moves ACL class statistics
            conn.execute("SELECT 1 FROM collections WHERE id = %s FOR UPDATE", (collection_id,))
            row = conn.execute(
                "SELECT d.id, d.acl, d.metadata, d.user_metadata, d.content_hash, c.name AS collection"
                " FROM documents d JOIN collections c ON c.id = d.collection_id"
                " WHERE d.collection_id = %s AND d.uri = %s FOR UPDATE OF d", (collection_id, uri)).fetchone()
            if row is None:
                raise NotFoundError(f"no document {uri!r}")
            a = _resolve(access, uri, loader_metadata, user_metadata, None if acl is None else tuple(acl), row)
            if a.metadata == row["metadata"] and a.user_metadata == row["user_metadata"] and \
                    a.acl == tuple(sorted(row["acl"])):
                return False
            conn.execute(
                "UPDATE documents SET metadata = %s, user_metadata = %s, acl = %s, version = version + 1,"
                " updated_at = now() WHERE id = %s",
                (Jsonb(a.metadata), Jsonb(a.user_metadata), list(a.acl), row["id"]),
            )
            if list(row["acl"]) != list(a.acl):  # the chunks change ACL class
                move_acl_statistics(conn, collection_id, row["id"], a.acl)
                _mark_copies_stale(conn, collection_id, [uri])  # a copy links only to its own ACL
            conn.execute(
                "UPDATE chunks SET metadata = %s, acl = %s WHERE document_id = %s",
                (Jsonb(a.metadata), list(a.acl), row["id"]),
            )
            self._audited(conn, AuditEvent(
                "document.update", access.principal, row["collection"],
                [{"id": row["id"], "uri": uri, "hash": row["content_hash"]}],
                {"acl_changed": list(row["acl"]) != list(a.acl)}))
        return True

    def delete_documents(self, collection_id: int, uris: Sequence[str], *, principal: Principal) -> int:
        """Delete the documents of these URIs that ``principal`` may read; returns how many."""
        if not uris:
            return 0
        ok, params = readable(principal, "d.acl")
        with self.db.transaction() as conn:
            name = conn.execute("SELECT name FROM collections WHERE id = %s FOR UPDATE", (collection_id,)).fetchone()
            found = conn.execute(sql.SQL(
                "SELECT d.id, d.uri, d.content_hash FROM documents d WHERE d.collection_id = %s AND d.uri = ANY(%s)"
                " AND {ok} ORDER BY d.id").format(ok=ok), [collection_id, list(uris), *params]).fetchall()
            ids = [r["id"] for r in found]
            if ids:
                self._remove_chunks(conn, collection_id, ids)
                gone = [r["uri"] for r in conn.execute("DELETE FROM documents WHERE id = ANY(%s) RETURNING uri",
                                                       (ids,)).fetchall()]
                _mark_copies_stale(conn, collection_id, gone)
            # asked for and not found (or not readable) is recorded too: who tried to delete what
            self._audited(conn, AuditEvent("delete", principal, name["name"] if name else None, [
                {"id": r["id"], "uri": r["uri"], "hash": r["content_hash"]} for r in found],
                {"asked": len(uris)}))
        return len(ids)

    def near_duplicate_signatures(self, collection_id: int) -> list[tuple[str, tuple[str, ...], bytes]]:
        """(URI, ACL, MinHash signature) of the collection's documents that are not themselves
        linked copies, for ``ingest.duplicates.NearDuplicateIndex``."""
        with self.db.connection() as conn:
            rows = conn.execute(
                "SELECT uri, acl, minhash FROM documents WHERE collection_id = %s AND minhash IS NOT NULL"
                " AND duplicate_of IS NULL", (collection_id,)).fetchall()
        return [(r["uri"], tuple(sorted(r["acl"])), bytes(r["minhash"])) for r in rows]

    _DOCUMENT = ("SELECT d.id, c.name AS collection, d.uri, d.content_hash, d.version, d.metadata, d.acl,"
                 " d.title, d.updated_at::text AS updated_at,"
                 " (SELECT count(*) FROM chunks k WHERE k.document_id = d.id) AS chunk_count")

    def documents(self, collection_id: int, *, principal: Principal, prefix: str | None = None,
                  limit: int | None = None, offset: int = 0) -> list[Document]:
        """The documents of a collection ``principal`` may read, by URI."""
        if (limit is not None and limit < 0) or offset < 0:
            raise QueryError(f"limit and offset must not be negative, got limit={limit} offset={offset}")
        where, params = self._listed(collection_id, principal, prefix)
        with self.db.connection() as conn:
            rows = conn.execute(sql.SQL(
                self._DOCUMENT + " FROM documents d JOIN collections c ON c.id = d.collection_id"
                " WHERE {where} ORDER BY d.uri LIMIT %s OFFSET %s").format(where=where),
                [*params, limit, offset],
            ).fetchall()
        return [_document(r) for r in rows]

    def count_documents(self, collection_id: int, *, principal: Principal, prefix: str | None = None) -> int:
        """How many documents ``documents`` lists without a limit: what ``principal`` may read only."""
        where, params = self._listed(collection_id, principal, prefix)
        with self.db.connection() as conn:
            row = conn.execute(sql.SQL("SELECT count(*) AS n FROM documents d WHERE {where}").format(where=where),
                               params).fetchone()
        return int(row["n"]) if row else 0

    @staticmethod
    def _listed(collection_id: int, principal: Principal, prefix: str | None) -> tuple[sql.Composable, list[Any]]:
        # one condition for the listing and its count, so a page and its total cannot disagree
        ok, params = readable(principal, "d.acl")
        where = sql.SQL("d.collection_id = %s AND {ok} AND (%s::text IS NULL OR starts_with(d.uri, %s::text))")
        return where.format(ok=ok), [collection_id, *params, prefix, prefix]

    def document(self, collection_id: int, *, principal: Principal, uri: str | None = None,
                 document_id: int | None = None) -> tuple[Document, str, list[Chunk]]:
        """One document (by URI or id) with its text and chunks, if ``principal`` may read it; a
        hidden one is not found, exactly like a missing one."""
        if (uri is None) == (document_id is None):
            raise QueryError("name a document by uri or by document_id")
        ok, params = readable(principal, "d.acl")
        with self.db.connection() as conn:
            row = conn.execute(sql.SQL(
                self._DOCUMENT + ", d.body FROM documents d JOIN collections c ON c.id = d.collection_id"
                " WHERE d.collection_id = %s AND {ok} AND (d.uri = %s OR d.id = %s)").format(ok=ok),
                [collection_id, *params, uri, document_id],
            ).fetchone()
            if row is None:
                raise NotFoundError(f"no document {uri if uri is not None else document_id!r} in this collection")
            chunks = conn.execute(
                "SELECT id, document_id, ordinal, body AS text, start_char AS start, end_char AS end,"
                " heading, tokens FROM chunks WHERE document_id = %s ORDER BY ordinal",
                (row["id"],),
            ).fetchall()
        body = row.pop("body")
        return _document(row), body, [Chunk(**c) for c in chunks]

    def readable_chunks(self, ids: Sequence[int], principal: Principal) -> list[dict[str, Any]]:
        """The chunks among ``ids`` that ``principal`` may read, with their document's URI and text."""
        ok, params = readable(principal, "k.acl")
        with self.db.connection() as conn:
            return list(conn.execute(sql.SQL(
                "SELECT k.id AS chunk_id, k.document_id, d.uri, k.start_char AS start, k.end_char AS \"end\","
                " k.heading, k.body AS text FROM chunks k JOIN documents d ON d.id = k.document_id"
                " WHERE k.id = ANY(%s) AND {ok} ORDER BY k.id").format(ok=ok), [list(ids), *params]).fetchall())

    # -- embedding cache ---------------------------------------------------------------------
    def cached_embeddings(self, model: str, hashes: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        if not hashes:
            return {}
        with self.db.connection() as conn:
            rows = conn.execute(
                "SELECT text_hash, embedding FROM embedding_cache WHERE model = %s AND text_hash = ANY(%s)",
                (model, list(hashes)),
            ).fetchall()
        return {bytes(r["text_hash"]): _as_array(r["embedding"]) for r in rows}

    def store_embeddings(self, model: str, items: Iterable[tuple[bytes, np.ndarray]]) -> None:
        rows = list(items)
        if not rows:
            return
        with self.db.transaction() as conn:
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS embedding_staging"
                         " (text_hash bytea, embedding vector) ON COMMIT DELETE ROWS")
            with conn.cursor().copy("COPY embedding_staging (text_hash, embedding) FROM STDIN (FORMAT BINARY)") as cp:
                cp.set_types(["bytea", "vector"])
                for h, vec in rows:
                    cp.write_row((h, vec))
            conn.execute(
                "INSERT INTO embedding_cache (model, text_hash, embedding)"
                " SELECT %s, text_hash, embedding FROM embedding_staging ON CONFLICT DO NOTHING",
                (model,),
            )

    # -- internals ---------------------------------------------------------------------------
    @staticmethod
    def _remove_chunks(conn: Conn, collection_id: int, document_ids: list[int]) -> None:
        # document frequencies fall in the collection and in the chunks' ACL classes (migration 007)
        touched = conn.execute(
            "WITH gone AS ("
            "  DELETE FROM postings p USING chunks c"
            "  WHERE c.document_id = ANY(%(docs)s) AND p.chunk_id = c.id RETURNING p.term_id, p.chunk_id, c.acl),"
            " df AS (UPDATE terms t SET df = t.df - g.n"
            "  FROM (SELECT term_id, count(*) AS n FROM gone GROUP BY term_id) g WHERE t.id = g.term_id),"
            " class_df AS (UPDATE acl_class_terms x SET df = x.df - g.n"
            "  FROM (SELECT k.id AS class_id, gone.term_id, count(*) AS n FROM gone"
            "   JOIN acl_classes k ON k.collection_id = %(cid)s AND k.acl = gone.acl GROUP BY 1, 2) g"
            "  WHERE x.class_id = g.class_id AND x.term_id = g.term_id)"
            " SELECT DISTINCT term_id, (chunk_id >> %(bits)s)::int AS block FROM gone",
            {"docs": document_ids, "cid": collection_id, "bits": BLOCK_BITS},
        ).fetchall()
        rebuild_posting_blocks(conn, [(r["term_id"], r["block"]) for r in touched])
        row = conn.execute(
            "WITH gone AS (DELETE FROM chunks WHERE document_id = ANY(%(docs)s) RETURNING lex_len, acl, quarantined),"
            " classes AS (UPDATE acl_classes k SET n_chunks = k.n_chunks - g.n, total_len = k.total_len - g.len"
            "  FROM (SELECT acl, count(*) AS n, sum(lex_len) AS len FROM gone GROUP BY acl) g"
            "  WHERE k.collection_id = %(cid)s AND k.acl = g.acl RETURNING k.id, k.n_chunks)"
            " UPDATE collections SET n_chunks = n_chunks - (SELECT count(*) FROM gone),"
            " total_len = total_len - (SELECT coalesce(sum(lex_len), 0) FROM gone),"
            " quarantined = quarantined - (SELECT count(*) FROM gone WHERE quarantined) WHERE id = %(cid)s"
            " RETURNING (SELECT array_agg(id) FROM classes WHERE n_chunks = 0) AS emptied",
            {"docs": document_ids, "cid": collection_id},
        ).fetchone()
        if row is not None and row["emptied"]:  # a class without chunks goes, with its terms' rows
            conn.execute("DELETE FROM acl_classes WHERE id = ANY(%s)", (row["emptied"],))

    @staticmethod
    def _insert_chunks(conn: Conn, info: CollectionInfo, docs: list[tuple[int, PreparedDocument, _Attributes]]
                       ) -> None:
        n = sum(len(d.chunks) for _, d, _ in docs)
        if n == 0:
            return
        ids = iter(_next_ids(conn, "chunks_id_seq", n))
        # (chunk id, term counts, lexical length) of every chunk, for the postings
        lexical: list[tuple[int, Counter[str], int]] = []
        by_acl: dict[tuple[str, ...], list[int]] = {}  # the ACL classes of the chunks: indexes into lexical
        # binary COPY: no float formatting and parsing of the vectors
        held = 0
        with conn.cursor().copy(
            "COPY chunks (id, document_id, collection_id, ordinal, body, start_char, end_char, heading,"
            " tokens, lex_len, metadata, acl, embedding, injection, quarantined) FROM STDIN (FORMAT BINARY)"
        ) as cp:
            cp.set_types(["int8", "int8", "int4", "int4", "text", "int4", "int4", "text", "int4", "int4",
                          "jsonb", "text[]", "vector", "float4", "bool"])
            for document_id, doc, attrs in docs:
                meta = Jsonb(attrs.metadata)
                acl = list(attrs.acl)
                members = by_acl.setdefault(tuple(acl), [])  # the class is the ACL exactly as stored
                scores = doc.injection or [None] * len(doc.chunks)
                holds = doc.quarantined or [False] * len(doc.chunks)
                held += sum(holds)
                for chunk, vec, counts, score, hold in zip(doc.chunks, doc.vectors, doc.term_counts, scores, holds,
                                                           strict=True):
                    cid = next(ids)
                    lex_len = sum(counts.values())
                    members.append(len(lexical))
                    lexical.append((cid, counts, lex_len))
                    cp.write_row((cid, document_id, info.id, chunk.ordinal, chunk.text, chunk.start, chunk.end,
                                  chunk.heading, chunk.tokens, lex_len, meta, acl, vec, score, hold))
        # Document frequency counts chunks containing a term (the chunk is the BM25 "document").
        df: Counter[str] = Counter()
        for _, counts, _ in lexical:
            df.update(counts.keys())
        term_ids: dict[str, int] = {}
        if df:
            vocab = sorted(df)  # a fixed lock order; the collection lock already serialises writers
            term_ids = {
                r["term"]: r["id"]
                for r in conn.execute(
                    "INSERT INTO terms (collection_id, term, df)"
                    " SELECT %s, t, n FROM unnest(%s::text[], %s::int[]) AS x(t, n) ORDER BY t"
                    " ON CONFLICT (collection_id, term) DO UPDATE SET df = terms.df + EXCLUDED.df"
                    " RETURNING id, term",
                    (info.id, vocab, [df[t] for t in vocab]),
                ).fetchall()
            }
            with conn.cursor().copy("COPY postings (term_id, chunk_id, tf, dl) FROM STDIN (FORMAT BINARY)") as cp:
                cp.set_types(["int8", "int8", "int4", "int4"])
                for cid, counts, lex_len in lexical:
                    for term, tf in counts.items():
                        cp.write_row((term_ids[term], cid, tf, lex_len))
            append_posting_blocks(conn, [cid for cid, _, _ in lexical])
        conn.execute(
            "UPDATE collections SET n_chunks = n_chunks + %s, total_len = total_len + %s,"
            " quarantined = quarantined + %s WHERE id = %s",
            (n, sum(x[2] for x in lexical), held, info.id),
        )
        deltas: dict[tuple[str, ...], AclClassDelta] = {}
        for key, members in by_acl.items():
            if not members:
                continue
            if len(by_acl) == 1:  # the usual batch, of one ACL: the class gains what the collection gains
                class_df = df
            else:
                class_df = Counter()
                for i in members:
                    class_df.update(lexical[i][1].keys())
            deltas[key] = AclClassDelta(len(members), sum(lexical[i][2] for i in members),
                                        {term_ids[t]: k for t, k in class_df.items()})
        add_acl_statistics(conn, info.id, deltas)


def add_acl_statistics(conn: Conn, collection_id: int, deltas: Mapping[tuple[str, ...], AclClassDelta]) -> None:
    """Add ``deltas`` (keyed by ACL exactly as stored on the chunks; negative to take away) to the
    collection's ACL class statistics, creating the classes named, deleting those left empty."""
    if not deltas:
        return
    keys = sorted(deltas)
    rows = conn.execute(
        "INSERT INTO acl_classes (collection_id, acl, n_chunks, total_len)"
        " SELECT %s, ARRAY(SELECT e FROM jsonb_array_elements_text(x.acl) WITH ORDINALITY AS a(e, i) ORDER BY i),"
        "  x.n, x.len FROM jsonb_to_recordset(%s) AS x(acl jsonb, n bigint, len bigint)"
        " ON CONFLICT (collection_id, acl) DO UPDATE SET n_chunks = acl_classes.n_chunks + EXCLUDED.n_chunks,"
        "  total_len = acl_classes.total_len + EXCLUDED.total_len RETURNING id, acl, n_chunks",
        (collection_id, Jsonb([{"acl": list(k), "n": deltas[k].chunks, "len": deltas[k].length} for k in keys])),
    ).fetchall()
    class_of = {tuple(r["acl"]): r["id"] for r in rows}
    changes = sorted((class_of[k], term, n) for k in keys for term, n in deltas[k].df.items() if n)
    if changes:
        conn.execute(
            "INSERT INTO acl_class_terms (class_id, term_id, df)"
            " SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::int[])"
            " ON CONFLICT (class_id, term_id) DO UPDATE SET df = acl_class_terms.df + EXCLUDED.df",
            ([c[0] for c in changes], [c[1] for c in changes], [c[2] for c in changes]),
        )
    emptied = [r["id"] for r in rows if r["n_chunks"] == 0]
    if emptied:
        conn.execute("DELETE FROM acl_classes WHERE id = ANY(%s)", (emptied,))


def move_acl_statistics(conn: Conn, collection_id: int, document_id: int, acl: Sequence[str]) -> None:
    """An ACL-only change: the document's chunks (same terms, same lengths) leave the classes of
    the ACL they store for the class of ``acl``. Call it before the chunks' ACL is updated."""
    target = tuple(acl)
    params = (document_id, list(target))
    chunks = conn.execute(
        "SELECT acl, count(*) AS n, sum(lex_len) AS len FROM chunks WHERE document_id = %s AND acl <> %s::text[]"
        " GROUP BY acl", params).fetchall()
    if not chunks:
        return
    deltas = {tuple(r["acl"]): AclClassDelta(-r["n"], -r["len"]) for r in chunks}
    gain = AclClassDelta(sum(r["n"] for r in chunks), sum(r["len"] for r in chunks))
    for r in conn.execute(
            "SELECT c.acl, p.term_id, count(*) AS n FROM chunks c JOIN postings p ON p.chunk_id = c.id"
            " WHERE c.document_id = %s AND c.acl <> %s::text[] GROUP BY 1, 2", params).fetchall():
        deltas[tuple(r["acl"])].df[r["term_id"]] = -r["n"]
        gain.df[r["term_id"]] = gain.df.get(r["term_id"], 0) + r["n"]
    deltas[target] = gain
    add_acl_statistics(conn, collection_id, deltas)


def append_posting_blocks(conn: Conn, chunk_ids: list[int]) -> None:
    """Add the postings of new chunks to their blocks: fresh chunk ids are in no block yet."""
    conn.execute(sql.SQL(
        "INSERT INTO posting_blocks (term_id, block, postings)"
        " SELECT p.term_id, (p.chunk_id >> {bits})::int, string_agg({packed}, ''::bytea ORDER BY p.chunk_id)"
        " FROM postings p WHERE p.chunk_id = ANY(%s::bigint[]) GROUP BY 1, 2"
        " ON CONFLICT (term_id, block) DO UPDATE SET postings = posting_blocks.postings || EXCLUDED.postings"
    ).format(bits=sql.Literal(BLOCK_BITS), packed=_PACKED_POSTING), (chunk_ids,))


def rebuild_posting_blocks(conn: Conn, keys: list[tuple[int, int]]) -> None:
    """Re-pack the given (term id, block) posting blocks from ``postings``; a block left without
    postings is dropped."""
    if not keys:
        return
    term_ids, blocks = [k[0] for k in keys], [k[1] for k in keys]
    conn.execute("DELETE FROM posting_blocks b USING unnest(%s::bigint[], %s::int[]) AS k(term_id, block)"
                 " WHERE b.term_id = k.term_id AND b.block = k.block", (term_ids, blocks))
    conn.execute(sql.SQL(
        "INSERT INTO posting_blocks (term_id, block, postings)"
        " SELECT k.term_id, k.block, string_agg({packed}, ''::bytea ORDER BY p.chunk_id)"
        " FROM unnest(%s::bigint[], %s::int[]) AS k(term_id, block)"
        " JOIN postings p ON p.term_id = k.term_id"
        "  AND p.chunk_id >= k.block::bigint << {bits} AND p.chunk_id < (k.block::bigint + 1) << {bits}"
        " GROUP BY k.term_id, k.block"
    ).format(packed=_PACKED_POSTING, bits=sql.Literal(BLOCK_BITS)), (term_ids, blocks))


def _next_ids(conn: Conn, sequence: str, n: int) -> list[int]:
    return [r["id"] for r in conn.execute(
        "SELECT nextval(%s::regclass) AS id FROM generate_series(1, %s)", (sequence, n)).fetchall()]


def _document(row: dict[str, Any]) -> Document:
    row = dict(row)
    row["acl"] = tuple(row["acl"])
    return Document(**row)


def _as_array(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value.astype(np.float32, copy=False)
    return np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value, dtype=np.float32)


def _screening(doc: PreparedDocument) -> dict[str, Any]:
    """What a document's collection policy decided at ingest, for its audit event: the personal
    data found by type (counts, never values) and the chunks quarantined."""
    out: dict[str, Any] = {}
    if doc.pii.get("counts"):
        out["pii"] = doc.pii["counts"]
    if any(doc.quarantined):
        out["quarantined"] = sum(doc.quarantined)
    return out


def _mark_copies_stale(conn: Conn, collection_id: int, originals: list[str], written: Sequence[str] = ()) -> None:
    """Copies linked to documents that changed, went or changed ACL are indexed again by their
    next ingest (an empty content hash never equals a loaded document's); not those this very
    write stores."""
    if originals:
        conn.execute("UPDATE documents SET content_hash = '' WHERE collection_id = %s AND duplicate_of = ANY(%s)"
                     " AND NOT uri = ANY(%s)", (collection_id, originals, [*originals, *written]))
