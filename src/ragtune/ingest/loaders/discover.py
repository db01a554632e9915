"""Which files an ingest run reads: paths in, files out, in a deterministic order.

Folders are walked recursively; hidden files and folders (``.git``, ``.venv``, ``.DS_Store``)
are skipped, and symbolic links to folders are not followed (a link cycle would never end).
``include`` / ``exclude`` are ``fnmatch`` patterns tested case-sensitively against both the path
relative to the walked folder (POSIX separators) and the bare file name, so ``*.md`` and
``docs/*.md`` both work; ``*`` also matches ``/``. An excluded folder is not entered at all.
Files named explicitly are always yielded: the user asked for them, as in ripgrep or fd.

Order: the given paths in the given order; inside a folder, sorted by relative path. A file
reached twice (two overlapping folders) is yielded once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from fnmatch import fnmatchcase
from pathlib import Path

from ragtune.errors import IngestError


def iter_files(
    paths: Iterable[Path | str], include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> Iterator[Path]:
    """Files under ``paths`` that pass the filters; a missing path raises ``IngestError``."""
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
