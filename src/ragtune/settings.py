"""Configuration as data: defaults, overridden by ``ragtune.toml`` and then by ``RAGTUNE_*`` variables.

``Settings.load()`` reads ``ragtune.toml`` from the working directory (or the file named by
``RAGTUNE_CONFIG``); every field can also be set as ``RAGTUNE_<FIELD>`` (upper case). Unknown keys
and impossible values are refused with the key named, at load time.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.errors import ConfigError

FUSION_METHODS = ("convex", "rrf")
SEARCH_MODES = ("dense", "bm25", "hybrid")
BM25_STATISTICS = ("visible", "global")
SECRET_FIELDS = frozenset({"database_url"})


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path(".ragtune")
    # An external PostgreSQL (with pgvector) instead of the embedded server in data_dir.
    database_url: str | None = None
    # Seconds one statement on a pooled connection may run before PostgreSQL stops it (0: no limit);
    # migrations and maintenance (dropping a collection, building its HNSW index) are exempt.
    statement_timeout: float = 30.0
    # Seconds a request waits for a pooled connection, or for a lost database to come back (the
    # embedded server is restarted), before it fails with DatabaseUnavailableError (HTTP 503).
    database_wait: float = 10.0
    # Seconds starting the embedded server may take, crash recovery (WAL replay) included.
    database_start_timeout: float = 300.0
    embedder: str = "minilm"
    default_collection: str = "default"
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
    # Retrieval
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
    cache_dir: Path | None = None
    # Answers: which generator writes them (smollm2 | extractive | openai:MODEL | llamacpp:FILE.gguf |
    # a Hugging Face model folder) and an optional LoRA adapter folder served on top of it.
    generator: str = "smollm2"
    generator_adapter: Path | None = None
    # The trained answerability model every answer also abstains by: "" (none), "latest" (the
    # newest, `ragtune answerability train`), "vN", or a folder.
    answerability: str = ""
    openai_base_url: str = "https://api.openai.com/v1"
    # The API key is read from this environment variable, never from the config file.
    openai_api_key_env: str = "OPENAI_API_KEY"
    generation_timeout: float = 120.0
    generation_retries: int = 2
    max_new_tokens: int = 200
    # Prompt budget for the numbered sources, counted in the generator's own tokens.
    context_tokens: int = 1536
    answer_top_k: int = 5
    # Abstain when the best source's support for the question is below this; calibrated (README).
    abstain_threshold: float = 0.35
    # An answer sentence counts as supported by its citations at or above this score.
    support_threshold: float = 0.5
    # HTTP server (`ragtune serve`). server_auth: auto requires API keys unless bound to a loopback
    # address; on / off force it.
    server_host: str = "127.0.0.1"
    server_port: int = 8000
    server_auth: str = "auto"
    server_max_request_bytes: int = 1024 * 1024  # one JSON request body
    server_max_upload_bytes: int = 256 * 1024 * 1024  # one multipart upload; each file also <= max_file_bytes
    server_max_upload_files: int = 100
    # Unfinished (queued or running) ingest jobs one key may have; an upload over it gets 429 before
    # it is stored. With the worker picking the key whose last job started longest ago, one key's
    # burst waits behind the others' jobs instead of in front of them. 0: no limit.
    server_max_jobs_per_key: int = 4
    server_max_top_k: int = 100
    server_max_embedding_inputs: int = 256
    server_rate_limit: float = 20.0  # requests per second per API key, refilling a bucket; 0 turns it off
    server_rate_burst: int = 40
    # A key this server has not verified lately costs a scrypt (~40 ms of a core), so each client
    # address has its own bucket for those, spent before the scrypt: 2/s is 8 % of a core per address,
    # and a burst of 20 lets a gateway with 20 keys restart. 0 turns it off.
    server_auth_rate_limit: float = 2.0
    server_auth_burst: int = 20
    # scrypts running at once (one per core here); a request that waits server_verification_wait
    # seconds for a slot gets 429 instead of queueing, so a flood cannot pile up work or threads.
    server_max_concurrent_verifications: int = 2
    server_verification_wait: float = 0.5
    # A verified key skips the scrypt this long (its row is still read on every request, so a
    # revocation counts at once); 0 verifies every request.
    server_key_cache_seconds: float = 300.0
    # A 429 to a caller without a valid key is answered no sooner than this after its request began:
    # a flood from a pool of connections then sends a few requests a second, not thousands. 0: at once.
    server_auth_refusal_delay: float = 1.0
    server_cors_origins: str = ""  # comma-separated origins CORS allows ("*": any); empty: no CORS
    # Host names the server answers for (comma-separated; "*": any). Bound to loopback it always
    # accepts the loopback names and refuses others (DNS rebinding); bound elsewhere, empty = any.
    server_allowed_hosts: str = ""
    # /docs (Swagger UI, served from the swagger-ui-bundle package, never a CDN); off by default.
    server_api_docs: bool = False
    server_shutdown_timeout: float = 30.0  # seconds in-flight requests get to finish on shutdown
    # Generators a request may name besides the configured one and "extractive" (comma-separated
    # specs, e.g. "registry:support@production"): each is loaded on first use and kept.
    server_generators: str = ""
    # Model registry: metric -> "higher" | "lower" (":TOLERANCE" or a table); see finetune/gates.py.
    promotion_gates: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_GATES), hash=False)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        checks: list[tuple[str, bool]] = [
            ("chunker", bool(self.chunker.strip())),
            ("chunk_max_tokens", self.chunk_max_tokens > 0),
            ("chunk_overlap_tokens", 0 <= self.chunk_overlap_tokens < self.chunk_max_tokens),
            ("max_file_bytes", self.max_file_bytes > 0),
            ("max_expanded_bytes", self.max_expanded_bytes > 0),
            ("max_expansion_ratio", self.max_expansion_ratio >= 1),
            ("max_container_members", self.max_container_members > 0),
            ("max_chunks_per_document", self.max_chunks_per_document >= 0),
            ("embed_batch_size", self.embed_batch_size > 0),
            ("statement_timeout", 0 <= self.statement_timeout <= 86400),
            ("database_wait", 0 < self.database_wait <= 3600),
            ("database_start_timeout", 0 < self.database_start_timeout <= 86400),
            ("default_mode", self.default_mode in SEARCH_MODES),
            ("fusion", self.fusion in FUSION_METHODS),
            ("hybrid_normalization", self.hybrid_normalization in ("zscore", "minmax")),
            ("hybrid_dense_weight", 0.0 <= self.hybrid_dense_weight <= 1.0),
            ("rrf_k", self.rrf_k > 0),
            ("candidates", self.candidates > 0),
            ("bm25_k1", self.bm25_k1 >= 0),
            ("bm25_b", 0.0 <= self.bm25_b <= 1.0),
            ("bm25_statistics", self.bm25_statistics in BM25_STATISTICS),
            ("hnsw_m", 2 <= self.hnsw_m <= 100),
            ("hnsw_ef_construction", self.hnsw_ef_construction >= 2 * self.hnsw_m),
            ("hnsw_ef_search", 1 <= self.hnsw_ef_search <= 1000),
            ("hybrid_ef_search", 1 <= self.hybrid_ef_search <= 1000),
            ("exact_scan_threshold", self.exact_scan_threshold >= 0),
            ("max_filters", 1 <= self.max_filters <= 10_000),
            ("max_filter_values", self.max_filters <= self.max_filter_values <= 100_000),
            ("generator", bool(self.generator.strip())),
            ("generation_timeout", self.generation_timeout > 0),
            ("generation_retries", 0 <= self.generation_retries <= 10),
            ("max_new_tokens", 1 <= self.max_new_tokens <= 32768),
            ("context_tokens", self.context_tokens >= 64),
            ("answer_top_k", 1 <= self.answer_top_k <= 100),
            ("abstain_threshold", -1.0 <= self.abstain_threshold <= 1.0),
            ("support_threshold", 0.0 <= self.support_threshold <= 1.0),
            ("server_port", 0 <= self.server_port <= 65535),
            ("server_auth", self.server_auth in ("auto", "on", "off")),
            ("server_max_request_bytes", self.server_max_request_bytes >= 1024),
            ("server_max_upload_bytes", self.server_max_upload_bytes >= 1024),
            ("server_max_upload_files", self.server_max_upload_files >= 1),
            ("server_max_jobs_per_key", self.server_max_jobs_per_key >= 0),
            ("server_max_top_k", 1 <= self.server_max_top_k <= 1000),
            ("server_max_embedding_inputs", self.server_max_embedding_inputs >= 1),
            ("server_rate_limit", self.server_rate_limit >= 0),
            ("server_rate_burst", self.server_rate_burst >= 1),
            ("server_auth_rate_limit", self.server_auth_rate_limit >= 0),
            ("server_auth_burst", self.server_auth_burst >= 1),
            ("server_max_concurrent_verifications", 1 <= self.server_max_concurrent_verifications <= 256),
            ("server_verification_wait", 0 <= self.server_verification_wait <= 60),
            ("server_key_cache_seconds", self.server_key_cache_seconds >= 0),
            ("server_auth_refusal_delay", 0 <= self.server_auth_refusal_delay <= 60),
            ("server_shutdown_timeout", self.server_shutdown_timeout >= 0),
        ]
        for name, ok in checks:
            if not ok:
                raise ConfigError(f"invalid setting {name}={getattr(self, name)!r}")
        parse_gates(self.promotion_gates)  # raises naming the bad gate

    @property
    def resolved_cache_dir(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        env = os.environ.get("RAGTUNE_CACHE_DIR")
        if env:
            return Path(env)
        import platformdirs

        return Path(platformdirs.user_cache_dir("ragtune"))

    def replace(self, **changes: Any) -> Settings:
        return _coerce(dataclasses.replace, self, changes)

    def public_dict(self) -> dict[str, Any]:
        """Everything but secrets, for ``ragtune config show``."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name in SECRET_FIELDS and value:
                value = _redact_url(str(value))
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> Settings:
        values: dict[str, Any] = {}
        path = config_file or (Path(os.environ["RAGTUNE_CONFIG"]) if "RAGTUNE_CONFIG" in os.environ else None)
        if path is None and Path("ragtune.toml").is_file():
            path = Path("ragtune.toml")
        if path is not None:
            raw = read_toml(path)
            values.update(raw.get("ragtune", raw))
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        for name in names:
            env = os.environ.get(f"RAGTUNE_{name.upper()}")
            if env is not None and env != "":
                values[name] = env
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}{f' in {path}' if path else ''}")
        return _coerce(lambda base, kw: cls(**kw), None, values)


