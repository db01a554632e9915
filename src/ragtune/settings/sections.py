"""The sections of the settings, one per layer that reads them: ``[store]``, ``[ingest]``,
``[retrieval]``, ``[generation]``, ``[server]``, ``[training]``, ``[observability]``.

Each is a frozen dataclass that checks its own fields on construction: a value from TOML or the
environment (text) is converted to the field's type first, then the field's rule is applied, and a
bad value raises ``ConfigError`` naming ``section.field`` and the value. A field is named without
its section's prefix (``[server] port``, not ``server_port``); names are unique across sections, so
a keyword override may name a field alone (``Settings.load(candidates=50)``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ragtune.errors import ConfigError
from ragtune.settings.gates import DEFAULT_GATES, parse_gates

FUSION_METHODS = ("convex", "rrf")
SEARCH_MODES = ("dense", "bm25", "hybrid")
BM25_STATISTICS = ("visible", "global")
QUERY_EMBEDDERS = ("auto", "int8", "embedder")
CONVERSATION_METHODS = ("last", "concat", "rewrite", "rewrite+concat")

Rule = tuple[str, bool, str]  # field, whether its value is acceptable, what it must be


@dataclass(frozen=True)
class StoreSettings:
    """PostgreSQL: how long statements, waits and the embedded server's start may take."""

    section: ClassVar[str] = "store"
    # Seconds one statement on a pooled connection may run before PostgreSQL stops it (0: no limit);
    # migrations and maintenance (dropping a collection, building its HNSW index) are exempt.
    statement_timeout: float = 30.0
    # Seconds a request waits for a pooled connection, or for a lost database to come back (the
    # embedded server is restarted), before it fails with DatabaseUnavailableError (HTTP 503).
    database_wait: float = 10.0
    # Seconds starting the embedded server may take, crash recovery (WAL replay) included.
    database_start_timeout: float = 300.0

    def __post_init__(self) -> None:
        typed(self)
        check(self, [
            ("statement_timeout", 0 <= self.statement_timeout <= 86400, "between 0 and 86400 seconds"),
            ("database_wait", 0 < self.database_wait <= 3600, "over 0 and at most 3600 seconds"),
            ("database_start_timeout", 0 < self.database_start_timeout <= 86400, "over 0 and at most 86400 seconds"),
        ])


