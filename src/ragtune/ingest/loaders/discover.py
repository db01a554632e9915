"""Which files an ingest run reads: paths in, files out, in a deterministic order.

Folders are walked recursively; hidden files and folders (``.git``, ``.venv``, ``.DS_Store``)
are skipped, and symbolic links to folders are not followed (a link cycle would never end).
``include`` / ``exclude`` are ``fnmatch`` patterns tested case-sensitively against both the path
relative to the walked folder (POSIX separators) and the bare file name, so ``*.md`` and
``docs/*.md`` both work; ``*`` also matches ``/``. An excluded folder is not entered at all.
Files named explicitly are always yielded: the user asked for them, as in ripgrep or fd.

Order: the given paths in the given order; inside a folder, sorted by relative path. A file
reached twice (two overlapping folders) is yielded once.

``load_files`` turns files into the stream the ingest pipeline consumes: documents, and every
failure as a value (one ``IngestError`` per bad file, or per bad record of a JSON Lines file),
so that one bad input never stops a run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from fnmatch import fnmatchcase
from pathlib import Path

from ragtune.errors import IngestError
from ragtune.ingest.loaders.base import LoaderOptions
from ragtune.ingest.loaders.jsonl import BadRecordsError
from ragtune.ingest.loaders.registry import loader_for
from ragtune.models import FileWarning, LoadedDocument
from ragtune.observe.tracing import Step, current_span, stash
from ragtune.plugins import Plugins


def iter_files(paths: Iterable[Path | str], include: Sequence[str] = (), exclude: Sequence[str] = ()) -> Iterator[Path]:
    """Files under ``paths`` that pass the filters; a missing path raises ``IngestError``."""
    if isinstance(paths, str | Path):  # one path, not an iterable of its characters
        paths = [paths]
    seen: set[Path] = set()
    for given in paths:
        path = Path(given)
        if path.is_file():
            candidates: Iterable[Path] = [path]
        elif path.is_dir():
            candidates = _walk(path, include, exclude)
        elif path.exists():
            raise IngestError(str(path), "not a regular file or folder")
        else:
            raise IngestError(str(path), "no such file or folder")
        for candidate in candidates:
            key = candidate.resolve()
            if key not in seen:
                seen.add(key)
                yield candidate


def wanted(root: Path, path: Path, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> bool:
    """Whether walking ``root`` would yield ``path`` (the same hidden-name and pattern rules as
    ``iter_files``), for one file that changed under a watched folder."""
    try:
        relative = path.relative_to(root).as_posix()
    except ValueError:
        return False
    parts = relative.split("/")
    if any(part.startswith(".") for part in parts):
        return False
    folders = ["/".join(parts[:i]) for i in range(1, len(parts))]
    if any(_matches(folder, exclude) for folder in folders):
        return False
    return (not include or _matches(relative, include)) and not _matches(relative, exclude)


def _matches(relative: str, patterns: Sequence[str]) -> bool:
    name = relative.rsplit("/", 1)[-1]
    return any(fnmatchcase(relative, p) or fnmatchcase(name, p) for p in patterns)


def _walk(root: Path, include: Sequence[str], exclude: Sequence[str]) -> list[Path]:
    found: list[tuple[str, Path]] = []
    for folder, dirnames, filenames in os.walk(root):
        base = Path(folder)
        relative_base = base.relative_to(root).as_posix()
        prefix = "" if relative_base == "." else f"{relative_base}/"
        # Pruning in place tells os.walk not to descend.
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and not _matches(prefix + d, exclude)]
        for name in filenames:
            relative = prefix + name
            if name.startswith("."):
                continue
            if include and not _matches(relative, include):
                continue
            if _matches(relative, exclude):
                continue
            if (base / name).is_file():
                found.append((relative, base / name))
    found.sort(key=lambda item: item[0])
    return [path for _, path in found]


def load_files(files: Iterable[Path], options: LoaderOptions | None = None, plugins: Plugins | None = None,
               *, warnings_to: list[FileWarning] | None = None) -> Iterator[LoadedDocument | IngestError]:
    """Every document of every file, with failures yielded in place instead of raised.

    A file that fails half-way keeps the documents it yielded before failing; a JSON Lines
    file's ``BadRecordsError`` is unpacked into one error per bad line (``source`` =
    ``path:line``). Errors that are not ``IngestError`` (bugs) still propagate.

    ``warnings_to`` (if given) collects what libraries warned while each file was read (Python
    warnings, and log records of WARNING and above from this thread), as ``FileWarning`` values
    naming the file, instead of letting them print; see ``captured_warnings``.
    """
    for path in files:
        opened, reading, count, error = time.time_ns(), 0, 0, None
        try:
            documents = iter(loader_for(path, options, plugins).load(path))
            while True:
                # only while the loader runs, not while the pipeline works on what it yielded
                started = time.perf_counter_ns()
                with captured_warnings(str(path), warnings_to):
                    document = next(documents, None)
                reading += time.perf_counter_ns() - started
                if document is None:
                    break
                count += 1
                yield document
        except BadRecordsError as exc:
            error = str(exc)
            yield from exc.failures
        except IngestError as exc:
            error = exc.reason
            yield exc
        except OSError as exc:  # the file vanished or became unreadable between listing and reading
            error = f"cannot read file: {exc.strerror or exc}"
            yield IngestError(str(path), error)
        _record_load(path, opened, reading, count, error)


def _record_load(path: Path, opened_ns: int, reading_ns: int, documents: int, error: str | None) -> None:
    """A ``load`` step of the ingest's span (the span current where the documents are consumed):
    it starts when the file was opened and lasts as long as its reading took (a lazy loader's
    reading interleaves with the pipeline's work on what it yielded)."""
    stash(current_span(), {"ragtune.steps": [Step("load", None, opened_ns, opened_ns + reading_ns, {
        "ragtune.file": str(path), "ragtune.load.documents": documents, "ragtune.load.error": error})]})


class _Collector(logging.Handler):
    """Keeps the records the loading thread logs; another thread's record goes on to the root
    logger's handlers, where it would have propagated to (the logger's own parents between are
    skipped: libraries configure none)."""

    def __init__(self, source: str, sink: list[FileWarning]) -> None:
        super().__init__(logging.WARNING)
        self.source = source
        self.sink = sink
        self.thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.sink.append(FileWarning(self.source, record.name, record.getMessage()))
        else:
            logging.getLogger().handle(record)


@contextlib.contextmanager
def captured_warnings(source: str, sink: list[FileWarning] | None) -> Iterator[None]:
    """Keep the warnings given inside the block as ``FileWarning(source, ...)`` in ``sink`` (None:
    change nothing). Log records are taken before they propagate: the libraries' loggers (pypdf
    logs "EOF marker not found" on ``pypdf._reader``) stop propagating for the block, and a
    handler on each keeps this thread's records.

    Concession: Python's ``warnings`` state is process-wide, so a warning another thread gives
    during the block (a search next to a server's ingest job) is kept here too, named after this
    file; loads are short, and such a warning is kept, not lost."""
    if sink is None:
        yield
        return
    collector = _Collector(source, sink)
    loggers = [logging.getLogger(name) for name in CAPTURED_LOGGERS]
    propagated = [logger.propagate for logger in loggers]
    for logger in loggers:
        logger.addHandler(collector)
        logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        for logger, propagate in zip(loggers, propagated, strict=True):
            logger.removeHandler(collector)
            logger.propagate = propagate
    for warning in caught:
        sink.append(FileWarning(source, warning.category.__name__, str(warning.message)))


# the libraries loaders call that log about the file they read (a logger's children are included)
CAPTURED_LOGGERS = ("pypdf", "docx", "bs4", "charset_normalizer", "ragtune.ingest.loaders")
