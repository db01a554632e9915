"""ragtune's optional extras: the command that installs each, and the one way code imports a
dependency that only an extra brings.

Such a dependency is imported inside the function that needs it (``ragtune --help``, a search or a
server without training never load it), inside ``needs`` or through ``require``, so a missing one
is an error that says what needed it and the one command that installs it::

    with needs("train", "training"):
        from peft import LoraConfig, get_peft_model

``install_command`` is the only place the command is spelled (a test keeps it so, and keeps
``EXTRAS`` equal to ``[project.optional-dependencies]`` in ``pyproject.toml``).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from ragtune.errors import ConfigError, ModelError, RagtuneError

# extra -> what it brings (the dev extra is for working on ragtune, never named in an error)
EXTRAS = {
    "train": "LoRA training, dataset validation, the model registry and hyperparameter search",
    "server": "the HTTP API of ragtune serve, and its /docs",
    "ray": "distributed ingestion",
    "llamacpp": "llama.cpp generation",
    "formats": "reading PPTX and XLSX documents",
    "sync": "keeping a folder in sync as it changes (sync --watch)",
    "ocr": "reading scanned PDF pages and images (OCR; also needs Debian's tesseract-ocr)",
    "s3": "syncing documents from S3 and S3-compatible storage (sync s3://bucket/prefix)",
    "observe": "sending spans to an OpenTelemetry collector (OTLP/HTTP)",
    "governance": "PII policies (Presidio's recognizers) and the pseudonym vault",
    "ner": "the NER tier of PII policies: names, places and organisations (a spaCy model)",
}
# what to know before running the command
_NOTES = {"llamacpp": "it compiles llama.cpp from source, about 12 minutes on 2 cores"}


def install_command(extra: str) -> str:
    if extra not in EXTRAS:
        raise ConfigError(f"unknown extra {extra!r}; ragtune's extras: {', '.join(EXTRAS)}")
    return f"pip install 'ragtune[{extra}]'"


def missing(extra: str, purpose: str, exc: ImportError | None = None, *,
            error: type[RagtuneError] = ModelError) -> RagtuneError:
    """The error for ``purpose`` run without ``extra``: what needs it, the command, and the import
    that failed."""
    module = exc.name if exc is not None and exc.name else None
    what = f"{module} (the {extra} extra)" if module else f"the {extra} extra"
    notes = [n for n in (_NOTES.get(extra), str(exc) if exc is not None else None) if n]
    return error(f"{purpose} needs {what}: {install_command(extra)}" + (f" ({'; '.join(notes)})" if notes else ""))


@contextmanager
def needs(extra: str, purpose: str, *, error: type[RagtuneError] = ModelError) -> Iterator[None]:
    """Imports in the block that fail become ``missing(extra, purpose)``."""
    try:
        yield
    except ImportError as exc:
        raise missing(extra, purpose, exc, error=error) from exc


def require(module: str, extra: str, purpose: str, *, error: type[RagtuneError] = ModelError) -> ModuleType:
    """``module`` imported, or ``missing(extra, purpose)``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise missing(extra, purpose, exc, error=error) from exc


def check_installed(module: str, extra: str, purpose: str, *, error: type[RagtuneError] = ModelError) -> None:
    """``missing(extra, purpose)`` now, without importing ``module`` (some take seconds to import),
    when it is not installed: for constructors that load their model on first use."""
    if importlib.util.find_spec(module) is None:
        raise missing(extra, purpose, error=error)