@dataclass(frozen=True)
class IngestSettings:
    """Loading, chunking and embedding documents."""

    section: ClassVar[str] = "ingest"
    embedder: str = "minilm"
    chunker: str = "structured"  # a registered chunker (ragtune.plugins): structured | whole | a plugin's
    chunk_max_tokens: int = 256
    chunk_overlap_tokens: int = 32
    max_file_bytes: int = 25 * 1024 * 1024
    # What a compressed file (a DOCX's zip, a PDF's streams) may expand to, checked before parsing
    # (ingest/loaders/containers.py). 64 MiB: our DOCX loader parses 6-10 MB of XML a second, so at
    # most ~7-11 s of parsing; a 1,000-page Word book is ~10-15 MiB of XML, a photo-heavy DOCX
    # expands to about its file size (<= max_file_bytes).
    max_expanded_bytes: int = 64 * 1024 * 1024
    # Expanded / compressed size of one zip member or PDF stream over 4 MiB. Text-heavy parts
    # compress 3-30x; the bombs we built from repeated paragraphs 106-213x (issue 14's: 229x).
    max_expansion_ratio: float = 100.0
    max_container_members: int = 10_000  # entries of a zip; a DOCX has ~20, one with many images a few hundred
    # Chunks one document may split into, refused before any is embedded: 1.6x what a 25 MiB
    # (max_file_bytes) English text makes (31k chunks of 256 tokens); dense text (logs, CSV of
    # numbers: 2,400-3,200 chunks a MiB) over ~16-21 MiB needs it raised. 50k chunks take
    # 7 min to an hour of embedding on 2 cores. 0: no limit.
    max_chunks_per_document: int = 50_000
    embed_batch_size: int = 64
    # Leave page chrome out of documents: HTML navigation, PDF running heads and page numbers,
    # table-of-contents lines. Measured on Debian's manuals: benchmarks/boilerplate.py, README.
    strip_boilerplate: bool = True
    # A document whose text nearly equals one already in the collection (MinHash estimate of the
    # word 5-gram Jaccard similarity at or over the threshold) and that has the same ACL: "link"
    # stores it pointing at that document, without chunks (searched once), "index" indexes it too.
    near_duplicates: str = "link"
    near_duplicate_threshold: float = 0.9
    # OCR of scanned PDF pages and images (the ocr extra and tesseract; ingest/loaders/ocr.py):
    # tesseract's language(s) ("eng", "deu+eng"), the most pages of one file read by OCR (1-4.5 s
    # a page on 2 cores; 0 turns OCR off) and the most pixels of one page or image.
    ocr_lang: str = "eng"
    ocr_max_pages: int = 100
    ocr_max_pixels: int = 40_000_000

    def __post_init__(self) -> None:
        typed(self)
        check(self, [
            ("embedder", bool(self.embedder.strip()), "a registered embedder's name or a model folder"),
            ("chunker", bool(self.chunker.strip()), "a registered chunker's name"),
            ("chunk_max_tokens", self.chunk_max_tokens > 0, "over 0"),
            ("chunk_overlap_tokens", 0 <= self.chunk_overlap_tokens < self.chunk_max_tokens,
             f"at least 0 and under chunk_max_tokens ({self.chunk_max_tokens})"),
            ("max_file_bytes", self.max_file_bytes > 0, "over 0"),
            ("max_expanded_bytes", self.max_expanded_bytes > 0, "over 0"),
            ("max_expansion_ratio", self.max_expansion_ratio >= 1, "at least 1"),
            ("max_container_members", self.max_container_members > 0, "over 0"),
            ("max_chunks_per_document", self.max_chunks_per_document >= 0, "at least 0 (0: no limit)"),
            ("embed_batch_size", self.embed_batch_size > 0, "over 0"),
            ("near_duplicates", self.near_duplicates in ("link", "index"), "'link' or 'index'"),
            ("near_duplicate_threshold", 0.5 <= self.near_duplicate_threshold <= 1.0, "between 0.5 and 1"),
            ("ocr_max_pages", self.ocr_max_pages >= 0, "at least 0 (0: no OCR)"),
            ("ocr_max_pixels", self.ocr_max_pixels > 0, "over 0"),
        ])


