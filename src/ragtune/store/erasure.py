"""Erasure in the store (migration 018): find every copy of some documents, or of a subject's
string, and remove them all in one transaction (``govern.erasure`` decides what to erase and checks
that nothing is left).

Copies, table by table:

* ``documents`` and their ``chunks`` (with vectors), ``postings``, ``posting_blocks``, the BM25
  statistics and the ``terms`` left with no chunk (a rare word such as a surname would otherwise
  stay in the vocabulary);
* ``embedding_cache`` rows of the erased chunks' texts;
* ``spans``: every trace that showed an erased chunk (its root's ``chunk_ids``) or whose texts hold
  an erased string (a question naming the subject, an ingest naming the URI);
* ``feedback`` on those traces, or whose texts hold an erased string;
* ``dataset_rows`` that quote an erased document (hold one of its sentences) or the subject;
* ``pii_vault`` rows of the subject's pseudonyms.

The audit log is not rewritten: its events name documents by id, URI and content hash (never their
text), and the erasure's receipt is appended to it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from ragtune.models import Principal
from ragtune.store.audit import AuditEvent, append
from ragtune.store.database import Conn
from ragtune.store.repository import Repository, _mark_copies_stale, text_hash

# Sentences of an erased document at least this long are what a dataset row must quote to be erased
# with it: shorter ones ("See below.") are in too many rows.
QUOTE_MIN_CHARS = 40
MAX_QUOTES = 2000  # sentences looked for per erasure (the longest first)
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


@dataclass
class ErasurePlan:
    """What an erasure will remove, found before anything is: the documents by id, the strings
    whose every copy goes (the subject, the documents' URIs), and what was found of each kind."""

    documents: list[dict[str, Any]] = field(default_factory=list)  # id, collection_id, collection, uri, hash
    strings: list[str] = field(default_factory=list)  # looked for case-insensitively in texts
    tokens: list[str] = field(default_factory=list)  # the subject's pseudonyms (pii_vault)
    chunk_ids: list[int] = field(default_factory=list)
    quotes: list[str] = field(default_factory=list)  # sentences of the documents (dataset rows quoting them)
    chunk_hashes: list[bytes] = field(default_factory=list)  # the erased chunks' texts (embedding cache keys)
    held_tokens: list[str] = field(default_factory=list)  # pseudonyms in the erased documents' texts

    @property
    def document_ids(self) -> list[int]:
        return [d["id"] for d in self.documents]


def like(value: str) -> str:
    """``value`` as an ILIKE pattern matching it anywhere, its wildcards escaped."""
    return "%" + value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def json_text(value: str) -> str:
    """``value`` as it reads inside a jsonb column's text (quotes and backslashes escaped)."""
    return json.dumps(value, ensure_ascii=False)[1:-1]


def documents_matching(conn: Conn, *, ids: Sequence[int] = (), uri_pattern: str | None = None,
                       strings: Sequence[str] = (), collection: str | None = None) -> list[dict[str, Any]]:
    """Documents by id, by URI pattern (SQL LIKE: ``%`` any run, ``_`` one character), or holding one
    of ``strings`` in their text, title or metadata; in one collection or all."""
    where: list[sql.Composable] = []
    params: list[Any] = []
    if ids:
        where.append(sql.SQL("d.id = ANY(%s)"))
        params.append(list(ids))
    if uri_pattern is not None:
        where.append(sql.SQL("d.uri LIKE %s"))
        params.append(uri_pattern)
    for s in strings:
        where.append(sql.SQL("(d.body ILIKE %s OR coalesce(d.title, '') ILIKE %s OR d.metadata::text ILIKE %s"
                             " OR d.user_metadata::text ILIKE %s OR d.uri ILIKE %s)"))
        params.extend([like(s), like(s), like(json_text(s)), like(json_text(s)), like(s)])
    if not where:
        return []
    query = sql.SQL("SELECT d.id, d.collection_id, c.name AS collection, d.uri, d.content_hash AS hash, d.body"
                    " FROM documents d JOIN collections c ON c.id = d.collection_id WHERE ({})"
                    ).format(sql.SQL(" OR ").join(where))
    if collection is not None:
        query = sql.SQL("{} AND c.name = %s").format(query)
        params.append(collection)
    return conn.execute(sql.SQL("{} ORDER BY d.id").format(query), params).fetchall()


def quotes_of(bodies: Sequence[str]) -> list[str]:
    """The sentences of ``bodies`` long enough that a dataset row holding one quotes the document."""
    found = {s.strip() for body in bodies for s in _SENTENCE.split(body) if len(s.strip()) >= QUOTE_MIN_CHARS}
    return sorted(found, key=lambda s: (-len(s), s))[:MAX_QUOTES]


def erase(conn: Conn, repo: Repository, plan: ErasurePlan, *, principal: Principal, request: dict[str, Any],
          audit: bool) -> dict[str, Any]:
    """Remove every copy ``plan`` names, in ``conn``'s transaction; returns the counts per table
    and the datasets whose rows went. The receipt (``erasure``) is appended last when ``audit``."""
    counts: dict[str, int] = {}
    by_collection: dict[int, list[int]] = {}
    for d in plan.documents:
        by_collection.setdefault(d["collection_id"], []).append(d["id"])
    chunk_hashes = plan.chunk_hashes
    for collection_id in sorted(by_collection):
        ids = by_collection[collection_id]
        conn.execute("SELECT 1 FROM collections WHERE id = %s FOR UPDATE", (collection_id,))
        rows = conn.execute("SELECT id, body FROM chunks WHERE document_id = ANY(%s)", (ids,)).fetchall()
        plan.chunk_ids.extend(r["id"] for r in rows)
        chunk_hashes.extend(text_hash(r["body"]) for r in rows)
        repo._remove_chunks(conn, collection_id, ids)
        gone = [r["uri"] for r in conn.execute("DELETE FROM documents WHERE id = ANY(%s) RETURNING uri",
                                               (ids,)).fetchall()]
        _mark_copies_stale(conn, collection_id, gone)
        counts["documents"] = counts.get("documents", 0) + len(gone)
        counts["terms"] = counts.get("terms", 0) + _drop_unused_terms(conn, collection_id)
    counts["chunks"] = len(plan.chunk_ids)
    counts["embedding_cache"] = conn.execute(
        "DELETE FROM embedding_cache WHERE text_hash = ANY(%s)", (chunk_hashes,)).rowcount if chunk_hashes else 0
    traces = traces_holding(conn, plan)
    counts["spans"] = conn.execute("DELETE FROM spans WHERE trace_id = ANY(%s)", (traces,)).rowcount if traces else 0
    counts["traces"] = len(traces)
    counts["feedback"] = _delete_feedback(conn, traces, plan.strings)
    datasets = _delete_dataset_rows(conn, plan)
    counts["dataset_rows"] = sum(d["rows"] for d in datasets)
    counts["pii_vault"] = conn.execute("DELETE FROM pii_vault WHERE token = ANY(%s)", (plan.tokens,)).rowcount \
        if plan.tokens else 0
    counts["pii_vault"] += _drop_unreferenced_pseudonyms(conn, plan.held_tokens)
    result: dict[str, Any] = {"counts": counts, "datasets": datasets}
    result["erasure"] = _record(conn, principal, request, result, plan)
    if audit:
        append(conn, AuditEvent("erasure", principal, None, [
            {"id": d["id"], "uri": d["uri"], "hash": d["hash"], "collection": d["collection"]} for d in plan.documents],
            {**request, "erasure": result["erasure"], "counts": counts, "datasets": datasets}))
    return result


def traces_holding(conn: Conn, plan: ErasurePlan) -> list[str]:
    """The traces that showed an erased chunk or whose span texts hold an erased string."""
    found: set[str] = set()
    if plan.chunk_ids:
        found.update(r["trace_id"] for r in conn.execute(
            "SELECT DISTINCT trace_id FROM spans WHERE chunk_ids && %s::bigint[]", (plan.chunk_ids,)).fetchall())
    for s in [*plan.strings, *plan.tokens]:
        found.update(r["trace_id"] for r in conn.execute(
            "SELECT DISTINCT trace_id FROM spans WHERE attributes::text ILIKE %s OR events::text ILIKE %s"
            " OR coalesce(error, '') ILIKE %s", (like(json_text(s)), like(json_text(s)), like(s))).fetchall())
    return sorted(found)


PSEUDONYM = re.compile(r"<[A-Z][A-Z0-9_]*_[0-9a-f]{12}>")  # govern.pii.Vault.token


def _drop_unreferenced_pseudonyms(conn: Conn, tokens: Sequence[str]) -> int:
    """Vault rows of pseudonyms the erased documents held that no document or dataset row still holds."""
    n = 0
    for token in sorted(set(tokens)):
        pattern = like(token)
        still = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM documents WHERE body LIKE %s OR coalesce(title, '') LIKE %s"
            " OR metadata::text LIKE %s OR user_metadata::text LIKE %s)"
            f" OR EXISTS (SELECT 1 FROM dataset_rows r WHERE {_ROW_TEXT} LIKE %s) AS held",
            (pattern, pattern, pattern, pattern, pattern)).fetchone()
        if still is not None and not still["held"]:
            n += conn.execute("DELETE FROM pii_vault WHERE token = %s", (token,)).rowcount
    return n


