"""The engine: built once from ``Settings``, owns the store, the embedder and the retrievers.

The CLI, the server and the Python API all build it the same way. Construction is cheap; the
database (and the embedded server) start on first use, the embedding model loads on first use.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ragtune.errors import ConfigError, IngestError, ModelError, NotFoundError, PermissionDeniedError, QueryError
from ragtune.generate.answer import EXTRACTIVE, READER_GENERATOR, Answerer, AskOptions
from ragtune.generate.answerability import AnswerabilityModel
from ragtune.generate.conversation import (
    ConversationOptions,
    ConversationQuery,
    History,
    as_conversation,
    check_question,
    conversation_query,
)
from ragtune.generate.grounding import SupportScorer
from ragtune.generate.reader import Reader
from ragtune.govern.answers import apply_answer_policy, blocked_answer, check_generator, held_tokens
from ragtune.govern.audit import AuditLog
from ragtune.govern.erasure import Eraser, ErasureReport, ErasureRequest
from ragtune.govern.pii import Vault
from ragtune.govern.policies import Policies
from ragtune.govern.policy import BlockedTopic, Policy
from ragtune.ingest.lexical import LexicalAnalyzer
from ragtune.ingest.pipeline import IngestPipeline, InheritedAttributes
from ragtune.models import (
    Answer,
    Chunk,
    Document,
    FileWarning,
    Hit,
    IngestReport,
    LoadedDocument,
    Principal,
    SearchResult,
)
from ragtune.observe.traces import StageTimer, TraceReader, TraceRecord, record, shown_chunk_ids
from ragtune.observe.tracing import Tracing, stash
from ragtune.plugins import Plugins, default_plugins
from ragtune.progress import emit
from ragtune.protocols import (
    Chunker,
    Embedder,
    Generator,
    Progress,
    Reranker,
    RerankWindow,
    TokenizedEmbedder,
    WarmsUp,
)
from ragtune.retrieve.filters import Filter, FilterLimits, as_filters, bad_text, check_size
from ragtune.retrieve.searcher import Searcher, SearchOptions
from ragtune.settings import Settings
from ragtune.store.access import WriteAccess
from ragtune.store.audit import AuditEvent
from ragtune.store.database import Database
from ragtune.store.policies import sealed_value
from ragtune.store.repository import CollectionInfo, Repository, check_collection_name, content_hash
from ragtune.store.schedules import Schedule, ScheduleStore

if TYPE_CHECKING:
    import numpy as np

    from ragtune.ingest.connectors.base import Connector
    from ragtune.ingest.loaders.base import LoaderOptions

# One rule for who acts when no one is named: the local operator, an admin, for reads and writes
# alike (the CLI, the Python API, and ragtune serve with auth off). Name a principal to read as
# someone (--as-user/--as-group, principal=, or an API key when the server's auth is on).
_OPERATOR = Principal.system()
# The longest interval of a scheduled sync: a year.
MAX_SCHEDULE_INTERVAL_S = 366 * 24 * 3600
# A setting or argument that turns a trained part off; ``vN`` names a version of one.
_NONE = ("", "none")
_VERSION = re.compile(r"^v[1-9][0-9]*$")
# The generator setting that picks the measured best for a CPU (``generator_spec``).
AUTO = "auto"


class Ragtune:
    def __init__(self, settings: Settings, *, embedder: Embedder | None = None,
                 database: Database | None = None, on_database_wait: Callable[[str], None] | None = None,
                 plugins: Plugins | None = None) -> None:
        self.settings = settings
        # every part is built from these registries: ragtune's own and the installed plugins'
        self.plugins = plugins or default_plugins()
        self._embedder = embedder
        self._database = database
        self._database_lock = threading.Lock()
        # Told once ("crash recovery" or "startup") when opening the embedded server has to wait.
        self._on_database_wait = on_database_wait
        self.analyzer = LexicalAnalyzer()
        self._generators: dict[str, Generator] = {}
        # trained models by the folder they were loaded from: a new version is a new folder
        self._rerankers: dict[str, Reranker] = {}
        self._answerability: dict[Path, AnswerabilityModel] = {}
        self._readers: dict[Path, Reader] = {}

    # -- lazily built parts --------------------------------------------------------------------
    @property
    def db(self) -> Database:
        if self._database is None:
            with self._database_lock:  # the spans' export thread may open it too
                if self._database is None:
                    self._database = Database.from_settings(self.settings, on_wait=self._on_database_wait)
        return self._database

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            from ragtune.ingest.embedders import make_embedder

            self._embedder = make_embedder(self.settings.ingest.embedder, cache_dir=self.settings.resolved_cache_dir,
                                           plugins=self.plugins)
        return self._embedder

    @cached_property
    def repo(self) -> Repository:
        return Repository(self.db, audit=self.settings.governance.audit)

    @cached_property
    def audit(self) -> AuditLog:
        """The hash-chained log of who read and changed what (``govern.audit``)."""
        return AuditLog(self.db, self.settings.governance)

    @cached_property
    def policies(self) -> Policies:
        """Collections' policies: PII, injection screening and answer rules (``govern.policy``),
        versioned and audited; ``set`` one with ``rt.policies.set(collection, source, principal)``."""
        return Policies(self.db, audit=self.settings.governance.audit, plugins=self.plugins)

    def erase(self, *, document_ids: Sequence[int] = (), uri: str | None = None, subject: str | None = None,
              collection: str | None = None, dry_run: bool = False, principal: Principal = _OPERATOR) -> ErasureReport:
        """Erase documents (by id, or URI pattern with ``*`` and ``?``) or every document holding
        ``subject``, with every copy of them, in one transaction; mark what was trained on them
        (``[governance] erasure_models``); check that nothing is left (``ErasureReport.remaining``).
        Admins only; the receipt is in the audit log (``erasure``). ``dry_run``: what would go."""
        if not principal.admin:
            raise PermissionDeniedError("erasing needs an admin")
        request = ErasureRequest(tuple(document_ids), uri, subject, collection)
        if "tracing" in self.__dict__:  # spans still queued are in the table before it is searched
            self.tracing.flush()

        def lineage(datasets: list[dict[str, Any]], collections: list[str], erasure: int) -> list[dict[str, Any]]:
            from ragtune.finetune.lifecycle.lineage import affected_models

            return affected_models(self.settings, datasets, collections, erasure=erasure,
                                   action=self.settings.governance.erasure_models)

        return self._eraser.erase(request, principal, dry_run=dry_run, lineage=lineage)

    def verify_erasure(self, erasure_id: int, *, subject: str | None = None) -> ErasureReport:
        """An erasure checked again: every table searched for what it erased (``Eraser.verify``)."""
        return self._eraser.verify(erasure_id, subject=subject)

    @cached_property
    def _eraser(self) -> Eraser:
        return Eraser(self.db, self.repo, audit=self.settings.governance.audit)

    def quarantined(self, collection: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """The chunks ``collection``'s injection policy holds out of retrieval, highest score first."""
        return self.repo.quarantined_chunks(collection, limit=limit)

    def release(self, collection: str, chunk_ids: Sequence[int], *, principal: Principal = _OPERATOR) -> int:
        """Return quarantined chunks to retrieval (admins; audited ``quarantine.release``); their texts
        stay released when their documents are ingested again."""
        if not principal.admin:
            raise PermissionDeniedError("releasing quarantined chunks needs an admin")
        return self.repo.release_quarantined(collection, chunk_ids, principal)

    def reveal(self, token: str, *, principal: Principal = _OPERATOR) -> str:
        """The value a pseudonym token (``<EMAIL_ADDRESS_3f9a0c2e51b7>``) stands for, opened with the
        vault key (``RAGTUNE_VAULT_KEY``); admins only, and audited (``pii.reveal``)."""
        if not principal.admin:
            raise PermissionDeniedError("revealing a pseudonymized value needs an admin")
        token = token.strip()
        found = sealed_value(self.db, token)
        if found is None:
            raise NotFoundError(f"no vault entry for {token!r}: not a pseudonym, or its value was erased")
        entity, sealed = found
        value = Vault.from_environment("revealing a pseudonymized value").open(token, sealed)
        self.audit.record(AuditEvent("pii.reveal", principal, None, [], {"token": token, "entity": entity}))
        return value

    @cached_property
    def tracing(self) -> Tracing:
        """Spans of every step, batched into the spans table (and OTLP when configured). The database
        is opened for them when the first are written, if nothing opened it before."""
        return Tracing(lambda: self.db, self.settings.observability,
                       screen=lambda collection: self.policies.content_screen(collection))

    @cached_property
    def traces(self) -> TraceReader:
        return TraceReader(self.db, self.tracing)

    def trace(self, trace_id: str, *, principal: Principal = _OPERATOR, observer: bool = False) -> dict[str, Any]:
        """One trace as ``principal`` may see it (``TraceReader.get``). A trace shows what a search
        found and an answer's prompt, so reading it is audited as a read of those chunks."""
        row = self.traces.get(trace_id, principal, observer=observer)
        shown = shown_chunk_ids(row)
        self.audit.record(AuditEvent("trace.read", principal, row.get("collection"), [{"chunks": shown}] if shown
                                     else [], {"trace_id": row["id"], "kind": row["kind"],
                                               "asked_by": row.get("principal")}), read=True)
        return row

    def feedback(self, response_id: str, *, principal: Principal | None = None, thumbs: int | None = None,
                 score: float | None = None, label: str | None = None, comment: str | None = None,
                 correction: str | None = None) -> dict[str, Any]:
        """Feedback on an answer (its ``trace_id``, or a non-streamed completion's ``chatcmpl-`` id)
        from the principal who asked it (``observe.feedback``); returns the stored row."""
        from ragtune.observe.feedback import Feedback, give

        given = Feedback(thumbs=thumbs, score=score, label=label, comment=comment, correction=correction)
        return give(self.db, self.tracing, response_id, principal or _OPERATOR, given,
                    audit=self.settings.governance.audit)

    def prune_traces(self, retention_days: int | None = None) -> list[str]:
        """Drop the days of spans older than ``retention_days`` (default ``[observability]
        retention_days``), whole partitions at a time; returns the partitions dropped."""
        from ragtune.observe.traces import prune

        return prune(self.db, retention_days or self.settings.observability.retention_days)

    @cached_property
    def query_embedder(self) -> Embedder:
        """What searches embed queries with: the embedder, or per ``[retrieval] query_embedder`` its
        int8 build standing in for it (``ingest/query_embedders.py``)."""
        from ragtune.ingest.query_embedders import query_embedder

        return query_embedder(self.settings.retrieval.query_embedder, self.embedder, self.settings.resolved_cache_dir)

    @cached_property
    def searcher(self) -> Searcher:
        return Searcher(self.repo, self.query_embedder, self.analyzer, self.tracing,
                        policy_for=self.policies.for_collection)

    @cached_property
    def _default_chunker(self) -> Chunker:
        return self.chunker()

    @cached_property
    def _whole_document_chunker(self) -> Chunker:
        return self.chunker("whole")

    def chunker(self, name: str | None = None) -> Chunker:
        """The chunker ``name`` (default: the ``chunker`` setting) over the embedder's own tokenizer,
        with a budget the embedder can read whole."""
        from ragtune.ingest.chunker import ChunkBudget
        from ragtune.ingest.tokens import HFTokenCounter

        embedder = self.embedder
        if not isinstance(embedder, TokenizedEmbedder):
            raise ModelError(f"embedder {embedder.name!r} exposes no tokenizer and window to measure chunk sizes "
                             "(ragtune.protocols.TokenizedEmbedder)")
        counter = HFTokenCounter(embedder.tokenizer)
        # The model truncates at max_seq_length including its special tokens: a longer chunk
        # would be embedded only in part.
        budget = min(self.settings.ingest.chunk_max_tokens, int(embedder.max_seq_length) - counter.special_tokens)
        factory = self.plugins.chunkers.get(name or self.settings.ingest.chunker)
        return factory(counter, ChunkBudget(budget, min(self.settings.ingest.chunk_overlap_tokens, budget // 2)))

    # -- collections ---------------------------------------------------------------------------
    def collection(self, name: str | None = None, *, create: bool = False) -> CollectionInfo:
        name = name or self.settings.default_collection
        if create:
            return self.repo.ensure_collection(
                name, self.embedder.name, self.embedder.dimension,
                m=self.settings.retrieval.hnsw_m, ef_construction=self.settings.retrieval.hnsw_ef_construction,
            )
        # Reads go through db.read: after losing the database they wait for it and run once more.
        return self.db.read(lambda: self.repo.collection(name))

    def collections(self, *, principal: Principal = _OPERATOR, name: str | None = None) -> list[CollectionInfo]:
        """Every collection (or the one named) for the operator; for anyone else only those holding
        a document they may read, with counts of what they may read."""
        return self.db.read(lambda: self.repo.visible_collections(principal, name))

    def visible_collection(self, name: str, principal: Principal) -> CollectionInfo:
        """The collection, if ``principal`` may read a document in it; else the same NotFoundError
        as for a collection that does not exist, so its name is not confirmed either."""
        info = self.collection(name)
        if not self.db.read(lambda: self.repo.has_visible_documents(info.id, principal)):
            raise NotFoundError(f"no collection named {name!r}")
        return info

    def drop_collection(self, name: str, *, principal: Principal = _OPERATOR) -> None:
        self.repo.drop_collection(name, principal=principal)

    # -- ingest --------------------------------------------------------------------------------
    # ``metadata`` and ``acl`` None mean "not given": stored documents keep theirs and new ones
    # inherit them (``IngestPipeline``); a stored document's ACL changes only with ``change_acl``.
    # The writer is the local operator (an admin principal) unless ``principal`` says otherwise.
    # ``progress`` receives the pipeline's events ("documents", "chunks", "embedded": see
    # ``ingest.pipeline``) and, for files, "files": the files read so far of all the files found,
    # the one being read in ``detail``.
    def ingest(self, paths: Sequence[str | Path] | str | Path, *, collection: str | None = None,
               metadata: dict[str, Any] | None = None, acl: Iterable[str] | None = None, change_acl: bool = False,
               include: Sequence[str] = (), exclude: Sequence[str] = (), loader_options: LoaderOptions | None = None,
               progress: Progress | None = None, principal: Principal = _OPERATOR) -> IngestReport:
        """Ingest files and folders (recursively). Returns counts of added/updated/unchanged/failed."""
        roots = self._roots(paths)
        files = self._files(roots, include, exclude)
        found: list[FileWarning] = []
        report = self._run(self._load(files, loader_options, progress, found), collection, metadata, acl, progress,
                           access=WriteAccess(principal, change_acl), inherit_from=roots)
        report.files, report.warnings = len(files), found
        return report

    def ingest_documents(self, documents: Iterable[LoadedDocument | IngestError], *, collection: str | None = None,
                         metadata: dict[str, Any] | None = None, acl: Iterable[str] | None = None,
                         change_acl: bool = False, progress: Progress | None = None,
                         whole_documents: bool = False, near_duplicates: bool | None = None,
                         principal: Principal = _OPERATOR) -> IngestReport:
        """Ingest already-loaded documents (records from code, datasets, uploads). New documents
        without ``acl`` are public.

        ``whole_documents`` indexes each document as a single chunk (evaluation corpora whose
        documents are the judged units). ``near_duplicates=False`` indexes every document even when
        it nearly copies another (evaluation corpora, whose judgements name documents by ID);
        None follows ``[ingest] near_duplicates``.
        """
        chunker = self._whole_document_chunker if whole_documents else None
        return self._run(documents, collection, metadata, acl, progress, chunker=chunker,
                         access=WriteAccess(principal, change_acl), link_copies=near_duplicates)

    def sync(self, folder: str | Path, *, collection: str | None = None, metadata: dict[str, Any] | None = None,
             acl: Iterable[str] | None = None, change_acl: bool = False, include: Sequence[str] = (),
             exclude: Sequence[str] = (), loader_options: LoaderOptions | None = None,
             progress: Progress | None = None, principal: Principal = _OPERATOR) -> IngestReport:
        """Ingest a folder and remove the collection's documents from it that are gone.

        Documents of files that failed to load this time are kept: a transient read error must not
        delete what is stored.
        """
        roots = self._roots([folder])
        files = self._files(roots, include, exclude)
        seen: set[str] = set()
        found: list[FileWarning] = []
        report = self._run(self._load(files, loader_options, progress, found), collection, metadata, acl, progress,
                           seen=seen, access=WriteAccess(principal, change_acl), inherit_from=roots)
        report.files, report.warnings = len(files), found
        info = self.collection(collection)
        failed_files = {_file_of(f.source) for f in report.failed}
        prefix = str(roots[0]) + "/"
        stale = [  # only what the writer may read can be found gone, and removed
            d.uri for d in self.repo.documents(info.id, principal=principal, prefix=prefix)
            if d.uri not in seen and _file_of(d.uri) not in failed_files
        ]
        report.removed = self.repo.delete_documents(info.id, stale, principal=principal)
        return report

    def connector(self, uri: str) -> Connector:
        """The connector of a remote source ``scheme://...`` (``s3://bucket/prefix``), from the
        plugin registry's ``connectors`` by scheme."""
        scheme, sep, _ = uri.partition("://")
        factory = self.plugins.connectors.find(scheme.lower()) if sep and scheme else None
        if factory is None:
            known = ", ".join(f"{n}://" for n in self.plugins.connectors.names()) or "none"
            raise ConfigError(f"no connector for the source {uri!r}; sources ragtune can sync: {known}")
        return factory(uri, self.settings)

    def sync_source(self, uri: str | Connector, *, collection: str | None = None,
                    metadata: dict[str, Any] | None = None,
                    acl: Iterable[str] | None = None, change_acl: bool = False,
                    loader_options: LoaderOptions | None = None, progress: Progress | None = None,
                    principal: Principal = _OPERATOR) -> IngestReport:
        """``sync`` for a remote source (``s3://bucket/prefix``): objects whose ETag every one of
        their stored documents holds (in its metadata, ``etag``) are counted unchanged without a
        download; new and changed ones are downloaded and read by the loaders of files, their
        documents stored under ``s3://bucket/key``; documents under the source whose object is gone
        are removed (those of an object that failed to load are kept). ACLs and metadata are kept
        as ``sync`` keeps them: new objects inherit what their "folder"'s documents share. ``uri`` may
        also be a ``Connector`` built by the caller (an S3 client of its own, say)."""
        from ragtune.ingest.connectors.base import ETAG, Stored, changed_objects, file_of, load_objects, source_root
        from ragtune.ingest.loaders import LoaderOptions

        connector = self.connector(uri) if isinstance(uri, str) else uri
        objects = list(connector.list())  # raises, naming the source, before anything is written
        info = self.collection(collection, create=True)
        listed = self.repo.documents(info.id, principal=principal, prefix=connector.uri)
        existing = self.repo.existing(info.id, [d.uri for d in listed])
        stored = [Stored(d.uri, d.metadata.get(ETAG), existing[d.uri].acl, existing[d.uri].user_metadata)
                  for d in listed if d.uri in existing]
        todo, kept = changed_objects(objects, stored, metadata=metadata, acl=acl)
        options = loader_options or LoaderOptions.from_settings(self.settings)
        found: list[FileWarning] = []
        seen: set[str] = set(kept)
        report = self._run(load_objects(todo, options, self.plugins, warnings_to=found, progress=progress),
                           collection, metadata, acl, progress, seen=seen, access=WriteAccess(principal, change_acl),
                           inherit_from=[source_root(connector.uri)])
        report.unchanged += len(kept)
        report.files, report.warnings = len(todo), found
        failed = {file_of(f.source) for f in report.failed}
        stale = [d.uri for d in listed if d.uri not in seen and file_of(d.uri) not in failed]
        report.removed = self.repo.delete_documents(info.id, stale, principal=principal)
        return report

    # -- scheduled syncs -----------------------------------------------------------------------
    # The rows only: ``ragtune serve``'s job worker runs each due schedule as an ingest job.
    @cached_property
    def schedule_store(self) -> ScheduleStore:
        return ScheduleStore(self.db, audit=self.settings.governance.audit)

    def add_schedule(self, source: str | Path, *, every_s: int, collection: str | None = None,
                     metadata: dict[str, Any] | None = None, acl: Iterable[str] | None = None,
                     change_acl: bool = False, principal: Principal = _OPERATOR) -> Schedule:
        """Sync ``source`` (a folder, or a remote source such as ``s3://bucket/prefix``) into the
        collection every ``every_s`` seconds, counted from the end of each run, as ``principal``
        (with ``sync``'s rules for ACLs and metadata). The first run is due at once. A folder is
        stored by its absolute path and must exist; a remote source's scheme must have a connector."""
        if isinstance(every_s, bool) or not isinstance(every_s, int) or not 1 <= every_s <= MAX_SCHEDULE_INTERVAL_S:
            raise ConfigError(f"a schedule's interval must be a whole number of seconds from 1 to "
                              f"{MAX_SCHEDULE_INTERVAL_S}, got {every_s!r}")
        name = check_collection_name(collection or self.settings.default_collection)
        text = str(source)
        if "://" in text:
            self.connector(text)  # an unknown scheme or a malformed URI is refused now, not at each run
            where = text
        else:
            folder = self._roots([source])[0]
            if not folder.is_dir():
                raise IngestError(str(source), "no such folder (a schedule syncs a folder or a remote source)")
            where = str(folder)
        return self.schedule_store.create(source=where, collection=name, interval_s=every_s, principal=principal,
                                          acl=tuple(sorted(set(acl))) if acl is not None else None,
                                          metadata=metadata, change_acl=change_acl)

    def schedules(self) -> list[Schedule]:
        return self.db.read(self.schedule_store.listing)

    def delete_schedule(self, schedule_id: int, *, principal: Principal = _OPERATOR) -> None:
        """Remove a schedule: no more runs (one still queued is cancelled; one running finishes)."""
        self.schedule_store.delete(schedule_id, principal=principal)

    def watch(self, folder: str | Path, *, stop: threading.Event, collection: str | None = None,
              metadata: dict[str, Any] | None = None, acl: Iterable[str] | None = None, change_acl: bool = False,
              include: Sequence[str] = (), exclude: Sequence[str] = (), loader_options: LoaderOptions | None = None,
              on_sync: Callable[[IngestReport], None] | None = None, principal: Principal = _OPERATOR,
              debounce_ms: int = 500) -> None:
        """``sync`` the folder, then keep it in sync until ``stop`` is set: each batch of changes
        (gathered for ``debounce_ms``) ingests the files written and removes the documents of files
        deleted, under the same options (ACLs and metadata kept as ``sync`` keeps them). Each
        sync's report goes to ``on_sync``. Needs ``watchfiles`` (the sync extra)."""
        from ragtune.extras import needs
        from ragtune.ingest.loaders.discover import wanted

        with needs("sync", "watching a folder"):
            import watchfiles
        root = self._roots([folder])[0]
        # The watcher starts before the first sync, so a file written while that sync runs is not
        # missed: the first step returns after one debounce period (a timeout yields an empty
        # batch), the notifier already collecting. A timeout also ends a batch, so it equals the
        # debounce period, which is the longest a batch is gathered anyway.
        batches = watchfiles.watch(root, stop_event=stop, debounce=debounce_ms, recursive=True,
                                   rust_timeout=max(debounce_ms, 1), yield_on_timeout=True)
        pending = next(batches, None)
        first = self.sync(root, collection=collection, metadata=metadata, acl=acl, change_acl=change_acl,
                          include=include, exclude=exclude, loader_options=loader_options, principal=principal)
        if on_sync is not None:
            on_sync(first)
        if pending is None:  # stopped before the first step
            return
        for changes in itertools.chain([pending], batches):
            if not changes:
                continue
            paths = {Path(p) for _, p in changes}
            written = sorted(p for p in paths if p.is_file() and wanted(root, p, include, exclude))
            gone = [p for p in paths if not p.exists()]
            found: list[FileWarning] = []
            # as sync reads them: a new file takes the ACL its folder's documents share
            report = self._run(self._load(written, loader_options, None, found), collection, metadata, acl, None,
                               access=WriteAccess(principal, change_acl), inherit_from=[root])
            report.files, report.warnings = len(written), found
            if gone:
                info = self.collection(collection)
                stale = [d.uri for p in gone for d in self.repo.documents(info.id, principal=principal, prefix=str(p))
                         if _file_of(d.uri) == str(p) or d.uri.startswith(str(p) + "/")]
                report.removed = self.repo.delete_documents(info.id, stale, principal=principal)
            if on_sync is not None and (written or gone):
                on_sync(report)

    def _run(self, docs: Iterable[LoadedDocument | IngestError], collection: str | None,
             metadata: dict[str, Any] | None, acl: Iterable[str] | None, progress: Progress | None, *,
             access: WriteAccess, seen: set[str] | None = None, chunker: Chunker | None = None,
             inherit_from: Sequence[Path | str] = (), link_copies: bool | None = None) -> IngestReport:
        info = self.collection(collection, create=True)
        threshold = self.settings.ingest.near_duplicate_threshold
        if link_copies is None:
            link_copies = self.settings.ingest.near_duplicates == "link"
        pipeline = IngestPipeline(self.repo, self.embedder, chunker or self._default_chunker, self.analyzer,
                                  batch_texts=max(self.settings.ingest.embed_batch_size * 4, 64),
                                  max_chunks=self.settings.ingest.max_chunks_per_document,
                                  near_duplicates=threshold if link_copies else None,
                                  tracing=self.tracing, policy=self.policies.for_collection(info))
        defaults = None
        if inherit_from:
            # a file named on its own inherits from its folder only; files of a folder from any
            # folder up to it
            # (a remote source's root is a URI string, its "folder" already)
            defaults = InheritedAttributes(self.repo, info.id, [r if isinstance(r, str) else str(r if r.is_dir()
                                                                else r.parent) for r in inherit_from])
        return pipeline.run(docs, info, access=access, metadata=metadata, acl=acl, defaults=defaults,
                            progress=progress, seen=seen)

    @staticmethod
    def _roots(paths: Sequence[str | Path] | str | Path) -> list[Path]:
        if isinstance(paths, str | Path):
            paths = [paths]
        return [Path(p).expanduser().resolve() for p in paths]

    @staticmethod
    def _files(roots: Sequence[Path], include: Sequence[str], exclude: Sequence[str]) -> list[Path]:
        from ragtune.ingest.loaders import iter_files

        return list(iter_files(roots, list(include), list(exclude)))

    def _load(self, files: Sequence[Path], loader_options: LoaderOptions | None, progress: Progress | None,
              warnings_to: list[FileWarning]) -> Iterator[LoadedDocument | IngestError]:
        """The documents of ``files``; what libraries warn while reading each is kept in
        ``warnings_to`` with the file's name, for the report, instead of printed."""
        from ragtune.ingest.loaders import LoaderOptions, load_files

        options = loader_options or LoaderOptions.from_settings(self.settings)
        emit(progress, "files", 0, len(files))  # the total first, before the pipeline pulls a document
        return load_files(_counted_files(files, progress), options, self.plugins, warnings_to=warnings_to)

    # -- documents -----------------------------------------------------------------------------
    # Reads and deletes see what ``principal`` may read (the local operator, an admin, by default).
    def documents(self, *, collection: str | None = None, prefix: str | None = None, limit: int | None = None,
                  offset: int = 0, principal: Principal = _OPERATOR) -> list[Document]:
        """The documents ``principal`` may read, by URI; ``prefix`` as ``_prefix`` reads it."""
        name = collection or self.settings.default_collection
        start = self._prefix(prefix)
        return self.db.read(lambda: self.repo.documents(self.repo.collection(name).id, principal=principal,
                                                        prefix=start, limit=limit, offset=offset))

    def count_documents(self, *, collection: str | None = None, prefix: str | None = None,
                        principal: Principal = _OPERATOR) -> int:
        """How many documents ``documents`` lists without a limit (the total a page is out of)."""
        name = collection or self.settings.default_collection
        start = self._prefix(prefix)
        return self.db.read(lambda: self.repo.count_documents(self.repo.collection(name).id, principal=principal,
                                                              prefix=start))

    def document(self, uri: str | None = None, *, collection: str | None = None, document_id: int | None = None,
                 principal: Principal = _OPERATOR) -> tuple[Document, str, list[Chunk]]:
        """A document by URI (or ``document_id``) with its text and chunks; one ``principal`` may not
        read is not found."""
        name = collection or self.settings.default_collection
        path = self._uri(uri) if uri is not None else None
        found = self.db.read(lambda: self.repo.document(self.repo.collection(name).id, principal=principal, uri=path,
                                                        document_id=document_id))
        document = found[0]
        self.audit.record(AuditEvent("document.read", principal, name, [
            {"id": document.id, "uri": document.uri, "hash": document.content_hash}]), read=True)
        return found

    def delete(self, uris: str | Sequence[str], *, collection: str | None = None,
               principal: Principal = _OPERATOR) -> int:
        if isinstance(uris, str):
            uris = [uris]
        return self.repo.delete_documents(self.collection(collection).id, [self._uri(u) for u in uris],
                                          principal=principal)

    @staticmethod
    def _uri(uri: str) -> str:
        # Files are stored by absolute path; accept the relative path a user types.
        path = Path(uri.split("#", 1)[0])
        if "://" not in uri and not path.is_absolute() and path.exists():
            resolved = str(path.resolve())
            return resolved + uri[len(uri.split("#", 1)[0]):]
        return uri

    @staticmethod
    def _prefix(prefix: str | None) -> str | None:
        # Files are stored by absolute path: a relative prefix is read against the working folder
        # when it names an existing path (a folder means its documents: with the trailing slash),
        # when it starts with ./ or ../, or when its folder exists ("kb/le" for kb/leave.md). Any
        # other prefix ("squad/", a URL) is left alone: records are stored under their own ids.
        if prefix is None or "://" in prefix or Path(prefix).is_absolute():
            return prefix
        path = Path(prefix).expanduser()
        if path.is_absolute():  # ~/...
            return str(path) + ("/" if prefix.endswith("/") else "")
        if path.exists():
            return str(path.resolve()) + ("/" if path.is_dir() else "")
        if prefix.startswith(("./", "../")) or (path.parent != Path(".") and path.parent.is_dir()):
            return str(path.resolve()) + ("/" if prefix.endswith("/") else "")
        return prefix

    # -- search --------------------------------------------------------------------------------
    def search(self, query: str, *, collection: str | None = None, top_k: int = 10, mode: str | None = None,
               filters: Sequence[Filter | str] | dict[str, Any] | None = None,
               principal: Principal | None = None, query_vector: np.ndarray | None = None,
               reranker: Reranker | str | bool | None = None, history: History | None = None,
               **options: Any) -> SearchResult:
        """Ranked hits. ``reranker`` (see ``reranker()``; default: the ``reranker`` setting) rescores
        its ``top_n`` candidates (at least ``top_k``), and the first ``top_k`` are kept. With
        ``history`` (the conversation so far) ``query`` is a follow-up, searched as
        ``conversation_query()`` makes it; the result and its trace hold that query. The audit log
        records who searched, where, and the documents and chunks returned (``govern.audit``)."""
        result = self._search(query, collection=collection, top_k=top_k, mode=mode, filters=filters,
                              principal=principal, query_vector=query_vector, reranker=reranker, history=history,
                              **options)
        if self.settings.governance.audit:
            name = collection or self.settings.default_collection
            self.audit.record(AuditEvent("search", principal or _OPERATOR, name, _shown(result.hits),
                                         _asked(query, result.trace_id, mode=result.mode)), read=True)
        return result

    def _search(self, query: str, *, collection: str | None = None, top_k: int = 10, mode: str | None = None,
                filters: Sequence[Filter | str] | dict[str, Any] | None = None,
                principal: Principal | None = None, query_vector: np.ndarray | None = None,
                reranker: Reranker | str | bool | None = None, history: History | None = None,
                **options: Any) -> SearchResult:
        name = collection or self.settings.default_collection
        if reranker is None or isinstance(reranker, (str, bool)):
            reranker = self.reranker(reranker, collection=name)
        n = top_k
        # (checked only with a reranker: a protocol isinstance costs ~12 us, even on None)
        if reranker is not None and isinstance(reranker, RerankWindow):
            reranker = cast("Reranker", reranker.widened(top_k))
            n = max(top_k, cast("RerankWindow", reranker).top_n)
        opts = SearchOptions.from_settings(self.settings, mode=mode, top_k=n, **options)
        problem = bad_text(query)
        if problem:
            raise QueryError(f"the query holds {problem}")
        parsed = as_filters(filters)
        check_size(parsed, FilterLimits(self.settings.retrieval.max_filters, self.settings.retrieval.max_filter_values))
        note = None
        if history is not None:
            asked = self.conversation_query(query, history, mode=opts.mode, query_vector=query_vector)
            if asked.turns:  # else nothing before the question was used: a plain search
                query, query_vector, note = asked.text, asked.vector, {"conversation": asked.trace()}
        result = self.db.read(lambda: self.searcher.search(
            name, query, opts, filters=parsed,
            principal=principal or _OPERATOR, query_vector=query_vector, trace_params=note))
        if reranker is None:
            return result
        started = time.perf_counter()
        hits = reranker.rerank(query, result.hits)[:top_k]
        timings = {**result.timings_ms, "rerank": (time.perf_counter() - started) * 1000}
        return dataclasses.replace(result, hits=hits, mode=f"{result.mode}+rerank", timings_ms=timings)

    def conversation_query(self, question: str, history: History, *, method: str | None = None,
                           mode: str | None = None, query_vector: np.ndarray | None = None,
                           generator: Generator | str | None = None) -> ConversationQuery:
        """How ``question`` is searched after ``history`` (checked: roles, content, size): by
        ``method`` (default: the ``conversation`` setting; ``generate/conversation.py``), embedding
        with the query embedder unless ``mode`` is bm25; ``query_vector`` is the question's own
        embedding when the caller has it. The rewrite methods rewrite with ``generator`` (default:
        the ``rewrite_generator`` setting, else the ``generator`` one)."""
        options = ConversationOptions.from_settings(self.settings, method)
        messages = as_conversation(history, options)
        check_question(question)
        rewriter = None
        if options.rewrites:
            rewriter = (self.generator(generator or self.settings.retrieval.rewrite_generator or None)
                        if generator is None or isinstance(generator, str) else generator)
        embedder = None if (mode or self.settings.retrieval.default_mode) == "bm25" else self.query_embedder
        return conversation_query(question, messages, options, embedder=embedder, generator=rewriter,
                                  question_vector=query_vector)

    def reranker(self, spec: str | bool | None = None, *, collection: str | None = None) -> Reranker | None:
        """The reranker a search uses. ``spec``: None for the ``reranker`` setting; False, ``""`` or
        ``none`` for no reranking; True for the configured one, or the collection's latest trained
        reranker when none is configured; ``latest`` / ``vN`` for a version of the collection's
        trained reranker (``ragtune rerank train``); ``trained:NAME[@vN]``, a model folder, or a
        plugin's spec. Each model loads once; ``latest`` is looked up again on every call, so a
        newly trained version is used from the next search on."""
        chosen = self._choose(spec, self.settings.retrieval.reranker)
        if chosen is None:
            return None
        name = collection or self.settings.default_collection
        if chosen == "latest" or _VERSION.match(chosen):
            chosen = f"trained:{name}" + ("" if chosen == "latest" else f"@{chosen}")
        factory, argument = self.plugins.rerankers.resolve(chosen)
        part = factory(argument, self.settings)
        # A part that names its folder is reused by folder: loading a cross-encoder takes seconds.
        folder = getattr(part, "path", None)
        return part if folder is None else self._rerankers.setdefault(str(folder), part)

    def answerability_model(self, spec: str | bool | None = None) -> AnswerabilityModel | None:
        """The answerability model an answer also abstains by. ``spec``: None for the
        ``answerability`` setting; False, ``""`` or ``none`` for none; True for the configured one, or
        the project's latest trained model when none is configured; ``latest`` / ``vN`` for a version
        of it (``ragtune answerability train``); or a model folder. Each model loads once."""
        from ragtune.generate.answerability import answerability_store

        chosen = self._choose(spec, self.settings.generation.answerability)
        if chosen is None:
            return None
        if chosen == "latest" or _VERSION.match(chosen):
            version = None if chosen == "latest" else int(chosen[1:])
            folder = answerability_store(self.settings.data_dir).get(version).path
        else:
            folder = Path(chosen).expanduser()
        if folder not in self._answerability:
            self._answerability[folder] = AnswerabilityModel(folder)
        return self._answerability[folder]

    def reader_model(self, spec: str | bool | None = None) -> Reader | None:
        """The trained reader (``ragtune reader train``) that answers for ``-g reader`` and decides
        abstention for every generator. ``spec``: None for the ``reader`` setting; ``auto`` for the
        latest when the project has one, else none; False, ``""`` or ``none`` for none; True or
        ``latest`` for the latest (an error when none is trained); ``vN``; or a folder. Each loads once."""
        from ragtune.generate.reader import reader_store

        chosen = "latest" if spec is True else self._choose(spec, self.settings.generation.reader)
        if chosen is None:
            return None
        store = reader_store(self.settings.data_dir)
        if chosen == "auto":
            if not store.versions():
                return None
            chosen = "latest"
        if chosen == "latest" or _VERSION.match(chosen):
            folder = store.get(None if chosen == "latest" else int(chosen[1:])).path
        else:
            folder = Path(chosen).expanduser()
        if folder not in self._readers:
            self._readers[folder] = Reader(folder)
        return self._readers[folder]

    @staticmethod
    def _choose(spec: str | bool | None, configured: str) -> str | None:
        """The spec a part is resolved from (None: no part), by the rule ``reranker`` and
        ``answerability_model`` share."""
        if spec is None:
            spec = configured
        elif spec is True:
            spec = configured if configured.strip().lower() not in _NONE else "latest"
        elif spec is False:
            return None
        chosen = spec.strip()
        return None if chosen.lower() in _NONE else chosen

    # -- answers -------------------------------------------------------------------------------
    def generator(self, spec: str | None = None) -> Generator | None:
        """The generator named by ``spec`` (default: the ``generator`` setting), built once and
        reused; None for ``extractive`` and ``reader``, which need no generation model."""
        spec = self.generator_spec(spec)
        if spec in (EXTRACTIVE, READER_GENERATOR):
            return None
        if spec not in self._generators:
            from ragtune.generate.registry import make_generator

            self._generators[spec] = make_generator(spec, self.settings, self.plugins)
        return self._generators[spec]

    def generator_spec(self, spec: str | None = None) -> str:
        """The generator ``spec`` names (default: the ``generator`` setting). ``auto``, the default,
        is the measured best on a CPU (README: reader vs extractive vs SmolLM2): the project's trained
        reader when it has one, else ``extractive``."""
        chosen = (spec or self.settings.generation.generator).strip()
        if chosen == AUTO:
            return READER_GENERATOR if self.reader_model() is not None else EXTRACTIVE
        return chosen

    @cached_property
    def support_scorer(self) -> SupportScorer:
        return SupportScorer(self.embedder, self.analyzer)

    def ask(self, question: str, *, collection: str | None = None, top_k: int | None = None,
            mode: str | None = None, filters: Sequence[Filter | str] | dict[str, Any] | None = None,
            principal: Principal | None = None, generator: str | Generator | None = None,
            on_token: Callable[[str], None] | None = None, max_tokens: int | None = None,
            query_vector: np.ndarray | None = None, reranker: Reranker | str | bool | None = None,
            answerability: AnswerabilityModel | str | bool | None = None,
            reader: Reader | str | bool | None = None, history: History | None = None,
            **search_options: Any) -> Answer:
        """Retrieve, then answer with numbered citations, or abstain when the documents do not answer.

        ``generator`` is a spec (``smollm2``, ``extractive``, ``openai:MODEL``, ``registry:NAME@alias``,
        a model folder) or any object with the ``Generator`` protocol; ``on_token`` receives the
        answer as it streams. ``reranker`` reorders the sources (see ``reranker()``);
        ``answerability`` adds a trained model's abstention decision (see ``answerability_model()``);
        both default to their settings. ``history``, the conversation so far, is what retrieval
        reads a follow-up by (see ``search()``); the answer is to ``question`` as asked.
        """
        s = self.settings
        g = s.generation
        options = AskOptions(top_k=top_k or g.answer_top_k, max_tokens=max_tokens or g.max_new_tokens,
                             context_tokens=g.context_tokens, abstain_threshold=g.abstain_threshold,
                             support_threshold=g.support_threshold)
        # The reader is resolved once per ask (its store is listed once): it decides "auto" and abstention.
        reads = (self.reader_model(reader) if reader is None or isinstance(reader, (str, bool)) else reader)
        read_answers = False
        spec: str | None = None  # a Generator object given as such: its name stands for the spec
        if generator is None or isinstance(generator, str):
            spec = (generator or g.generator).strip()
            if spec == AUTO:
                spec = READER_GENERATOR if reads is not None else EXTRACTIVE
            read_answers = spec == READER_GENERATOR
            if read_answers and reads is None and reader is None:
                reads = self.reader_model(True)  # -g reader asks for the latest even when the setting is off
            model = self.generator(spec)
        else:
            model = generator
        if read_answers and reads is None:
            raise ConfigError("the reader generator needs a trained reader: train one with `ragtune reader train`, "
                              "or choose another generator")
        judge = (self.answerability_model(answerability)
                 if answerability is None or isinstance(answerability, (str, bool)) else answerability)
        principal = principal or _OPERATOR
        name = collection or s.default_collection
        policy = self.policies.for_principal(self.collection(name), principal)
        if policy.version or policy.key_version:
            check_generator(policy, name, spec or (model.name if model is not None else EXTRACTIVE))
            topic = policy.answers.blocked(question)
            if topic is not None:
                return self._blocked(question, topic, policy, principal, name)
            if policy.answers.max_sources:
                options = dataclasses.replace(options, top_k=min(options.top_k, policy.answers.max_sources))
        answerer = Answerer(model, self.support_scorer, self.tracing, judge, reader=reads, read_answers=read_answers,
                            reader_hint=g.reader_hint, spec=spec)
        answerer.system_prompt()  # a model trained on another prompt format is refused before the search
        # one trace per ask: the retrieval, each stage and the generation are its child spans
        decisions: dict[str, Any] = {}
        with self.tracing.span("ask", {"ragtune.kind": "ask", "gen_ai.operation.name": "chat",
                                       "gen_ai.request.max_tokens": options.max_tokens}) as span:
            timer = StageTimer()  # "retrieve" times the search, whose own span is its trace's
            with timer.stage("retrieve"):
                # with a history the search is by the conversation; the answer is to the question itself
                retrieved = self._search(check_question(question), collection=name, top_k=options.top_k,
                                         mode=mode, filters=filters, principal=principal, query_vector=query_vector,
                                         reranker=reranker, history=history, **search_options)
            answer = answerer.answer(question, retrieved, options, principal=principal, collection=name,
                                     on_token=held_tokens(policy, on_token), timer=timer)
            if policy.version or policy.key_version:
                streamed = answer.text
                answer, decisions = apply_answer_policy(answer, policy)
                stash(span, {"ragtune.policy": decisions})
                if on_token is not None and policy.pii.watched:
                    on_token(answer.text)  # held back while it was screened: it leaves whole
                elif on_token is not None and answer.text.startswith(streamed) and answer.text != streamed:
                    on_token(answer.text[len(streamed):])  # a warning or disclaimer, after what streamed
        if self.settings.governance.audit:  # what the answer was made from: the chunks its prompt showed
            self.audit.record(AuditEvent("ask", principal, name, _shown(answer.hits), {
                **_asked(question, answer.trace_id, mode=retrieved.mode), "model": answer.model,
                "cited": sorted({c.chunk_id for c in answer.citations}),
                "abstained": answer.abstained, **({"policy": decisions} if decisions else {})}), read=True)
        return answer

    def _blocked(self, question: str, topic: BlockedTopic, policy: Policy, principal: Principal,
                 name: str) -> Answer:
        """A question on a topic the collection's policy blocks: refused with its reason, traced and
        audited like any answer."""
        answer, decisions = blocked_answer(question, topic, policy)
        with self.tracing.span("ask", {"ragtune.kind": "ask", "gen_ai.operation.name": "chat",
                                       "ragtune.policy": decisions}) as span:
            trace_id = record(span, TraceRecord(
                kind="ask", principal=principal, collection=name, query=question, results=[], timings_ms={},
                params={"model": answer.model, "response": answer.text, "abstained": True, "grounded": False,
                        "decided_by": answer.decided_by}))
        answer = dataclasses.replace(answer, trace_id=trace_id)
        if self.settings.governance.audit:
            self.audit.record(AuditEvent("ask", principal, name, [], {
                **_asked(question, answer.trace_id, mode="none"), "model": answer.model, "abstained": True,
                "policy": decisions}), read=True)
        return answer

    def warm_up(self) -> None:
        """Load the slow parts now (the embedder, and the generators built so far, when they declare a
        warm-up), so the first request is not the one that waits; the server calls this before it
        listens. Generators are not built here: a ``registry:`` one may not be registered yet."""
        queries = self.query_embedder
        for part in (self.embedder, *([queries] if queries is not self.embedder else []), *self._generators.values()):
            if isinstance(part, WarmsUp):
                part.warm_up()

    def close(self) -> None:
        if "tracing" in self.__dict__:  # what is queued is written before the database closes
            self.tracing.close()
        if self._database is not None:
            self._database.close()

    def __enter__(self) -> Ragtune:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _file_of(uri: str) -> str:
    """The file a document's URI comes from: without its record (``#``) or member (``!/``) part."""
    return uri.split("#", 1)[0].split("!/", 1)[0]


def open(target: str | Path | None = None, *, embedder: Embedder | None = None, **settings: Any) -> Ragtune:
    """Open a ragtune project: a data folder path (embedded PostgreSQL) or a ``postgresql://`` URL."""
    if target is not None and str(target).startswith(("postgresql://", "postgres://")):
        settings["database_url"] = str(target)
    elif target is not None:
        settings["data_dir"] = Path(target)
    return Ragtune(Settings.load(**settings), embedder=embedder)


def _counted_files(files: Sequence[Path], progress: Progress | None) -> Iterator[Path]:
    """``files`` in order, with a "files" event as each is started (done: the files read before it)
    and one when all are read; the loader pulls them as the pipeline asks for documents."""
    for done, path in enumerate(files):
        emit(progress, "files", done, len(files), detail=path.name)
        yield path
    emit(progress, "files", len(files), len(files))


def _shown(hits: Sequence[Hit]) -> list[dict[str, Any]]:
    """The documents of ``hits`` as an audit event lists them, each with the chunks shown (a chunk
    id names the version: a document written again gets new chunks)."""
    documents: dict[int, dict[str, Any]] = {}
    for hit in hits:
        documents.setdefault(hit.document_id, {"id": hit.document_id, "uri": hit.uri, "chunks": []})["chunks"].append(
            hit.chunk.id)
    return list(documents.values())


def _asked(query: str, trace_id: str | None, *, mode: str) -> dict[str, Any]:
    """What an audit event says of a query: its hash, not its text (the log is never rewritten, so
    it holds no text an erasure would have to reach; the trace, erasable, has the text)."""
    return {"query_sha256": content_hash(query), "trace_id": trace_id, "mode": mode}