@dataclass(frozen=True)
class RetrievalSettings:
    """Dense, BM25 and hybrid search, their index, filters and the reranker."""

    section: ClassVar[str] = "retrieval"
    default_mode: str = "hybrid"
    fusion: str = "convex"
    # How convex fusion puts dense and BM25 scores on one scale; chosen by measurement (README).
    hybrid_normalization: str = "zscore"
    # Weight of the dense score in convex fusion; chosen by measurement (see README).
    hybrid_dense_weight: float = 0.5
    rrf_k: int = 60
    candidates: int = 100
    bm25_k1: float = 1.5
    bm25_b: float = 0.75
    # Which chunks BM25's N, avgdl and df count for a principal: "visible", those it can read (its
    # scores then say nothing about documents it cannot read), or "global", every chunk of the
    # collection (scores leak term statistics of hidden documents). Measured: README, security.
    bm25_statistics: str = "visible"
    hnsw_m: int = 16
    hnsw_ef_construction: int = 64
    # HNSW recall@10 against exact search on 33k HotpotQA paragraphs: ef 100 0.9905, ef 200 0.9970
    # (+1.5 ms p50), ef 400 1.0 (+10 ms); see benchmarks/hnsw_recall.py.
    hnsw_ef_search: int = 200
    # Hybrid's dense list is `candidates` long and fused with BM25: on all 7,405 HotpotQA questions
    # ef 100 gives the same nDCG@10 as 200 (0.7685) for less CPU.
    hybrid_ef_search: int = 100
    # Below this many matching chunks a filtered dense search scans exactly instead of the index.
    exact_scan_threshold: int = 5000
    # Filters per search, and values across them (an "in" list counts each): thousands cost
    # PostgreSQL minutes (retrieve/filters.py).
    max_filters: int = 32
    max_filter_values: int = 256
    # The reranker every search uses unless it names another: "" (none), "latest" (the collection's
    # newest trained one, `ragtune rerank train`), "vN", "trained:NAME[@vN]", a folder, a plugin's.
    reranker: str = ""
    # What a search embeds its query with: "int8" the int8 ONNX build of the collection's embedder
    # (ONNX Runtime, no torch: a dense/hybrid `ragtune search` starts in ~1.3-1.5 s instead of ~11 s),
    # "embedder" the embedder itself, "auto" int8 when the embedder has an int8 build (a sentence-transformers
    # model), else the embedder. On fp32 SQuAD 2.0 dev vectors, int8 queries: nDCG@10 dense +0.0006,
    # hybrid -0.0008 (benchmarks/query_int8.py). The int8 file is built once per cache (~20 s, with
    # torch) by the first search that needs it.
    query_embedder: str = "auto"
    # How a question asked with the conversation so far (ask/search `history`) is searched:
    # "last" the question alone, "concat" with the earlier user turns weighted by recency, "rewrite"
    # as the local model resolves its pronoun, "rewrite+concat" both (generate/conversation.py).
    # Measured on 532 SQuAD follow-ups (benchmarks/conversation_retrieval.py, README), hybrid R@5 / nDCG@10:
    # last 0.821 / 0.733, concat 0.972 / 0.921; on 100 of them last 0.790 / 0.696, concat 0.940 / 0.888,
    # rewrite (SmolLM2) 0.860 / 0.797, rewrite+concat 0.940 / 0.866 at ~340 ms more per question.
    conversation: str = "concat"
    conversation_turns: int = 3  # earlier user turns a follow-up is searched with
    # Weight of the user turn k turns back: conversation_decay**k (the question's is 1).
    conversation_decay: float = 0.5
    # The generator that rewrites follow-ups ("" the [generation] generator) and its token budget.
    rewrite_generator: str = ""
    rewrite_max_tokens: int = 16
    # The most messages, and characters in all, a conversation may hold (ask's `history`).
    max_history_messages: int = 200
    max_history_chars: int = 100_000

    def __post_init__(self) -> None:
        typed(self)
        check(self, [
            ("default_mode", self.default_mode in SEARCH_MODES, one_of(SEARCH_MODES)),
            ("conversation", self.conversation in CONVERSATION_METHODS, one_of(CONVERSATION_METHODS)),
            ("conversation_turns", 0 <= self.conversation_turns <= 50, "between 0 and 50"),
            ("conversation_decay", 0.0 < self.conversation_decay <= 1.0, "over 0 and at most 1"),
            ("rewrite_max_tokens", 1 <= self.rewrite_max_tokens <= 256, "between 1 and 256"),
            ("max_history_messages", 1 <= self.max_history_messages <= 10_000, "between 1 and 10000"),
            ("max_history_chars", 1 <= self.max_history_chars <= 10_000_000, "between 1 and 10000000"),
            ("query_embedder", self.query_embedder in QUERY_EMBEDDERS, one_of(QUERY_EMBEDDERS)),
            ("fusion", self.fusion in FUSION_METHODS, one_of(FUSION_METHODS)),
            ("hybrid_normalization", self.hybrid_normalization in ("zscore", "minmax"), one_of(("zscore", "minmax"))),
            ("hybrid_dense_weight", 0.0 <= self.hybrid_dense_weight <= 1.0, "between 0 and 1"),
            ("rrf_k", self.rrf_k > 0, "over 0"),
            ("candidates", self.candidates > 0, "over 0"),
            ("bm25_k1", self.bm25_k1 >= 0, "at least 0"),
            ("bm25_b", 0.0 <= self.bm25_b <= 1.0, "between 0 and 1"),
            ("bm25_statistics", self.bm25_statistics in BM25_STATISTICS, one_of(BM25_STATISTICS)),
            ("hnsw_m", 2 <= self.hnsw_m <= 100, "between 2 and 100"),
            ("hnsw_ef_construction", self.hnsw_ef_construction >= 2 * self.hnsw_m,
             f"at least twice hnsw_m ({2 * self.hnsw_m})"),
            ("hnsw_ef_search", 1 <= self.hnsw_ef_search <= 1000, "between 1 and 1000"),
            ("hybrid_ef_search", 1 <= self.hybrid_ef_search <= 1000, "between 1 and 1000"),
            ("exact_scan_threshold", self.exact_scan_threshold >= 0, "at least 0"),
            ("max_filters", 1 <= self.max_filters <= 10_000, "between 1 and 10000"),
            ("max_filter_values", self.max_filters <= self.max_filter_values <= 100_000,
             f"between max_filters ({self.max_filters}) and 100000"),
        ])


