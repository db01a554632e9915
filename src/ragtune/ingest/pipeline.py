"""The ingestion pipeline: sources -> loaded documents -> chunks -> vectors -> whole documents in transactions.

Why it is shaped like this:
- The embedder is the bottleneck (tens of paragraphs per second on CPU), so every other step
  exists to keep it busy and never feed it the same text twice: unchanged documents are skipped by
  content hash before chunking, chunk texts are looked up in the embedding cache (keyed by model
  and text hash) and deduplicated within a batch, and chunks from many documents are embedded in
  one call so batches are full.
- Database writes run on a writer thread while the next batch is embedded.
- Each embedded batch of documents is written in one transaction (one by one if that fails, to
  name the bad document): a crash (even kill -9) leaves whole documents or nothing, and a rerun
  picks up where it stopped because finished documents are unchanged.
- A source that fails is reported with its name and reason; the rest of the run goes on.

Progress (``protocols.Progress``): "documents" counts the documents finished (written, unchanged,
attributes updated or failed: the report's ``total`` at the end; ``detail`` names the last one).
Its ``total`` is the list's length when the documents come as a list; from a stream (files being
read) it is what has been received so far, growing as the stream is read, so ``done`` never
passes it. "chunks" counts the chunks written (the report's ``chunks``); "embedded" the chunk
texts sent through the embedder (cache misses, the report's ``embedded``), its ``total`` growing
by each batch's texts just before they are embedded, so it ends equal to ``done``. Neither total
can be known further ahead without reading every file first: for a run over files, the engine's
"files" bar is the one with the whole run's total.

Metadata and ACL. What the caller gives (``metadata``, ``acl``) is applied to every document of
the run; None means "not given": a stored document keeps what it has (its given metadata and its
ACL), and a new one takes ``defaults(uri)`` (file ingests: what its folder's documents share, see
``InheritedAttributes``), else none and public. A run never changes a stored document's ACL unless
``access.change_acl`` says so, and never replaces a document the writer cannot read; the store
checks both again with the rows locked (``store.access``).
"""

from __future__ import annotations

import contextvars
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ragtune.errors import AclChangeError, ChunkLimitError, ConfigError, IngestError, RagtuneError
from ragtune.govern.injection import DEFAULT_THRESHOLD, SCREEN_VERSION, score_injection
from ragtune.govern.pii import Sealed
from ragtune.govern.policy import NO_POLICY, Policy
from ragtune.govern.screening import screen_document
from ragtune.ingest.duplicates import NearDuplicateIndex, signature
from ragtune.ingest.lexical import LexicalAnalyzer
from ragtune.models import FileFailure, IngestReport, LoadedDocument
from ragtune.observe.tracing import Tracing, set_attributes
from ragtune.progress import ProgressCounter
from ragtune.protocols import Chunker, Embedder, Progress
from ragtune.store.access import WriteAccess, check_replace, describe_acl
from ragtune.store.repository import (
    CollectionInfo,
    ExistingDocument,
    PreparedDocument,
    Repository,
    content_hash,
    text_hash,
)

Attributes = tuple[tuple[str, ...], dict[str, Any]]  # (ACL, given metadata)
# a new document's attributes when the caller gave none; the flag says whether its ACL is wanted
Defaults = Callable[[str, bool], Attributes]


@dataclass
class _Pending:
    loaded: LoadedDocument
    metadata: dict[str, Any]  # the loader's, with the title
    user_metadata: dict[str, Any] | None  # None: keep the stored document's
    acl: tuple[str, ...] | None  # None: keep the stored document's
    hash: str
    effective_acl: tuple[str, ...]  # the ACL it will have: a near-duplicate links only to the same
    acl_change: bool = False
    minhash: bytes | None = None
    duplicate_of: str | None = None
    chunks: list[Any] = field(default_factory=list)
    terms: list[Counter[str]] = field(default_factory=list)
    pii: dict[str, Any] = field(default_factory=dict)  # documents.pii (govern.screening)
    sealed: tuple[Sealed, ...] = ()
    injection: list[float] = field(default_factory=list)  # each chunk's score (govern.injection)
    quarantined: list[bool] = field(default_factory=list)


