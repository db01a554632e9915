"""Which loader reads which file: a small registry keyed by file suffix.

Built-in formats are registered below through ``register_loader``, the same call a plugin
uses, so there is one code path for both. Factories import their parser lazily: nothing heavier
than this module is imported until a file of that format is actually loaded (``pypdf``,
``python-docx`` and ``selectolax`` cost tenths of a second each; ``ragtune --help`` should not).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from ragtune.errors import ConfigError, UnsupportedFormatError
from ragtune.ingest.loaders.base import LoaderOptions
from ragtune.protocols import Loader

LoaderFactory = Callable[[LoaderOptions], Loader]

_REGISTRY: dict[str, LoaderFactory] = {}


def _normalise(suffix: str) -> str:
    if not isinstance(suffix, str) or any(c.isspace() or c in "/\\" for c in suffix):
        raise ConfigError(f"a loader suffix must look like '.pdf' (or '' for no suffix), got {suffix!r}")
    suffix = suffix.lower()
    return suffix if not suffix or suffix.startswith(".") else f".{suffix}"


def register_loader(suffixes: str | Iterable[str], factory: LoaderFactory, *, replace: bool = False) -> None:
    """Make ``factory(options)`` the loader for files ending in each of ``suffixes``.

    Suffixes are case-insensitive, with or without the dot; ``""`` means files with no suffix
    (README, LICENSE). Taking over a suffix that already has a loader needs ``replace=True``,
    so two plugins cannot silently fight over one.
    """
    if not callable(factory):
        raise ConfigError(f"loader factory must be callable, got {factory!r}")
    names = [_normalise(s) for s in ([suffixes] if isinstance(suffixes, str) else list(suffixes))]
    if not names:
        raise ConfigError("register_loader needs at least one suffix")
    if not replace:
        taken = [name for name in names if name in _REGISTRY]
        if taken:
            raise ConfigError(f"a loader is already registered for {taken}; pass replace=True to override it")
    for name in names:
        _REGISTRY[name] = factory


def supported_suffixes() -> list[str]:
    return sorted(_REGISTRY)


def loader_for(path: Path | str, options: LoaderOptions | None = None) -> Loader:
    """The loader for ``path``, chosen by its longest registered suffix (``.tar.gz`` before ``.gz``)."""
    path = Path(path)
    options = options or LoaderOptions()
    suffixes = [s.lower() for s in path.suffixes]
    candidates = ["".join(suffixes[i:]) for i in range(len(suffixes))] or [""]
    for candidate in candidates:
        factory = _REGISTRY.get(candidate)
        if factory is not None:
            return factory(options)
    shown = path.suffix.lower() or "(no suffix)"
    supported = ", ".join(s or "(no suffix)" for s in supported_suffixes())
    raise UnsupportedFormatError(str(path), f"no loader for {shown} files (supported: {supported})")


def _text(options: LoaderOptions) -> Loader:
    from ragtune.ingest.loaders.text import TextLoader

    return TextLoader(options)


def _markdown(options: LoaderOptions) -> Loader:
    from ragtune.ingest.loaders.markdown import MarkdownLoader

    return MarkdownLoader(options)


def _html(options: LoaderOptions) -> Loader:
    from ragtune.ingest.loaders.html import HtmlLoader

    return HtmlLoader(options)


def _pdf(options: LoaderOptions) -> Loader:
    from ragtune.ingest.loaders.pdf import PdfLoader

    return PdfLoader(options)


def _docx(options: LoaderOptions) -> Loader:
    from ragtune.ingest.loaders.docx import DocxLoader

    return DocxLoader(options)


def _json_lines(options: LoaderOptions) -> Loader:
    from ragtune.ingest.loaders.jsonl import JsonRecordsLoader

    return JsonRecordsLoader(options, lines=True)


def _json(options: LoaderOptions) -> Loader:
    from ragtune.ingest.loaders.jsonl import JsonRecordsLoader

    return JsonRecordsLoader(options, lines=False)


register_loader(["", ".txt", ".text", ".rst", ".log", ".csv", ".tsv"], _text)
register_loader([".md", ".markdown"], _markdown)
register_loader([".html", ".htm"], _html)
register_loader(".pdf", _pdf)
register_loader(".docx", _docx)
register_loader([".jsonl", ".ndjson"], _json_lines)
register_loader(".json", _json)
