"""The one exception tree of ragtune.

Library code raises these; only ``cli/`` turns them into messages and exit codes and only
``server/`` into HTTP problem responses. Every error carries the offending input.

    RagtuneError
    ├── ConfigError              bad settings value, bad ragtune.toml, unknown model name
    ├── IngestError              one input could not be ingested (carries ``source``)
    │   ├── UnsupportedFormatError   no loader for this file type, or a binary file
    │   ├── DecodeError              text whose encoding cannot be determined
    │   ├── CorruptFileError         a file its loader cannot parse (broken PDF, DOCX ...)
    │   ├── FileTooLargeError        over ``max_file_bytes``
    │   └── EmptyDocumentError       no text at all
    ├── StoreError               the database cannot be reached, started or migrated
    │   └── MigrationError
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


class StoreError(RagtuneError):
    code = "store_error"


class MigrationError(StoreError):
    code = "migration_error"


class NotFoundError(RagtuneError):
    code = "not_found"


class EmbedderMismatchError(RagtuneError):
    code = "embedder_mismatch"


class ModelError(RagtuneError):
    code = "model_error"


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
    """A promotion the gates refused; ``failures`` describes each failed gate."""

    code = "promotion_refused"

    def __init__(self, name: str, version: int, failures: tuple[str, ...]) -> None:
        super().__init__(
            f"version {version} of {name!r} is worse than the production version on {len(failures)} gate(s): "
            f"{'; '.join(failures)}; pass --force to promote it anyway (recorded with the version)"
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