def _drop_unused_terms(conn: Conn, collection_id: int) -> int:
    """Terms no chunk holds any more, with their per-class counts and empty posting blocks."""
    gone = [r["id"] for r in conn.execute(
        "DELETE FROM terms WHERE collection_id = %s AND df <= 0 RETURNING id", (collection_id,)).fetchall()]
    if gone:
        conn.execute("DELETE FROM acl_class_terms WHERE term_id = ANY(%s)", (gone,))
        conn.execute("DELETE FROM posting_blocks WHERE term_id = ANY(%s)", (gone,))
    return len(gone)


def _delete_feedback(conn: Conn, traces: list[str], strings: Sequence[str]) -> int:
    n = conn.execute("DELETE FROM feedback WHERE trace_id = ANY(%s)", (traces,)).rowcount if traces else 0
    for s in strings:
        n += conn.execute("DELETE FROM feedback WHERE coalesce(comment, '') ILIKE %s OR coalesce(correction, '')"
                          " ILIKE %s OR coalesce(label, '') ILIKE %s", (like(s), like(s), like(s))).rowcount
    return n


_ROW_TEXT = ("concat_ws(' ', r.messages::text, r.tools::text, r.chosen::text, r.rejected::text)")


def _delete_dataset_rows(conn: Conn, plan: ErasurePlan) -> list[dict[str, Any]]:
    """Rows quoting an erased document or holding an erased string; per dataset version, how many
    went (its counts follow), with its name, version and content hash for the lineage."""
    patterns = [like(json_text(s)) for s in [*plan.strings, *plan.tokens, *plan.quotes]]
    if not patterns:
        return []
    rows = conn.execute(
        f"DELETE FROM dataset_rows r WHERE {_ROW_TEXT} ILIKE ANY(%s) RETURNING r.dataset_id, r.split",
        (patterns,)).fetchall()
    per: dict[int, dict[str, int]] = {}
    for r in rows:
        split = per.setdefault(r["dataset_id"], {"train": 0, "eval": 0})
        split[r["split"]] += 1
    out = []
    for dataset_id, split in sorted(per.items()):
        info = conn.execute(
            "UPDATE datasets SET row_count = row_count - %s, train_rows = train_rows - %s, eval_rows = eval_rows - %s,"
            " report = report || jsonb_build_object('erased_rows', coalesce((report->>'erased_rows')::int, 0) + %s)"
            " WHERE id = %s RETURNING name, version, content_hash",
            (split["train"] + split["eval"], split["train"], split["eval"], split["train"] + split["eval"],
             dataset_id)).fetchone()
        assert info is not None
        out.append({"dataset": info["name"], "version": info["version"], "content_hash": info["content_hash"],
                    "rows": split["train"] + split["eval"]})
    return out


