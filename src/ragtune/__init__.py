"""ragtune: documents and examples in, a dependable AI system out.

    import ragtune
    rt = ragtune.open(".ragtune")          # or a postgresql:// URL
    rt.ingest(["docs/"], collection="handbook", acl=["hr"])
    result = rt.search("parental leave", collection="handbook", principal=ragtune.Principal("ann", frozenset({"hr"})))

The names below are the public API (a test keeps the list as it is). They load on first use, so
``import ragtune`` (and ``ragtune --help``) does not pay for the engine, numpy and psycopg.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_ERRORS = (
    "RagtuneError", "ConfigError", "PolicyError", "IngestError", "UnsupportedFormatError", "DecodeError",
    "CorruptFileError", "FileTooLargeError", "EmptyDocumentError", "ExpansionLimitError", "ChunkLimitError",
    "PiiRefusedError", "AclChangeError",
    "ReplaceDeniedError", "StoreError", "MigrationError", "DatabaseUnavailableError", "QueryTimeoutError",
    "NotFoundError", "EmbedderMismatchError", "ModelError", "PromptFormatError", "GenerationError",
    "GenerationTimeoutError", "QueryError", "LimitError", "RequestTooLargeError", "AccessError", "AuthenticationError",
    "PermissionDeniedError", "RateLimitError", "JobLimitError", "TrainingError", "RunBusyError", "RegistryError",
    "PromotionRefusedError", "DatasetError", "DatasetValidationError",
)
# public name -> the module that defines it
_HOMES: dict[str, str] = {
    "open": "ragtune.engine", "Ragtune": "ragtune.engine",
    "Settings": "ragtune.settings",
    "Answer": "ragtune.models", "AnswerSentence": "ragtune.models", "Chunk": "ragtune.models",
    "Citation": "ragtune.models", "Document": "ragtune.models", "Hit": "ragtune.models",
    "IngestReport": "ragtune.models", "LoadedDocument": "ragtune.models", "Principal": "ragtune.models",
    "SearchResult": "ragtune.models", "ProgressEvent": "ragtune.models",
    "Filter": "ragtune.retrieve.filters",
    "Plugins": "ragtune.plugins", "Registry": "ragtune.plugins",
    "Chunker": "ragtune.protocols", "Embedder": "ragtune.protocols", "Generator": "ragtune.protocols",
    "Loader": "ragtune.protocols", "Reranker": "ragtune.protocols", "Progress": "ragtune.protocols",
    **{name: "ragtune.errors" for name in _ERRORS},
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'ragtune' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # found once, then a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:  # what the names are, for type checkers and editors (ruff cannot see __all__ use them)
    # ruff: noqa: F401
    from ragtune.engine import Ragtune, open
    from ragtune.errors import (
        AccessError,
        AclChangeError,
        AuthenticationError,
        ChunkLimitError,
        ConfigError,
        CorruptFileError,
        DatabaseUnavailableError,
        DatasetError,
        DatasetValidationError,
        DecodeError,
        EmbedderMismatchError,
        EmptyDocumentError,
        ExpansionLimitError,
        FileTooLargeError,
        GenerationError,
        GenerationTimeoutError,
        IngestError,
        JobLimitError,
        LimitError,
        MigrationError,
        ModelError,
        NotFoundError,
        PermissionDeniedError,
        PromotionRefusedError,
        PromptFormatError,
        QueryError,
        QueryTimeoutError,
        RagtuneError,
        RateLimitError,
        RegistryError,
        ReplaceDeniedError,
        RequestTooLargeError,
        RunBusyError,
        StoreError,
        TrainingError,
        UnsupportedFormatError,
    )
    from ragtune.models import (
        Answer,
        AnswerSentence,
        Chunk,
        Citation,
        Document,
        Hit,
        IngestReport,
        LoadedDocument,
        Principal,
        ProgressEvent,
        SearchResult,
    )
    from ragtune.plugins import Plugins, Registry
    from ragtune.protocols import Chunker, Embedder, Generator, Loader, Progress, Reranker
    from ragtune.retrieve.filters import Filter
    from ragtune.settings import Settings