@dataclass(frozen=True)
class GenerationSettings:
    """Answers: the generator, its endpoint, the prompt budget, abstention and grounding."""

    section: ClassVar[str] = "generation"
    # Which generator writes answers (auto | reader | smollm2 | extractive | openai:MODEL |
    # llamacpp:FILE.gguf | registry:NAME[@alias] | a Hugging Face model folder) and an optional LoRA
    # adapter folder on top. "auto": the trained reader when the project has one, else extractive --
    # the best held-out F1 under 2 s a question on 2 cores (README, issue 17).
    generator: str = "auto"
    generator_adapter: Path | None = None
    # The trained answerability model every answer also abstains by: "" (none), "latest" (the
    # newest, `ragtune answerability train`), "vN", or a folder.
    answerability: str = ""
    # The trained reader (`ragtune reader train`): it answers for `-g reader` and, for every
    # generator, decides abstention by the rule calibrated with it. "auto": the latest trained one
    # when the project has one, else none (abstention by abstain_threshold); "" / "none": none;
    # "latest", "vN", or a folder.
    reader: str = "auto"
    # Show the reader's span and confidence to an LLM generator in the prompt (README: measured).
    reader_hint: bool = False
    openai_base_url: str = "https://api.openai.com/v1"
    # The API key is read from this environment variable, never from the config file.
    openai_api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 120.0  # seconds one generation may take
    retries: int = 2  # of a failed request to an HTTP generator, with backoff
    max_new_tokens: int = 200
    # Decoding guards of local (transformers) generators against loops (generate/decoding.py;
    # measured in benchmarks/generation_controls.py): a penalty on tokens already in the answer
    # (1.0: off; the prompt is not counted, so copying from the sources costs nothing), no repeated
    # n-gram of this many answer tokens (0: off), and ending the answer at a loop, cut where it began.
    # Only the loop stop is on: on SmolLM2 the other two cost F1 (README).
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    stop_loops: bool = True
    # Prompt budget for the numbered sources, counted in the generator's own tokens.
    context_tokens: int = 1536
    answer_top_k: int = 5
    # Abstain when the best source's support for the question is below this; calibrated (README).
    abstain_threshold: float = 0.35
    # An answer sentence counts as supported by its citations at or above this score.
    support_threshold: float = 0.5

    def __post_init__(self) -> None:
        typed(self)
        check(self, [
            ("generator", bool(self.generator.strip()), "a generator spec (smollm2, extractive, openai:MODEL ...)"),
            ("timeout", self.timeout > 0, "over 0 seconds"),
            ("retries", 0 <= self.retries <= 10, "between 0 and 10"),
            ("max_new_tokens", 1 <= self.max_new_tokens <= 32768, "between 1 and 32768"),
            ("repetition_penalty", 1.0 <= self.repetition_penalty <= 2.0, "between 1.0 (off) and 2.0"),
            ("no_repeat_ngram_size", self.no_repeat_ngram_size == 0 or 2 <= self.no_repeat_ngram_size <= 64,
             "0 (off) or between 2 and 64"),
            ("context_tokens", self.context_tokens >= 64, "at least 64"),
            ("answer_top_k", 1 <= self.answer_top_k <= 100, "between 1 and 100"),
            ("abstain_threshold", -1.0 <= self.abstain_threshold <= 1.0, "between -1 and 1"),
            ("support_threshold", 0.0 <= self.support_threshold <= 1.0, "between 0 and 1"),
        ])


