"""Which loader reads which file: the loader registry of ``ragtune.plugins``, keyed by file suffix.

ragtune's own formats are registered in ``ragtune.ingest.plugin`` through the same hook a plugin
uses, so there is one code path for both.
"""

from __future__ import annotations

from pathlib import Path

from ragtune.errors import UnsupportedFormatError
from ragtune.ingest.loaders.base import LoaderOptions
from ragtune.plugins import Plugins, default_plugins
from ragtune.protocols import Loader


def supported_suffixes(plugins: Plugins | None = None) -> list[str]:
    return (plugins or default_plugins()).loaders.names()


def loader_for(path: Path | str, options: LoaderOptions | None = None, plugins: Plugins | None = None) -> Loader:
    """The loader for ``path``, chosen by its longest registered suffix (``.tar.gz`` before ``.gz``)."""
    loaders = (plugins or default_plugins()).loaders
    path = Path(path)
    options = options or LoaderOptions()
    suffixes = [s.lower() for s in path.suffixes]
    candidates = ["".join(suffixes[i:]) for i in range(len(suffixes))] or [""]
    for candidate in candidates:
        factory = loaders.find(candidate)
        if factory is not None:
            return factory(options)
    shown = path.suffix.lower() or "(no suffix)"
    supported = ", ".join(s or "(no suffix)" for s in loaders.names())
    raise UnsupportedFormatError(str(path), f"no loader for {shown} files (supported: {supported})")
