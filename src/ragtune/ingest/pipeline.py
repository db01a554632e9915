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
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ragtune.errors import IngestError, RagtuneError
from ragtune.models import FileFailure, IngestReport, LoadedDocument
from ragtune.protocols import Chunker, Embedder
from ragtune.retrieve.lexical import LexicalAnalyzer
from ragtune.store.repository import (
    CollectionInfo,
    PreparedDocument,
    Repository,
    content_hash,
    text_hash,
)

ProgressCallback = Callable[[str, int], None]  # (event, amount): "document", "chunks", "embedded"


@dataclass
class _Pending:
    loaded: LoadedDocument
    metadata: dict[str, Any]
    acl: tuple[str, ...]
    hash: str
    chunks: list[Any] = field(default_factory=list)
    terms: list[Counter[str]] = field(default_factory=list)


class IngestPipeline:
    def __init__(self, repo: Repository, embedder: Embedder, chunker: Chunker, analyzer: LexicalAnalyzer,
                 *, batch_texts: int = 256) -> None:
        self.repo = repo
        self.embedder = embedder
        self.chunker = chunker
        self.analyzer = analyzer
        self.batch_texts = batch_texts

    def run(self, documents: Iterable[LoadedDocument | IngestError], info: CollectionInfo, *,
            metadata: dict[str, Any] | None = None, acl: Iterable[str] = (),
            progress: ProgressCallback | None = None, seen: set[str] | None = None) -> IngestReport:
        """Ingest a stream of loaded documents (or the errors loading them raised).

        ``seen`` (if given) collects the URIs produced by this run, for ``sync``.
        """
        started = time.perf_counter()
        report = IngestReport()
        extra_meta = dict(metadata or {})
        acl_t = tuple(sorted(set(acl)))
        notify = progress or (lambda event, n: None)
        batch: list[_Pending] = []
        batch_chunks = 0
        writes: list[Future[None]] = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ragtune-writer") as writer:
            for group in _group_by_lookup(documents, 64):
                loaded_docs = [d for d in group if isinstance(d, LoadedDocument)]
                for failure in (d for d in group if not isinstance(d, LoadedDocument)):
                    report.failed.append(FileFailure(failure.source, failure.code, failure.reason))
                    notify("document", 1)
                existing = self.repo.existing(info.id, [d.uri for d in loaded_docs])
                for loaded in loaded_docs:
                    if seen is not None:
                        seen.add(loaded.uri)
                    meta = {**loaded.metadata, **extra_meta}
                    if loaded.title and "title" not in meta:
                        meta["title"] = loaded.title
                    digest = content_hash(loaded.text)
                    old = existing.get(loaded.uri)
                    if old is not None and old.content_hash == digest:
                        if old.metadata == meta and old.acl == acl_t:
                            report.unchanged += 1
                        else:
                            self.repo.update_document_attributes(info.id, loaded.uri, meta, acl_t)
                            report.updated += 1
                        notify("document", 1)
                        continue
                    try:
                        pending = self._prepare(loaded, meta, acl_t, digest)
                    except RagtuneError as exc:
                        report.failed.append(FileFailure(loaded.uri, getattr(exc, "code", "error"), str(exc)))
                        notify("document", 1)
                        continue
                    batch.append(pending)
                    batch_chunks += len(pending.chunks)
                    if batch_chunks >= self.batch_texts:
                        writes.append(self._flush(batch, info, writer, report, notify))
                        batch, batch_chunks = [], 0
                    self._reap(writes, done_only=True)
            if batch:
                writes.append(self._flush(batch, info, writer, report, notify))
            self._reap(writes, done_only=False)
        report.seconds = time.perf_counter() - started
        return report

    def _prepare(self, loaded: LoadedDocument, meta: dict[str, Any], acl: tuple[str, ...], digest: str) -> _Pending:
        chunks = self.chunker.split(loaded)
        if not chunks:
            from ragtune.errors import EmptyDocumentError

            raise EmptyDocumentError(loaded.uri, "no text to index")
        terms = [self.analyzer.term_counts(c.text) for c in chunks]
        return _Pending(loaded, meta, acl, digest, chunks, terms)

    def _flush(self, batch: list[_Pending], info: CollectionInfo, writer: ThreadPoolExecutor,
               report: IngestReport, notify: ProgressCallback) -> Future[None]:
        texts = [c.text for p in batch for c in p.chunks]
        vectors = self._embed(texts, report, notify)
        offset = 0
        prepared: list[PreparedDocument] = []
        for p in batch:
            n = len(p.chunks)
            prepared.append(PreparedDocument(
                uri=p.loaded.uri, title=p.loaded.title, text=p.loaded.text, content_hash=p.hash,
                metadata=p.metadata, acl=p.acl, chunks=p.chunks, vectors=vectors[offset:offset + n],
                term_counts=p.terms,
            ))
            offset += n
        return writer.submit(self._write_all, info, prepared, report, notify)

    def _write_all(self, info: CollectionInfo, prepared: list[PreparedDocument], report: IngestReport,
                   notify: ProgressCallback) -> None:
        """One transaction for the whole batch; if it fails, each document on its own, so one bad
        document is reported by name and the others still land."""
        unique = len({d.uri for d in prepared}) == len(prepared)
        if unique and len(prepared) > 1:
            try:
                statuses = self.repo.write_documents(info, prepared)
            except Exception:  # retried one by one below, where the error surfaces with its document
                pass
            else:
                for doc, status in zip(prepared, statuses, strict=True):
                    self._count(report, doc, status, notify)
                return
        for doc in prepared:
            try:
                status = self.repo.write_document(info, doc)
            except RagtuneError as exc:
                report.failed.append(FileFailure(doc.uri, getattr(exc, "code", "error"), str(exc)))
                notify("document", 1)
            else:
                self._count(report, doc, status, notify)

    @staticmethod
    def _count(report: IngestReport, doc: PreparedDocument, status: str, notify: ProgressCallback) -> None:
        if status == "added":
            report.added += 1
        else:
            report.updated += 1
        report.chunks += len(doc.chunks)
        notify("document", 1)

    def _embed(self, texts: list[str], report: IngestReport, notify: ProgressCallback) -> np.ndarray:
        """Vectors for ``texts``: cached ones from the store, the rest embedded once each."""
        hashes = [text_hash(t) for t in texts]
        cached = self.repo.cached_embeddings(self.embedder.name, list(set(hashes)))
        todo: dict[bytes, str] = {}
        for h, t in zip(hashes, texts, strict=True):
            if h not in cached and h not in todo:
                todo[h] = t
        if todo:
            fresh = self.embedder.embed_batch(list(todo.values()))
            new = dict(zip(todo.keys(), fresh, strict=True))
            self.repo.store_embeddings(self.embedder.name, new.items())
            cached.update(new)
            report.embedded += len(todo)
            notify("embedded", len(todo))
        notify("chunks", len(texts))
        if not texts:
            return np.zeros((0, self.embedder.dimension), dtype=np.float32)
        return np.stack([cached[h] for h in hashes]).astype(np.float32, copy=False)

    @staticmethod
    def _reap(writes: list[Future[None]], *, done_only: bool) -> None:
        # Surface unexpected writer exceptions (e.g. the database went away) instead of losing them;
        # keep at most one batch in flight so memory stays bounded.
        while writes and (writes[0].done() or not done_only or len(writes) > 1):
            writes.pop(0).result()


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
