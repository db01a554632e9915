"""The one exception tree of ragtune.

Library code raises these; only ``cli/`` turns them into messages and exit codes and only
``server/`` into HTTP problem responses. Every error carries the offending input.

    RagtuneError
    ├── ConfigError              bad settings value, bad ragtune.toml, unknown model name
    │   └── PolicyError              a policy file with problems (carries each, with its line)
    ├── IngestError              one input could not be ingested (carries ``source``)
    │   ├── UnsupportedFormatError   no loader for this file type, or a binary file
    │   ├── DecodeError              text whose encoding cannot be determined
    │   ├── CorruptFileError         a file its loader cannot parse (broken PDF, DOCX ...)
    │   ├── FileTooLargeError        over ``max_file_bytes``
    │   ├── ExpansionLimitError      a container (DOCX zip, PDF streams) expanding past its limits (carries ``limit``)
    │   ├── ChunkLimitError          a document splitting into more than ``max_chunks_per_document`` chunks
    │   ├── EmptyDocumentError       no text at all
    │   ├── PiiRefusedError          personal data of a type its collection's policy refuses
    │   ├── AclChangeError           a write that would change an ACL unasked, or needs one given
    │   └── ReplaceDeniedError       a write the writer may not make to a stored document
    ├── StoreError               the database cannot be reached, started or migrated
    │   ├── MigrationError
    │   ├── DatabaseUnavailableError the database is down, restarting or saturated (carries ``retry_after``)
    │   └── QueryTimeoutError        a statement stopped by ``statement_timeout``
    ├── NotFoundError            a collection, document, chunk or dataset that does not exist
    ├── EmbedderMismatchError    querying a collection with another embedder than it was built with
    ├── ModelError               a model that cannot be found or loaded (or a bad adapter)
    ├── GenerationError          a generator endpoint that fails or cannot be reached
    │   └── GenerationTimeoutError   no complete answer within the configured timeout
    ├── QueryError               an invalid query, filter or top_k
    │   └── LimitError               over a configured limit (top_k, inputs, files; carries ``limit``)
    │       └── RequestTooLargeError     a request body over the server's size limit
    ├── AccessError              a request the server refuses because of who is asking
    │   ├── AuthenticationError      no API key, or an unknown, wrong or revoked one
    │   ├── PermissionDeniedError    a valid key without the scope or group the action needs
    │   └── RateLimitError           too many requests for one key (carries ``retry_after``)
    │       └── JobLimitError            too many unfinished ingest jobs for one key (carries ``limit``)
    ├── TrainingError            a training run that failed (carries ``run_dir``; its status says failed)
    │   └── RunBusyError             another process is training in that run folder
    ├── RegistryError            a model registry operation refused (failed run, no earlier production version)
    │   └── PromotionRefusedError    a candidate worse than production on a promotion gate (carries the failures)
    └── DatasetError             a dataset that cannot be fetched, parsed or stored
        └── DatasetValidationError   training on a dataset whose validation failed (carries the reasons)
"""

from __future__ import annotations


class RagtuneError(Exception):
    """Base of every error ragtune raises on purpose."""

    code = "ragtune_error"


class ConfigError(RagtuneError):
    code = "config_error"


