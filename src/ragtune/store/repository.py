"""Reads and writes of collections, documents, chunks and the lexical index.

Every change to one document happens in one transaction that first locks its collection row:
chunks, vectors, postings (and their packed blocks), document frequencies and the collection's
BM25 statistics move together, so readers (who use a snapshot) see either the old version or the
new one, and BM25 statistics stay exact under inserts and deletes.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from ragtune.errors import EmbedderMismatchError, IngestError, NotFoundError, QueryError
from ragtune.models import Chunk, Document
from ragtune.store.database import Conn, Database

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


@dataclass(frozen=True)
class ExistingDocument:
    id: int
    content_hash: str
    version: int
    metadata: dict[str, Any]
    acl: tuple[str, ...]


@dataclass
class PreparedDocument:
    """A document ready to be written: chunks with vectors and lexical term counts."""

    uri: str
    title: str | None
    text: str
    content_hash: str
    metadata: dict[str, Any]
    acl: tuple[str, ...]
    chunks: list[Chunk]
    vectors: np.ndarray
    term_counts: list[Counter[str]]


def text_hash(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Repository:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- collections -------------------------------------------------------------------------
    def ensure_collection(self, name: str, embedder: str, dimension: int, *, m: int, ef_construction: int
                          ) -> CollectionInfo:
        if not name or len(name) > 200:
            raise QueryError(f"invalid collection name {name!r}")
        with self.db.transaction() as conn:
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
            "SELECT id, name, embedder, dimension, n_chunks, total_len FROM collections c WHERE name = %s",
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

    def drop_collection(self, name: str) -> None:
        with self.db.transaction() as conn:
            info = self._collection(conn, name)
            conn.execute(
                "DELETE FROM postings p USING chunks c WHERE c.collection_id = %s AND p.chunk_id = c.id",
                (info.id,),
            )
            conn.execute("DELETE FROM posting_blocks b USING terms t WHERE t.collection_id = %s AND b.term_id = t.id",
                         (info.id,))
            conn.execute("DELETE FROM chunks WHERE collection_id = %s", (info.id,))
            conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(f"chunks_hnsw_{info.id}")))
            conn.execute("DELETE FROM collections WHERE id = %s", (info.id,))

    # -- documents ---------------------------------------------------------------------------
    def existing(self, collection_id: int, uris: Sequence[str]) -> dict[str, ExistingDocument]:
        with self.db.connection() as conn:
            rows = conn.execute(
                "SELECT id, uri, content_hash, version, metadata, acl FROM documents"
                " WHERE collection_id = %s AND uri = ANY(%s)",
                (collection_id, list(uris)),
            ).fetchall()
        return {
            r["uri"]: ExistingDocument(r["id"], r["content_hash"], r["version"], r["metadata"], tuple(r["acl"]))
            for r in rows
        }

    def write_document(self, info: CollectionInfo, doc: PreparedDocument) -> str:
        """Insert or replace one document atomically; returns "added" or "updated"."""
        return self.write_documents(info, [doc])[0]

    def write_documents(self, info: CollectionInfo, docs: Sequence[PreparedDocument]) -> list[str]:
        """Insert or replace several documents in one transaction; returns "added" or "updated"
        for each. Readers see all of them or none, so never part of a document; set-based
        statements make the database work per document a fraction of writing them one by one.
        The URIs must be distinct."""
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
            return self._write_documents(info, docs)
        except psycopg.errors.DataError as exc:  # e.g. a NUL character, which PostgreSQL text cannot hold
            source = docs[0].uri if len(docs) == 1 else f"{len(docs)} documents from {docs[0].uri}"
            raise IngestError(source, f"the database refused the text: {exc}") from exc

    def _write_documents(self, info: CollectionInfo, docs: Sequence[PreparedDocument]) -> list[str]:
        with self.db.transaction() as conn:
            conn.execute("SELECT 1 FROM collections WHERE id = %s FOR UPDATE", (info.id,))
            existing = {r["uri"]: r["id"] for r in conn.execute(
                "SELECT id, uri FROM documents WHERE collection_id = %s AND uri = ANY(%s)",
                (info.id, [d.uri for d in docs])).fetchall()}
            if existing:
                self._remove_chunks(conn, info.id, list(existing.values()))
                conn.cursor().executemany(
                    "UPDATE documents SET content_hash = %s, version = version + 1, title = %s, body = %s,"
                    " metadata = %s, acl = %s, updated_at = now() WHERE id = %s",
                    [(d.content_hash, d.title, d.text, Jsonb(d.metadata), list(d.acl), existing[d.uri])
                     for d in docs if d.uri in existing])
            new = [d for d in docs if d.uri not in existing]
            ids = dict(existing)
            if new:
                fresh = _next_ids(conn, "documents_id_seq", len(new))
                with conn.cursor().copy("COPY documents (id, collection_id, uri, content_hash, title, body,"
                                        " metadata, acl) FROM STDIN (FORMAT BINARY)") as cp:
                    cp.set_types(["int8", "int4", "text", "text", "text", "text", "jsonb", "text[]"])
                    for doc_id, d in zip(fresh, new, strict=True):
                        cp.write_row((doc_id, info.id, d.uri, d.content_hash, d.title, d.text, Jsonb(d.metadata),
                                      list(d.acl)))
                ids.update((d.uri, doc_id) for doc_id, d in zip(fresh, new, strict=True))
            self._insert_chunks(conn, info, [(ids[d.uri], d) for d in docs])
        return ["updated" if d.uri in existing else "added" for d in docs]

    def update_document_attributes(self, collection_id: int, uri: str, metadata: dict[str, Any],
                                   acl: Sequence[str]) -> None:
        """Same text, new metadata or ACL: no re-embedding, but chunks get the new copies too."""
        with self.db.transaction() as conn:
            row = conn.execute(
                "UPDATE documents SET metadata = %s, acl = %s, version = version + 1, updated_at = now()"
                " WHERE collection_id = %s AND uri = %s RETURNING id",
                (Jsonb(metadata), list(acl), collection_id, uri),
            ).fetchone()
            if row is None:
                raise NotFoundError(f"no document {uri!r}")
            conn.execute(
                "UPDATE chunks SET metadata = %s, acl = %s WHERE document_id = %s",
                (Jsonb(metadata), list(acl), row["id"]),
            )

    def delete_documents(self, collection_id: int, uris: Sequence[str]) -> int:
        if not uris:
            return 0
        with self.db.transaction() as conn:
            conn.execute("SELECT 1 FROM collections WHERE id = %s FOR UPDATE", (collection_id,))
            ids = [
                r["id"]
                for r in conn.execute(
                    "SELECT id FROM documents WHERE collection_id = %s AND uri = ANY(%s)",
                    (collection_id, list(uris)),
                ).fetchall()
            ]
            if ids:
                self._remove_chunks(conn, collection_id, ids)
                conn.execute("DELETE FROM documents WHERE id = ANY(%s)", (ids,))
        return len(ids)

    def documents(self, collection_id: int, *, prefix: str | None = None, limit: int | None = None,
                  offset: int = 0) -> list[Document]:
        with self.db.connection() as conn:
            rows = conn.execute(
                "SELECT d.id, c.name AS collection, d.uri, d.content_hash, d.version, d.metadata, d.acl,"
                " d.title, d.updated_at::text AS updated_at,"
                " (SELECT count(*) FROM chunks k WHERE k.document_id = d.id) AS chunk_count"
                " FROM documents d JOIN collections c ON c.id = d.collection_id"
                " WHERE d.collection_id = %s AND (%s::text IS NULL OR starts_with(d.uri, %s::text))"
                " ORDER BY d.uri LIMIT %s OFFSET %s",
                (collection_id, prefix, prefix, limit, offset),
            ).fetchall()
        return [_document(r) for r in rows]

    def document(self, collection_id: int, uri: str) -> tuple[Document, str, list[Chunk]]:
        with self.db.connection() as conn:
            row = conn.execute(
                "SELECT d.id, c.name AS collection, d.uri, d.content_hash, d.version, d.metadata, d.acl,"
                " d.title, d.updated_at::text AS updated_at, d.body,"
                " (SELECT count(*) FROM chunks k WHERE k.document_id = d.id) AS chunk_count"
                " FROM documents d JOIN collections c ON c.id = d.collection_id"
                " WHERE d.collection_id = %s AND d.uri = %s",
                (collection_id, uri),
            ).fetchone()
            if row is None:
                raise NotFoundError(f"no document {uri!r} in this collection")
            chunks = conn.execute(
                "SELECT id, document_id, ordinal, body AS text, start_char AS start, end_char AS end,"
                " heading, tokens FROM chunks WHERE document_id = %s ORDER BY ordinal",
                (row["id"],),
            ).fetchall()
        body = row.pop("body")
        return _document(row), body, [Chunk(**c) for c in chunks]

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
        touched = conn.execute(
            "WITH gone AS ("
            "  DELETE FROM postings p USING chunks c"
            "  WHERE c.document_id = ANY(%s) AND p.chunk_id = c.id RETURNING p.term_id, p.chunk_id),"
            " df AS (UPDATE terms t SET df = t.df - g.n"
            "  FROM (SELECT term_id, count(*) AS n FROM gone GROUP BY term_id) g WHERE t.id = g.term_id)"
            " SELECT DISTINCT term_id, (chunk_id >> %s)::int AS block FROM gone",
            (document_ids, BLOCK_BITS),
        ).fetchall()
        rebuild_posting_blocks(conn, [(r["term_id"], r["block"]) for r in touched])
        conn.execute(
            "WITH gone AS (DELETE FROM chunks WHERE document_id = ANY(%s) RETURNING lex_len)"
            " UPDATE collections SET n_chunks = n_chunks - (SELECT count(*) FROM gone),"
            " total_len = total_len - (SELECT coalesce(sum(lex_len), 0) FROM gone) WHERE id = %s",
            (document_ids, collection_id),
        )

    @staticmethod
    def _insert_chunks(conn: Conn, info: CollectionInfo, docs: list[tuple[int, PreparedDocument]]) -> None:
        n = sum(len(d.chunks) for _, d in docs)
        if n == 0:
            return
        ids = iter(_next_ids(conn, "chunks_id_seq", n))
        # (chunk id, term counts, lexical length) of every chunk, for the postings
        lexical: list[tuple[int, Counter[str], int]] = []
        # binary COPY: no float formatting and parsing of the vectors
        with conn.cursor().copy(
            "COPY chunks (id, document_id, collection_id, ordinal, body, start_char, end_char, heading,"
            " tokens, lex_len, metadata, acl, embedding) FROM STDIN (FORMAT BINARY)"
        ) as cp:
            cp.set_types(["int8", "int8", "int4", "int4", "text", "int4", "int4", "text", "int4", "int4",
                          "jsonb", "text[]", "vector"])
            for document_id, doc in docs:
                meta = Jsonb(doc.metadata)
                acl = list(doc.acl)
                for chunk, vec, counts in zip(doc.chunks, doc.vectors, doc.term_counts, strict=True):
                    cid = next(ids)
                    lex_len = sum(counts.values())
                    lexical.append((cid, counts, lex_len))
                    cp.write_row((cid, document_id, info.id, chunk.ordinal, chunk.text, chunk.start, chunk.end,
                                  chunk.heading, chunk.tokens, lex_len, meta, acl, vec))
        # Document frequency counts chunks containing a term (the chunk is the BM25 "document").
        df: Counter[str] = Counter()
        for _, counts, _ in lexical:
            df.update(counts.keys())
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
            "UPDATE collections SET n_chunks = n_chunks + %s, total_len = total_len + %s WHERE id = %s",
            (n, sum(x[2] for x in lexical), info.id),
        )


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
