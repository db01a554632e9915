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

import os
from collections.abc import Iterable, Iterator, Sequence
from fnmatch import fnmatchcase
from pathlib import Path

from ragtune.errors import IngestError
from ragtune.ingest.loaders.base import LoaderOptions
from ragtune.ingest.loaders.jsonl import BadRecordsError
from ragtune.ingest.loaders.registry import loader_for
from ragtune.models import LoadedDocument
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


def load_files(files: Iterable[Path], options: LoaderOptions | None = None, plugins: Plugins | None = None
               ) -> Iterator[LoadedDocument | IngestError]:
    """Every document of every file, with failures yielded in place instead of raised.

    A file that fails half-way keeps the documents it yielded before failing; a JSON Lines
    file's ``BadRecordsError`` is unpacked into one error per bad line (``source`` =
    ``path:line``). Errors that are not ``IngestError`` (bugs) still propagate.
    """
    for path in files:
        try:
            yield from loader_for(path, options, plugins).load(path)
        except BadRecordsError as exc:
            yield from exc.failures
        except IngestError as exc:
            yield exc
        except OSError as exc:  # the file vanished or became unreadable between listing and reading
            yield IngestError(str(path), f"cannot read file: {exc.strerror or exc}")
