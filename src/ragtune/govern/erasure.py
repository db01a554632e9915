"""Erasure that follows lineage: a document, the documents whose URI matches a pattern, or every
document holding a subject's string (an e-mail address, a name), removed with every copy of them
(``store.erasure``: chunks, vectors, postings, vocabulary, embedding cache, traces, feedback, dataset
rows quoting them, the subject's pseudonyms) in one transaction, then checked: every table's texts
searched for the erased strings and ids, ``remaining`` empty or the erasure says what is left.

What was trained on erased data is followed by the lineage recorded at training time: fine-tuned
adapters by the dataset version they trained on (a version that lost rows), rerankers, readers and
answerability models by the collection or dataset in their manifest. ``[governance]
erasure_models`` says what happens to them: ``block`` (an adapter version cannot be promoted until
a retrained one replaces it) or ``flag`` (listed for retraining). The engine finds and marks them
(``Ragtune.erase``): the models live in MLflow and the data folder, not in this transaction.

A subject erasure removes the whole documents that hold the subject: a document that names a person
is erased with them; keep the rest of it by redacting at the source and ingesting it again.

Receipts: the ``erasures`` row and the audit log's ``erasure`` event say what was removed, by id,
URI and content hash and counts per table; a subject is kept only as its sha256. Both are kept on
purpose, so ``verify`` reports them apart (``retained``) from what an erasure must leave no trace in.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from psycopg.types.json import Jsonb

from ragtune.errors import NotFoundError, QueryError
from ragtune.govern.pii import Vault
from ragtune.models import Principal
from ragtune.store.database import Database
from ragtune.store.erasure import PSEUDONYM, ErasurePlan, documents_matching, erase, quotes_of, remaining
from ragtune.store.repository import Repository

RECEIPTS = ("audit_events", "erasures")  # tables that keep what an erasure did, on purpose
VERIFY_QUOTES = 50  # sentences of erased documents searched for by verify (the longest)
MIN_SUBJECT_CHARS = 3


@dataclass(frozen=True)
class ErasureRequest:
    """What to erase: documents by id, by URI pattern (``*`` any run of characters, ``?`` one), or
    every document holding ``subject``; in ``collection`` or in all."""

    document_ids: tuple[int, ...] = ()
    uri_pattern: str | None = None
    subject: str | None = None
    collection: str | None = None

    def __post_init__(self) -> None:
        given = [bool(self.document_ids), self.uri_pattern is not None, self.subject is not None]
        if sum(given) != 1:
            raise QueryError("an erasure names one of: document ids, a URI pattern or a subject")
        if any("\x00" in v for v in (self.subject or "", self.uri_pattern or "", self.collection or "")):
            raise QueryError("an erasure's subject, URI pattern and collection cannot hold a NUL character")
        if self.subject is not None and len(self.subject.strip()) < MIN_SUBJECT_CHARS:
            raise QueryError(f"an erasure's subject must have at least {MIN_SUBJECT_CHARS} characters, "
                             f"got {self.subject!r}: a shorter one matches nearly every document")
        if self.uri_pattern is not None and not self.uri_pattern.strip("*?"):
            raise QueryError(f"the URI pattern {self.uri_pattern!r} matches every document: name some")

    @property
    def like_pattern(self) -> str | None:
        if self.uri_pattern is None:
            return None
        escaped = self.uri_pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return escaped.replace("*", "%").replace("?", "_")

    def describe(self) -> dict[str, Any]:
        """The request as its receipt keeps it: a subject by its sha256 only."""
        out: dict[str, Any] = {"collection": self.collection}
        if self.document_ids:
            out["document_ids"] = list(self.document_ids)
        if self.uri_pattern is not None:
            out["uri_pattern"] = self.uri_pattern
        if self.subject is not None:
            out["subject_sha256"] = hashlib.sha256(self.subject.strip().lower().encode()).hexdigest()
        return out


@dataclass
class ErasureReport:
    request: dict[str, Any]
    documents: list[dict[str, Any]]  # id, uri, collection
    dry_run: bool
    erasure_id: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    datasets: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)
    remaining: dict[str, int] = field(default_factory=dict)  # table.column -> rows still holding it
    retained: dict[str, int] = field(default_factory=dict)  # in the receipts, on purpose

    @property
    def clean(self) -> bool:
        return not self.remaining

    def to_dict(self) -> dict[str, Any]:
        return {"erasure": self.erasure_id, "dry_run": self.dry_run, "request": self.request,
                "documents": self.documents, "counts": self.counts, "datasets": self.datasets,
                "models": self.models, "remaining": self.remaining, "retained": self.retained, "clean": self.clean}


# (datasets that lost rows, collections that lost documents, the erasure's id) -> the models marked
Lineage = Callable[[list[dict[str, Any]], list[str], int], list[dict[str, Any]]]


class Eraser:
    def __init__(self, db: Database, repo: Repository, *, audit: bool) -> None:
        self.db = db
        self.repo = repo
        self.audit = audit

    def plan(self, request: ErasureRequest) -> ErasurePlan:
        """What ``request`` matches now (nothing is changed)."""
        plan = ErasurePlan()
        if request.subject is not None:
            plan.strings = [request.subject.strip()]
            plan.tokens = self._pseudonyms(request.subject.strip())
        with self.db.connection() as conn:
            if request.collection is not None:
                self.repo.collection(request.collection, conn)  # a NotFoundError naming it
            found = documents_matching(conn, ids=request.document_ids, uri_pattern=request.like_pattern,
                                       strings=[*plan.strings, *plan.tokens], collection=request.collection)
        plan.documents = [{k: d[k] for k in ("id", "collection_id", "collection", "uri", "hash")} for d in found]
        if request.subject is None:
            plan.strings = sorted({d["uri"] for d in found})
        plan.quotes = quotes_of([d["body"] for d in found])
        plan.held_tokens = sorted({t for d in found for t in PSEUDONYM.findall(d["body"])})
        return plan

    def erase(self, request: ErasureRequest, principal: Principal, *, dry_run: bool = False,
              lineage: Lineage | None = None) -> ErasureReport:
        plan = self.plan(request)
        described = request.describe()
        documents = [{k: d[k] for k in ("id", "uri", "collection")} for d in plan.documents]
        if not plan.documents and not plan.tokens and request.subject is None:
            raise NotFoundError(f"the erasure matches no document ({_what(request)}); nothing was erased")
        report = ErasureReport(described, documents, dry_run)
        if dry_run:
            return report
        with self.db.transaction(statement_timeout=0) as conn:  # a whole-table search of the spans, say
            result = erase(conn, self.repo, plan, principal=principal, request=described, audit=self.audit)
        report.erasure_id = result["erasure"]
        report.counts = result["counts"]
        report.datasets = result["datasets"]
        collections = sorted({d["collection"] for d in plan.documents})
        if lineage is not None:
            report.models = lineage(report.datasets, collections, result["erasure"])
            with self.db.connection() as conn:
                conn.execute("UPDATE erasures SET models = %s WHERE id = %s", (Jsonb(report.models), report.erasure_id))
        self._verify_into(report, plan)
        return report

    def verify(self, erasure_id: int, *, subject: str | None = None) -> ErasureReport:
        """Check an erasure again: its ids, its documents' URIs, and ``subject`` if it was a
        subject's (its sha256 must match: the receipt keeps no more)."""
        with self.db.connection() as conn:
            row = conn.execute("SELECT * FROM erasures WHERE id = %s", (erasure_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no erasure {erasure_id}")
        request = row["request"]
        plan = ErasurePlan(documents=list(row["documents"]), chunk_ids=list(row["chunk_ids"]))
        if "subject_sha256" in request:
            if subject is None:
                raise QueryError(f"erasure {erasure_id} was of a subject: give it again to check it (its receipt "
                                 "keeps only its sha256)")
            if "\x00" in subject or hashlib.sha256(subject.strip().lower().encode()).hexdigest() \
                    != request["subject_sha256"]:
                raise QueryError(f"that subject is not the one erasure {erasure_id} erased")
            plan.strings = [subject.strip()]
            plan.tokens = self._pseudonyms(subject.strip())
        else:
            plan.strings = sorted({d["uri"] for d in plan.documents})
        report = ErasureReport(request, [{k: d[k] for k in ("id", "uri", "collection")} for d in plan.documents],
                               False, erasure_id, dict(row["counts"]), list(row["datasets"]), list(row["models"]))
        self._verify_into(report, plan)
        return report

    def _verify_into(self, report: ErasureReport, plan: ErasurePlan) -> None:
        strings = [*plan.strings, *plan.tokens, *plan.quotes[:VERIFY_QUOTES]]
        with self.db.connection() as conn:
            found = remaining(conn, strings, chunk_ids=plan.chunk_ids, document_ids=[d["id"] for d in plan.documents],
                              chunk_hashes=plan.chunk_hashes)
            report.retained = {k: v for k, v in found.items() if k.split(".")[0] in RECEIPTS}
            report.remaining = {k: v for k, v in found.items() if k.split(".")[0] not in RECEIPTS}
            if report.erasure_id is not None:
                conn.execute("UPDATE erasures SET verified = %s WHERE id = %s",
                             (Jsonb(report.remaining), report.erasure_id))

    def _pseudonyms(self, subject: str) -> list[str]:
        """The subject's tokens in the vault (with the key at hand: without it they cannot be told)."""
        if not os.environ.get(Vault.ENV):
            return []
        vault = Vault.from_environment("erasing a subject's pseudonyms")
        with self.db.connection() as conn:
            entities = [r["entity"] for r in conn.execute("SELECT DISTINCT entity FROM pii_vault").fetchall()]
        return [vault.token(e, subject) for e in entities]


def _what(request: ErasureRequest) -> str:
    if request.document_ids:
        return f"document ids {', '.join(map(str, request.document_ids))}"
    if request.uri_pattern is not None:
        return f"URI pattern {request.uri_pattern!r}"
    return "the subject"