@dataclass(frozen=True)
class ServerSettings:
    """``ragtune serve``: address, authentication, limits, CORS and hosts."""

    section: ClassVar[str] = "server"
    host: str = "127.0.0.1"
    port: int = 8000
    auth: str = "auto"  # auto requires API keys unless bound to a loopback address; on / off force it
    max_request_bytes: int = 1024 * 1024  # one JSON request body
    max_upload_bytes: int = 256 * 1024 * 1024  # one multipart upload; each file also <= [ingest] max_file_bytes
    max_upload_files: int = 100
    # Unfinished (queued or running) ingest jobs one key may have; an upload over it gets 429 before
    # it is stored. With the worker picking the key whose last job started longest ago, one key's
    # burst waits behind the others' jobs instead of in front of them. 0: no limit.
    max_jobs_per_key: int = 4
    max_top_k: int = 100
    max_embedding_inputs: int = 256
    rate_limit: float = 20.0  # requests per second per API key, refilling a bucket; 0 turns it off
    rate_burst: int = 40
    # A key this server has not verified lately costs a scrypt (~40 ms of a core), so each client
    # address has its own bucket for those, spent before the scrypt: 2/s is 8 % of a core per address,
    # and a burst of 20 lets a gateway with 20 keys restart. 0 turns it off.
    auth_rate_limit: float = 2.0
    auth_burst: int = 20
    # scrypts running at once (one per core here); a request that waits verification_wait seconds
    # for a slot gets 429 instead of queueing, so a flood cannot pile up work or threads.
    max_concurrent_verifications: int = 2
    verification_wait: float = 0.5
    # A verified key skips the scrypt this long (its row is still read on every request, so a
    # revocation counts at once); 0 verifies every request.
    key_cache_seconds: float = 300.0
    # A 429 to a caller without a valid key is answered no sooner than this after its request began:
    # a flood from a pool of connections then sends a few requests a second, not thousands. 0: at once.
    auth_refusal_delay: float = 1.0
    cors_origins: str = ""  # comma-separated origins CORS allows ("*": any); empty: no CORS
    # Host names the server answers for (comma-separated; "*": any). Bound to loopback it always
    # accepts the loopback names and refuses others (DNS rebinding); bound elsewhere, empty = any.
    allowed_hosts: str = ""
    # /docs (Swagger UI, served from the swagger-ui-bundle package, never a CDN); off by default.
    api_docs: bool = False
    shutdown_timeout: float = 30.0  # seconds in-flight requests get to finish on shutdown
    # Generators a request may name besides the configured one and "extractive" (comma-separated
    # specs, e.g. "registry:support@production"): each is loaded on first use and kept.
    generators: str = ""
    # Folders (comma-separated absolute paths) under which an admin key may schedule syncs over
    # HTTP (POST /schedules); empty: none, only s3:// and other remote sources. The CLI and Python
    # schedule any folder: their caller can read the machine anyway.
    sync_roots: str = ""

    def __post_init__(self) -> None:
        typed(self)
        check(self, [
            ("port", 0 <= self.port <= 65535, "between 0 and 65535"),
            ("auth", self.auth in ("auto", "on", "off"), one_of(("auto", "on", "off"))),
            ("max_request_bytes", self.max_request_bytes >= 1024, "at least 1024"),
            ("max_upload_bytes", self.max_upload_bytes >= 1024, "at least 1024"),
            ("max_upload_files", self.max_upload_files >= 1, "at least 1"),
            ("max_jobs_per_key", self.max_jobs_per_key >= 0, "at least 0 (0: no limit)"),
            ("max_top_k", 1 <= self.max_top_k <= 1000, "between 1 and 1000"),
            ("max_embedding_inputs", self.max_embedding_inputs >= 1, "at least 1"),
            ("rate_limit", self.rate_limit >= 0, "at least 0 (0: off)"),
            ("rate_burst", self.rate_burst >= 1, "at least 1"),
            ("auth_rate_limit", self.auth_rate_limit >= 0, "at least 0 (0: off)"),
            ("auth_burst", self.auth_burst >= 1, "at least 1"),
            ("max_concurrent_verifications", 1 <= self.max_concurrent_verifications <= 256, "between 1 and 256"),
            ("verification_wait", 0 <= self.verification_wait <= 60, "between 0 and 60 seconds"),
            ("key_cache_seconds", self.key_cache_seconds >= 0, "at least 0"),
            ("auth_refusal_delay", 0 <= self.auth_refusal_delay <= 60, "between 0 and 60 seconds"),
            ("shutdown_timeout", self.shutdown_timeout >= 0, "at least 0"),
        ])