class InheritedAttributes:
    """A new file's ACL and given metadata when the ingest gave none: those of the documents
    already stored from its folder, or from the nearest folder above it (up to the folder the
    ingest named) that has any, so a file added to a restricted folder never lands public. When
    that folder's documents have different ACLs the file is refused until an ACL is given; the
    metadata is what they all share. No stored documents: public, no metadata.

    What is stored is read once, on the first new file, so every file of a run inherits from the
    collection as it was before the run, whatever order the writes land in."""

    def __init__(self, repo: Repository, collection_id: int, roots: Sequence[str]) -> None:
        self.repo = repo
        self.collection_id = collection_id
        self.roots = {r.rstrip("/") or "/" for r in roots}
        self._folders: dict[str, set[tuple[tuple[str, ...], str]]] | None = None

    def __call__(self, uri: str, want_acl: bool = True) -> Attributes:
        if self._folders is None:
            self._folders = {}
            for root in self.roots:
                self._folders.update(self.repo.folder_attributes(self.collection_id, root))
        folder = os.path.dirname(uri.split("#", 1)[0])
        while not self._folders.get(folder):
            parent = os.path.dirname(folder)
            if folder in self.roots or parent == folder:
                return (), {}
            folder = parent
        found = self._folders[folder]
        acls = sorted({acl for acl, _ in found})
        if len(acls) > 1 and want_acl:
            raise AclChangeError(uri, f"the documents stored from {folder} have different ACLs "
                                      f"({', '.join(describe_acl(a) for a in acls)}); give the new file's ACL (--acl)")
        metas = [json.loads(meta) for _, meta in found]
        shared = metas[0]
        for meta in metas[1:]:
            shared = {k: v for k, v in shared.items() if k in meta and meta[k] == v}
        return acls[0], shared