# -- promotion gates: the format of the promotion_gates setting (finetune/gates.py applies them) --
DEFAULT_GATES: dict[str, Any] = {
    "eval.loss": "lower",
    "eval.token_f1": "higher",
    "eval.rouge_l": "higher",
    "eval.json_valid": "higher",
    "eval.schema_valid": "higher",
    "eval.tool_name_accuracy": "higher",
    "eval.tool_args_accuracy": "higher",
}


@dataclass(frozen=True)
class Gate:
    metric: str
    higher_is_better: bool
    tolerance: float = 0.0

    def passes(self, candidate: float, production: float) -> bool:
        if self.higher_is_better:
            return candidate >= production - self.tolerance
        return candidate <= production + self.tolerance


def parse_gates(value: Mapping[str, Any] | str | None) -> tuple[Gate, ...]:
    """Gates from the setting's value; a bad entry raises ``ConfigError`` naming it."""
    if value is None:
        return ()
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as exc:
            raise ConfigError(f"invalid setting promotion_gates={value!r}: not a JSON object ({exc.msg})") from None
    if not isinstance(value, Mapping):
        raise ConfigError(f"invalid setting promotion_gates={value!r}: expected a table of metric = direction")
    gates = []
    for metric, spec in value.items():
        where = f"promotion_gates.{metric}"
        tolerance: Any
        if isinstance(spec, str):
            better, _, tolerance = spec.partition(":")
            tolerance = tolerance or 0.0
        elif isinstance(spec, Mapping):
            unknown = sorted(set(spec) - {"better", "tolerance"})
            if unknown:
                raise ConfigError(f"invalid setting {where}: unknown key(s) {', '.join(unknown)}")
            better, tolerance = str(spec.get("better", "")), spec.get("tolerance", 0.0)
        else:
            raise ConfigError(f"invalid setting {where}={spec!r}: expected 'higher', 'lower' or a table")
        if better.strip() not in ("higher", "lower"):
            raise ConfigError(f"invalid setting {where}={spec!r}: better must be 'higher' or 'lower'")
        try:
            tol = float(str(tolerance).strip())
        except (TypeError, ValueError):
            raise ConfigError(f"invalid setting {where}={spec!r}: tolerance must be a number") from None
        if not (math.isfinite(tol) and tol >= 0):
            raise ConfigError(f"invalid setting {where}={spec!r}: tolerance must be >= 0")
        if not str(metric).strip():
            raise ConfigError("invalid setting promotion_gates: empty metric name")
        gates.append(Gate(str(metric), better.strip() == "higher", tol))
    return tuple(gates)