@dataclass(frozen=True)
class TrainingSettings:
    """Fine-tuning and the model registry."""

    section: ClassVar[str] = "training"
    # metric -> "higher" | "lower" (":TOLERANCE"), a bound ">= N" (<=, >, <), both joined by ",", or a
    # table {better, tolerance, min, max}; see settings/gates.py and finetune/lifecycle/gates.py.
    promotion_gates: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_GATES), hash=False)
    # Exact Jaccard similarity of word 3-grams from which two rows of a fine-tuning dataset count as
    # near duplicates when it is imported (reported; between train and eval, or into a registered eval
    # set, it blocks training as leakage). `ragtune data import --near-duplicate-threshold` overrides
    # it; the threshold used is stored in each version's report.
    dataset_near_duplicate_threshold: float = 0.8

    def __post_init__(self) -> None:
        typed(self)
        parse_gates(self.promotion_gates)  # raises naming the bad gate
        check(self, [("dataset_near_duplicate_threshold", 0 < self.dataset_near_duplicate_threshold <= 1,
                      "over 0 and at most 1")])


@dataclass(frozen=True)
class ObservabilitySettings:
    """Spans of every step (``observe.tracing``): where they go and how long they are kept."""

    section: ClassVar[str] = "observability"
    # Record spans at all: off, nothing is traced (answers carry no trace id).
    tracing: bool = True
    # An OTLP/HTTP collector the spans also go to (``http://host:4318/v1/traces``; MLflow's server
    # takes them at ``/v1/traces``), with its headers (``{"x-mlflow-experiment-id" = "1"}``).
    otlp_endpoint: str | None = None
    otlp_headers: dict[str, Any] = field(default_factory=dict, hash=False)
    # Send the texts (questions, prompts, answers, chunk text) over OTLP too; off, only ids, scores,
    # timings and counts leave. Our own spans table keeps them, behind the traces' access rule.
    export_content: bool = False
    # Spans wait in a bounded queue per destination and are written in batches off the request path;
    # what does not fit is dropped and counted (``Tracing.stats``), never waited for.
    span_queue_size: int = 4096
    span_batch_delay_ms: int = 200
    # Days of spans kept: older days' partitions are dropped whole (``ragtune traces prune``).
    retention_days: int = 30

    def __post_init__(self) -> None:
        typed(self)
        endpoint = self.otlp_endpoint
        check(self, [
            ("otlp_endpoint", endpoint is None or endpoint.startswith(("http://", "https://")),
             "an http:// or https:// URL of an OTLP/HTTP traces endpoint"),
            ("otlp_headers", all(isinstance(k, str) and isinstance(v, str) for k, v in self.otlp_headers.items()),
             "a table of text values"),
            ("span_queue_size", 16 <= self.span_queue_size <= 1_000_000, "between 16 and 1000000"),
            ("span_batch_delay_ms", 1 <= self.span_batch_delay_ms <= 60_000, "between 1 and 60000"),
            ("retention_days", 1 <= self.retention_days <= 3650, "between 1 and 3650"),
        ])