class IngestPipeline:
    def __init__(self, repo: Repository, embedder: Embedder, chunker: Chunker, analyzer: LexicalAnalyzer,
                 *, batch_texts: int = 256, max_chunks: int = 0, near_duplicates: float | None = None,
                 tracing: Tracing | None = None, policy: Policy = NO_POLICY) -> None:
        """``max_chunks``: the most chunks one document may have (``max_chunks_per_document``; 0: no
        limit). ``near_duplicates``: the similarity at which a document is linked to the one it
        copies instead of indexed (``ingest/duplicates.py``); None indexes every document.
        ``policy``: the collection's (``govern.policy``): its PII rules are applied to each document
        before it is chunked, and a stored document screened under another version is read again."""
        if isinstance(max_chunks, bool) or not isinstance(max_chunks, int) or max_chunks < 0:
            raise ConfigError(f"max_chunks must be an integer of at least 0 (0: no limit), got {max_chunks!r}")
        self.repo = repo
        self.embedder = embedder
        self.chunker = chunker
        self.analyzer = analyzer
        self.batch_texts = batch_texts
        self.max_chunks = max_chunks
        self.near_duplicates = near_duplicates
        self.tracing = tracing
        self.policy = policy
        self._released: set[str] = set()  # chunk texts (sha256) an admin released from quarantine

    def _span(self, name: str, attributes: dict[str, Any]) -> AbstractContextManager[Any]:
        """A child span of the ingest's (nothing when tracing is off)."""
        return self.tracing.span(name, {"ragtune.kind": name, **attributes}) if self.tracing else nullcontext()

    def run(self, documents: Iterable[LoadedDocument | IngestError], info: CollectionInfo, *,
            access: WriteAccess, metadata: dict[str, Any] | None = None, acl: Iterable[str] | None = None,
            defaults: Defaults | None = None, progress: Progress | None = None,
            seen: set[str] | None = None) -> IngestReport:
        """Ingest a stream of loaded documents (or the errors loading them raised).

        ``seen`` (if given) collects the URIs produced by this run, for ``sync``. The run is one
        trace: an ``ingest`` span, a ``chunk`` span per document, an ``embed`` and a ``write`` span
        per batch.
        """
        # An ingest's trace names documents by URI, whatever their ACL: only its maker and admins
        # see it (the traces' rule hides what an admin made from everyone else).
        with self._span("ingest", {"ragtune.principal": access.principal.id, "ragtune.principal_admin": True,
                                   "ragtune.groups": sorted(access.principal.groups),
                                   "ragtune.collection": info.name, "gen_ai.data_source.id": info.name}) as span:
            report = self._run(documents, info, access=access, metadata=metadata, acl=acl, defaults=defaults,
                               progress=progress, seen=seen)
            if span is not None:
                set_attributes(span, {f"ragtune.ingest.{k}": v for k, v in (
                    ("added", report.added), ("updated", report.updated), ("unchanged", report.unchanged),
                    ("failed", len(report.failed)), ("chunks", report.chunks), ("embedded", report.embedded))})
        return report

    def _run(self, documents: Iterable[LoadedDocument | IngestError], info: CollectionInfo, *,
             access: WriteAccess, metadata: dict[str, Any] | None, acl: Iterable[str] | None,
             defaults: Defaults | None, progress: Progress | None, seen: set[str] | None) -> IngestReport:
        started = time.perf_counter()
        report = IngestReport()
        if self.policy.injection.action == "quarantine":
            self._released = self.repo.injection_releases(info.id)
        if info.injection_screen != SCREEN_VERSION:
            # the chunks already stored were scored by another scorer (or before scores were kept):
            # scored again now, so that the policy acts on what this one finds
            self.repo.rescore_injection(info.id, SCREEN_VERSION, lambda text: score_injection(text).score,
                                        self._held)
        given_meta = dict(metadata) if metadata is not None else None
        given_acl = tuple(sorted(set(acl))) if acl is not None else None
        counts = ProgressCounter(progress)
        known_total = len(documents) if isinstance(documents, Sized) else None
        counts.start("documents", known_total if known_total is not None else 0)
        received = 0
        batch: list[_Pending] = []
        batch_chunks = 0
        writes: list[Future[None]] = []
        copies = None
        if self.near_duplicates is not None:
            copies = NearDuplicateIndex(self.near_duplicates, lambda: self.repo.near_duplicate_signatures(info.id))
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ragtune-writer") as writer:
            for group in _group_by_lookup(documents, 64):
                received += len(group)
                if known_total is None:  # before any of them is counted done
                    counts.start("documents", received)
                loaded_docs = [d for d in group if isinstance(d, LoadedDocument)]
                for failure in (d for d in group if not isinstance(d, LoadedDocument)):
                    report.failed.append(FileFailure(failure.source, failure.code, failure.reason))
                    counts.add("documents", detail=_short(failure.source))
                existing = self.repo.existing(info.id, [d.uri for d in loaded_docs])
                for loaded in loaded_docs:
                    if seen is not None:
                        seen.add(loaded.uri)
                    try:
                        pending = self._plan(loaded, existing.get(loaded.uri), access, given_meta, given_acl,
                                             defaults, info, report)
                        if pending is not None and copies is not None:
                            self._link_if_copy(pending, copies)
                        if pending is not None and self.policy.version:  # a copy's body is stored too
                            self._screen(pending)
                        if pending is not None and pending.duplicate_of is None:
                            self._prepare(pending)
                    except RagtuneError as exc:
                        report.failed.append(FileFailure(loaded.uri, getattr(exc, "code", "error"),
                                                         getattr(exc, "reason", str(exc))))
                        counts.add("documents", detail=_short(loaded.uri))
                        continue
                    if pending is None:  # nothing to embed: unchanged, or new attributes only
                        counts.add("documents", detail=_short(loaded.uri))
                        continue
                    batch.append(pending)
                    batch_chunks += len(pending.chunks)
                    if batch_chunks >= self.batch_texts:
                        writes.append(self._flush(batch, info, writer, report, counts, access))
                        batch, batch_chunks = [], 0
                    self._reap(writes, done_only=True)
            if batch:
                writes.append(self._flush(batch, info, writer, report, counts, access))
            self._reap(writes, done_only=False)
        report.seconds = time.perf_counter() - started
        return report

    def _plan(self, loaded: LoadedDocument, old: ExistingDocument | None, access: WriteAccess,
              given_meta: dict[str, Any] | None, given_acl: tuple[str, ...] | None, defaults: Defaults | None,
              info: CollectionInfo, report: IngestReport) -> _Pending | None:
        """What to write for one loaded document: a pending write, or None when only its
        attributes change (done here) or nothing does. Raises when the write is not allowed."""
        own = dict(loaded.metadata)
        if loaded.title and "title" not in own:
            own["title"] = loaded.title
        digest = content_hash(loaded.text)
        if old is None:
            acl, user = given_acl, given_meta
            if defaults is not None and (acl is None or user is None):
                inherited_acl, inherited_meta = defaults(loaded.uri, acl is None)
                acl = inherited_acl if acl is None else acl
                user = inherited_meta if user is None else user
            return _Pending(loaded, own, user, acl, digest, tuple(sorted(set(acl or ()))))
        # Checked here first so that an unchanged document the writer may not read is refused like
        # any other (an "unchanged" answer would confirm its content), and again under the row lock.
        target_acl = old.acl if given_acl is None else given_acl
        check_replace(access, loaded.uri, old.acl, target_acl)
        acl_change = target_acl != old.acl
        if old.content_hash != digest or old.policy_version != self.policy.version:
            return _Pending(loaded, own, given_meta, given_acl, digest, tuple(target_acl), acl_change=acl_change)
        if "duplicate_of" in old.metadata:  # still the copy it was: only a changed text is looked at again
            own["duplicate_of"] = old.metadata["duplicate_of"]
        target_meta = {**own, **(old.user_metadata if given_meta is None else given_meta)}
        if target_meta == old.metadata and not acl_change:
            report.unchanged += 1
        elif self.policy.pii.watched and target_meta != old.metadata:
            # New metadata under a PII policy is screened with the whole document (its values may
            # need the vault, written with the document): read again, like a changed text.
            own.pop("duplicate_of", None)
            return _Pending(loaded, own, given_meta, given_acl, digest, tuple(target_acl), acl_change=acl_change)
        elif self.repo.update_document_attributes(info.id, loaded.uri, own, given_meta, given_acl, access):
            report.updated += 1
            report.acl_changed += acl_change
        else:
            report.unchanged += 1
        return None

    @staticmethod
    def _link_if_copy(pending: _Pending, copies: NearDuplicateIndex) -> None:
        pending.minhash = signature(pending.loaded.text)
        pending.duplicate_of = copies.original_of(pending.loaded.uri, pending.effective_acl, pending.minhash)
        if pending.duplicate_of is not None:
            pending.metadata["duplicate_of"] = pending.duplicate_of

    def _prepare(self, pending: _Pending) -> None:
        with self._span("chunk", {"ragtune.document.uri": pending.loaded.uri,
                                  "ragtune.document.chars": len(pending.loaded.text)}):
            self._chunk(pending)

    def _screen(self, pending: _Pending) -> None:
        screened = screen_document(pending.loaded, pending.metadata, pending.user_metadata, self.policy.pii,
                                   self.policy.version)
        pending.loaded = screened.document
        pending.metadata = screened.metadata
        pending.user_metadata = screened.user_metadata
        pending.pii = screened.record
        pending.sealed = screened.sealed

    def _chunk(self, pending: _Pending) -> None:
        chunks = self.chunker.split(pending.loaded)
        if not chunks:
            from ragtune.errors import EmptyDocumentError

            raise EmptyDocumentError(pending.loaded.uri, "no text to index")
        if self.max_chunks and len(chunks) > self.max_chunks:
            # Before the lexical terms and any embedding: a document that expanded far beyond its
            # upload (issue 14: 433 KB became 99,109 chunks) must not hold the worker for minutes.
            raise ChunkLimitError(pending.loaded.uri, f"{len(chunks):,} chunks from {len(pending.loaded.text):,} "
                                                      f"characters, over max_chunks_per_document={self.max_chunks:,}")
        pending.chunks = chunks
        pending.terms = [self.analyzer.term_counts(c.text) for c in chunks]
        # scored once here, so a search never scores (govern.injection); the policy decides what a
        # score means, and holds a chunk out of retrieval now only when it says quarantine
        pending.injection = [score_injection(c.text).score for c in chunks]
        if self.policy.injection.action == "quarantine":
            pending.quarantined = [self._held(c.text, s) for c, s in zip(chunks, pending.injection, strict=True)]

    def _held(self, text: str, score: float) -> bool:
        """Whether the policy holds a chunk out of retrieval: quarantine, a score at its threshold
        or over, and a text no admin released."""
        injection = self.policy.injection
        if injection.action != "quarantine":
            return False
        threshold = injection.threshold if injection.threshold is not None else DEFAULT_THRESHOLD
        return score >= threshold and content_hash(text) not in self._released

    def _flush(self, batch: list[_Pending], info: CollectionInfo, writer: ThreadPoolExecutor,
               report: IngestReport, counts: ProgressCounter, access: WriteAccess) -> Future[None]:
        texts = [c.text for p in batch for c in p.chunks]
        vectors = self._embed(texts, report, counts)
        offset = 0
        prepared: list[PreparedDocument] = []
        for p in batch:
            n = len(p.chunks)
            prepared.append(PreparedDocument(
                uri=p.loaded.uri, title=p.loaded.title, text=p.loaded.text, content_hash=p.hash,
                metadata=p.metadata, user_metadata=p.user_metadata, acl=p.acl, chunks=p.chunks,
                vectors=vectors[offset:offset + n], term_counts=p.terms, minhash=p.minhash,
                duplicate_of=p.duplicate_of, pii=p.pii, injection=p.injection, quarantined=p.quarantined,
                sealed=[(s.token, s.entity, s.sealed) for s in p.sealed],
            ))
            offset += n
        acl_changes = {p.loaded.uri for p in batch if p.acl_change}
        # the writer thread runs in this context, so its span joins the ingest's trace
        return writer.submit(contextvars.copy_context().run, self._write_all, info, prepared, report, counts, access,
                             acl_changes)

    def _write_all(self, info: CollectionInfo, prepared: list[PreparedDocument], report: IngestReport,
                   counts: ProgressCounter, access: WriteAccess, acl_changes: set[str]) -> None:
        """One transaction for the whole batch; if it fails, each document on its own, so one bad
        document is reported by name and the others still land."""
        with self._span("write", {"ragtune.documents": len(prepared)}):
            self._write_batch(info, prepared, report, counts, access, acl_changes)

    def _write_batch(self, info: CollectionInfo, prepared: list[PreparedDocument], report: IngestReport,
                     counts: ProgressCounter, access: WriteAccess, acl_changes: set[str]) -> None:
        unique = len({d.uri for d in prepared}) == len(prepared)
        if unique and len(prepared) > 1:
            try:
                statuses = self.repo.write_documents(info, prepared, access)
            except Exception:  # retried one by one below, where the error surfaces with its document
                pass
            else:
                for doc, status in zip(prepared, statuses, strict=True):
                    self._count(report, doc, status, counts, doc.uri in acl_changes)
                return
        for doc in prepared:
            try:
                status = self.repo.write_document(info, doc, access)
            except RagtuneError as exc:
                report.failed.append(FileFailure(doc.uri, getattr(exc, "code", "error"),
                                                 getattr(exc, "reason", str(exc))))
                counts.add("documents", detail=_short(doc.uri))
            else:
                self._count(report, doc, status, counts, doc.uri in acl_changes)

    @staticmethod
    def _count(report: IngestReport, doc: PreparedDocument, status: str, counts: ProgressCounter,
               acl_changed: bool) -> None:
        if status == "added":
            report.added += 1
        else:
            report.updated += 1
            report.acl_changed += acl_changed
        report.chunks += len(doc.chunks)
        report.linked += doc.duplicate_of is not None
        counts.add("chunks", len(doc.chunks))
        counts.add("documents", detail=_short(doc.uri))

    def _embed(self, texts: list[str], report: IngestReport, counts: ProgressCounter) -> np.ndarray:
        """Vectors for ``texts``: cached ones from the store, the rest embedded once each."""
        with self._span("embed", {"gen_ai.operation.name": "embeddings", "gen_ai.request.model": self.embedder.name,
                                  "ragtune.texts": len(texts)}) as span:
            vectors, fresh = self._vectors(texts, report, counts)
            if span is not None:
                set_attributes(span, {"ragtune.embedded": fresh})
            return vectors

    def _vectors(self, texts: list[str], report: IngestReport, counts: ProgressCounter) -> tuple[np.ndarray, int]:
        hashes = [text_hash(t) for t in texts]
        cached = self.repo.cached_embeddings(self.embedder.name, list(set(hashes)))
        todo: dict[bytes, str] = {}
        for h, t in zip(hashes, texts, strict=True):
            if h not in cached and h not in todo:
                todo[h] = t
        if todo:
            counts.start("embedded", counts.done("embedded") + len(todo))  # the total grows first
            fresh = self.embedder.embed_batch(list(todo.values()))
            new = dict(zip(todo.keys(), fresh, strict=True))
            self.repo.store_embeddings(self.embedder.name, new.items())
            cached.update(new)
            report.embedded += len(todo)
            counts.add("embedded", len(todo))
        if not texts:
            return np.zeros((0, self.embedder.dimension), dtype=np.float32), len(todo)
        return np.stack([cached[h] for h in hashes]).astype(np.float32, copy=False), len(todo)

    @staticmethod
    def _reap(writes: list[Future[None]], *, done_only: bool) -> None:
        # Surface unexpected writer exceptions (e.g. the database went away) instead of losing them;
        # keep at most one batch in flight so memory stays bounded.
        while writes and (writes[0].done() or not done_only or len(writes) > 1):
            writes.pop(0).result()


def _short(uri: str) -> str:
    """A document's name for a progress line: its URI after the last slash."""
    return uri.rstrip("/").rsplit("/", 1)[-1] or uri


def _group_by_lookup(items: Iterable[LoadedDocument | IngestError], size: int
                     ) -> Iterator[list[LoadedDocument | IngestError]]:
    group: list[LoadedDocument | IngestError] = []
    for item in items:
        group.append(item)
        if len(group) >= size:
            yield group
            group = []
    if group:
        yield group