def read_toml(path: str | Path, *, what: str = "config file") -> dict[str, Any]:
    """A TOML file as a dict; a missing file or bad TOML is a ``ConfigError`` naming the path."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def _coerce(build: Any, base: Settings | None, values: dict[str, Any]) -> Settings:
    """Convert strings from TOML/env into each field's type, naming the key on failure."""
    types = {f.name: f.type for f in dataclasses.fields(Settings)}
    converted: dict[str, Any] = {}
    for key, value in values.items():
        if key not in types:
            raise ConfigError(f"unknown setting {key}")
        kind = str(types[key])
        try:
            if "Path" in kind:
                converted[key] = None if value is None else Path(value)
            elif kind == "int":
                converted[key] = int(value)
            elif kind == "float":
                converted[key] = float(value)
            elif kind == "bool":
                converted[key] = _bool(value)
            elif kind.startswith("dict") and isinstance(value, str):  # RAGTUNE_PROMOTION_GATES='{...}'
                converted[key] = json.loads(value)
            else:
                converted[key] = value
        except (TypeError, ValueError):
            raise ConfigError(f"invalid setting {key}={value!r}: expected {kind}") from None
    return build(base, **converted) if base is not None else build(None, converted)


def _bool(value: Any) -> bool:
    """A bool from TOML, or from text as an environment variable gives it."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def _redact_url(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url