@dataclass(frozen=True)
class GovernanceSettings:
    """The audit log (``store.audit``, ``govern.audit``) and erasure (``govern.erasure``)."""

    section: ClassVar[str] = "governance"
    # Append an event to the hash-chained audit log for every read and write of the store.
    audit: bool = True
    # A write's event is committed with the write itself. A read's (search, answer, document read)
    # is appended after it, before it returns (or the read fails), and "sync" waits for the disk
    # flush of that commit; "async" does not: PostgreSQL's WAL writer flushes it within about 0.6 s,
    # so a crash of the database server may lose the last reads' events (never a write's). Measured
    # a search: +0.61 ms sync, +0.44 ms async on a quiet machine; +1.38 / +0.75 ms on a busy one
    # (benchmarks/audit_overhead.py).
    audit_reads: str = "sync"
    # What an erasure does to fine-tuned adapter versions trained on data it removed (govern.erasure):
    # "block" refuses their promotion until a retrained version replaces them; "flag" lists them.
    erasure_models: str = "block"

    def __post_init__(self) -> None:
        typed(self)
        check(self, [("audit_reads", self.audit_reads in ("sync", "async"), '"sync" or "async"'),
                     ("erasure_models", self.erasure_models in ("block", "flag"), '"block" or "flag"')])


SECTIONS: dict[str, type[Any]] = {cls.section: cls for cls in (
    StoreSettings, IngestSettings, RetrievalSettings, GenerationSettings, ServerSettings, TrainingSettings,
    ObservabilitySettings, GovernanceSettings)}


# -- conversion and checks, shared by the sections and Settings' own fields ---------------------------
def typed(obj: Any, where: str | None = None, *, only: Iterable[str] | None = None) -> None:
    """Convert ``obj``'s fields to their declared types (TOML and environment variables give text),
    refusing a value of another type with ``section.field`` and the value named."""
    where = f"{obj.section}." if where is None else where
    for f in dataclasses.fields(obj):
        if only is not None and f.name not in only:
            continue
        value = getattr(obj, f.name)
        try:
            converted = convert(str(f.type), value)
        except (TypeError, ValueError):
            raise ConfigError(f"invalid setting {where}{f.name}={value!r}: expected {describe(str(f.type))}") from None
        if converted is not value:
            object.__setattr__(obj, f.name, converted)


def convert(kind: str, value: Any) -> Any:
    """``value`` as a field declared ``kind`` holds it; text (TOML, environment) is parsed."""
    if kind.endswith("| None"):
        return None if value is None else convert(kind.removesuffix("| None").strip(), value)
    if kind == "Path":
        if isinstance(value, Path):
            return value
        if isinstance(value, str) and value:
            return Path(value)
        raise TypeError(value)
    if kind == "str":
        if isinstance(value, str):
            return value
        raise TypeError(value)
    if kind == "bool":
        return _bool(value)
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise TypeError(value)
        return value if isinstance(value, int) else int(value.strip())
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise TypeError(value)
        number = float(value.strip()) if isinstance(value, str) else float(value)
        if not math.isfinite(number):
            raise ValueError(value)
        return value if isinstance(value, float) else number
    if kind.startswith("dict"):
        if isinstance(value, str):  # RAGTUNE_TRAINING_PROMOTION_GATES='{...}'
            value = json.loads(value)
        if not isinstance(value, Mapping):
            raise TypeError(value)
        return value if isinstance(value, dict) else dict(value)
    raise TypeError(f"no conversion for {kind}")


def check(obj: Any, rules: Iterable[Rule], where: str | None = None) -> None:
    """The first rule ``obj``'s (already ``typed``) values break raises ``ConfigError`` naming it."""
    where = f"{obj.section}." if where is None else where
    for name, ok, need in rules:
        if not ok:
            raise ConfigError(f"invalid setting {where}{name}={getattr(obj, name)!r}: must be {need}")


def describe(kind: str) -> str:
    names = {"int": "an integer", "float": "a number", "str": "text", "bool": "true or false", "Path": "a path"}
    optional = kind.endswith("| None")
    base = kind.removesuffix("| None").strip()
    text = "a table (or JSON object)" if base.startswith("dict") else names.get(base, base)
    return f"{text} or nothing" if optional else text


def one_of(choices: Iterable[str]) -> str:
    return "one of " + ", ".join(choices)


def _bool(value: Any) -> bool:
    """A bool from TOML, or from text as an environment variable gives it."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise TypeError(value)
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)