def remaining(conn: Conn, strings: Sequence[str], *, chunk_ids: Sequence[int] = (), document_ids: Sequence[int] = (),
              chunk_hashes: Sequence[bytes] = ()) -> dict[str, int]:
    """Every table with a text, JSON or array column searched for ``strings`` (each column's text,
    case-insensitively; a partitioned table through its parent), and the erased ids looked for where
    ids are kept: table.column -> rows still holding one. The receipts (``audit_events``,
    ``erasures``) are in it too: the caller reports them apart, as what is kept on purpose."""
    found: dict[str, int] = {}
    columns = conn.execute(
        "SELECT c.table_name, c.column_name, c.data_type FROM information_schema.columns c"
        " JOIN information_schema.tables t ON t.table_name = c.table_name AND t.table_schema = c.table_schema"
        " WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'"
        " AND c.data_type IN ('text', 'jsonb', 'ARRAY', 'character varying')"
        " AND c.table_name NOT IN (SELECT inhrelid::regclass::text FROM pg_inherits)"
        " ORDER BY 1, 2").fetchall()
    patterns = [p for s in strings for p in {like(s), like(json_text(s))}]
    if patterns:
        for c in columns:
            query = sql.SQL("SELECT count(*) AS n FROM {} WHERE {}::text ILIKE ANY(%s)").format(
                sql.Identifier(c["table_name"]), sql.Identifier(c["column_name"]))
            n = conn.execute(query, (patterns,)).fetchone()
            if n is not None and n["n"]:
                found[f"{c['table_name']}.{c['column_name']}"] = int(n["n"])
    checks = [
        ("documents.id", "SELECT count(*) AS n FROM documents WHERE id = ANY(%s)", list(document_ids)),
        ("chunks.document_id", "SELECT count(*) AS n FROM chunks WHERE document_id = ANY(%s)", list(document_ids)),
        ("chunks.id", "SELECT count(*) AS n FROM chunks WHERE id = ANY(%s)", list(chunk_ids)),
        ("spans.chunk_ids", "SELECT count(*) AS n FROM spans WHERE chunk_ids && %s::bigint[]", list(chunk_ids)),
        ("postings.chunk_id", "SELECT count(*) AS n FROM postings WHERE chunk_id = ANY(%s)", list(chunk_ids)),
        ("embedding_cache.text_hash", "SELECT count(*) AS n FROM embedding_cache WHERE text_hash = ANY(%s)",
         list(chunk_hashes)),
    ]
    for name, statement, values in checks:
        if values:
            n = conn.execute(statement, (values,)).fetchone()
            if n is not None and n["n"]:
                found[name] = int(n["n"])
    return found


def _record(conn: Conn, principal: Principal, request: dict[str, Any], result: dict[str, Any],
            plan: ErasurePlan) -> int:
    row = conn.execute(
        "INSERT INTO erasures (requested_by, request, documents, chunk_ids, counts, datasets)"
        " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
        (principal.id, Jsonb(request), Jsonb([{k: d[k] for k in ("id", "uri", "hash", "collection")}
                                              for d in plan.documents]),
         plan.chunk_ids, Jsonb(result["counts"]), Jsonb(result["datasets"]))).fetchone()
    assert row is not None
    return int(row["id"])