class PolicyError(ConfigError):
    """A policy (``govern.policy``) that cannot be used: every problem, each with its line."""

    code = "invalid_policy"

    def __init__(self, name: str, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.name = name
        self.problems = problems


class IngestError(RagtuneError):
    """One input failed; ``source`` names it so a batch can report it and go on."""

    code = "ingest_error"

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class UnsupportedFormatError(IngestError):
    code = "unsupported_format"


class DecodeError(IngestError):
    code = "decode_error"


class CorruptFileError(IngestError):
    code = "corrupt_file"


class FileTooLargeError(IngestError):
    code = "file_too_large"


class EmptyDocumentError(IngestError):
    code = "empty_document"


class ExpansionLimitError(IngestError):
    """A compressed container that would expand past a limit; refused before it is expanded (a zip's
    declared sizes) or as soon as the limit is passed (PDF streams). ``limit`` names the setting."""

    code = "expansion_limit"

    def __init__(self, source: str, reason: str, limit: str = "max_expanded_bytes") -> None:
        # ``limit`` has a default so that ``type(err)(source, reason)`` (renaming a source) still works
        super().__init__(source, reason)
        self.limit = limit


class ChunkLimitError(IngestError):
    """A document that splits into more chunks than ``max_chunks_per_document``; refused before any is embedded."""

    code = "chunk_limit"

    def __init__(self, source: str, reason: str, limit: str = "max_chunks_per_document") -> None:
        super().__init__(source, reason)
        self.limit = limit


class PiiRefusedError(IngestError):
    """A document holding personal data of a type its collection's policy refuses (``refuse``)."""

    code = "pii_refused"


class AclChangeError(IngestError):
    """Re-ingesting ``source`` would change its stored ACL, which needs ``change_acl``; or ``source``
    is new and its ACL cannot be inherited, so it must be given."""

    code = "acl_change"


class ReplaceDeniedError(IngestError):
    """The writer may not replace ``source``; the reason never says whether a hidden document exists."""

    code = "replace_denied"


class StoreError(RagtuneError):
    code = "store_error"


class MigrationError(StoreError):
    code = "migration_error"


class DatabaseUnavailableError(StoreError):
    """The database cannot serve right now: the server is gone, recovering or starting, or every
    pooled connection stayed busy. ``retry_after`` is a hint in seconds; when the embedded server
    failed to start, ``log_file`` names its log and ``log_tail`` holds the end of it (kept out of
    the message, which stays one line)."""

    code = "database_unavailable"

    def __init__(self, message: str, *, retry_after: float = 2.0, log_file: str | None = None,
                 log_tail: str = "") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.log_file = log_file
        self.log_tail = log_tail


class QueryTimeoutError(StoreError):
    """PostgreSQL stopped a statement that ran longer than ``statement_timeout`` (``timeout``, seconds)."""

    code = "query_timeout"

    def __init__(self, message: str, timeout: float | None = None) -> None:
        super().__init__(message)
        self.timeout = timeout


class NotFoundError(RagtuneError):
    code = "not_found"


class EmbedderMismatchError(RagtuneError):
    code = "embedder_mismatch"


class ModelError(RagtuneError):
    code = "model_error"


class PromptFormatError(ConfigError):
    """A tuned model asked to answer in a prompt format it was not trained on (``generate.prompt``)."""

    code = "prompt_format_mismatch"


class GenerationError(RagtuneError):
    code = "generation_error"


class GenerationTimeoutError(GenerationError):
    code = "generation_timeout"


class QueryError(RagtuneError):
    code = "query_error"


class LimitError(QueryError):
    """A request over a configured limit; ``limit`` names the setting that sets it."""

    code = "limit_exceeded"

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


class RequestTooLargeError(LimitError):
    code = "request_too_large"


class AccessError(RagtuneError):
    code = "access_denied"


class AuthenticationError(AccessError):
    code = "unauthenticated"


class PermissionDeniedError(AccessError):
    code = "forbidden"


class RateLimitError(AccessError):
    code = "rate_limited"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class JobLimitError(RateLimitError):
    """A key already has as many unfinished (queued or running) ingest jobs as ``limit`` allows."""

    code = "too_many_jobs"

    def __init__(self, message: str, retry_after: float, limit: str = "max_jobs_per_key") -> None:
        super().__init__(message, retry_after)
        self.limit = limit


class TrainingError(RagtuneError):
    """A training run that failed or cannot proceed; ``run_dir`` holds what it wrote."""

    code = "training_failed"

    def __init__(self, run_dir: object, reason: str) -> None:
        super().__init__(f"training run {run_dir}: {reason}")
        self.run_dir = run_dir
        self.reason = reason


class RunBusyError(TrainingError):
    code = "run_busy"


class RegistryError(RagtuneError):
    code = "registry_error"


class PromotionRefusedError(RegistryError):
    """A candidate that failed a promotion gate (worse than production, outside a bound, or not
    measured); ``failures`` describes each failed gate."""

    code = "promotion_refused"

    def __init__(self, name: str, version: int, failures: tuple[str, ...]) -> None:
        super().__init__(
            f"version {version} of {name!r} was refused promotion by {len(failures)} gate(s): {'; '.join(failures)}; "
            "pass --force to promote it anyway (recorded with the version)"
        )
        self.name = name
        self.version = version
        self.failures = failures


class DatasetError(RagtuneError):
    code = "dataset_error"


class DatasetValidationError(DatasetError):
    """A dataset marked invalid by its validation report, used without ``force``."""

    code = "dataset_invalid"

    def __init__(self, name: str, version: int, reasons: tuple[str, ...]) -> None:
        super().__init__(
            f"dataset {name!r} version {version} failed validation: {'; '.join(reasons)}; "
            "fix the data and import it again, or pass --force to train on it anyway"
        )
        self.name = name
        self.version = version
        self.reasons = reasons
