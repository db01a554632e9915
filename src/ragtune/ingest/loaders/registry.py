"""Which loader reads which file: the loader registry of ``ragtune.plugins``, keyed by file suffix,
and the file's first bytes when the suffix says nothing or says something false.

The rule, in order:

1. ``LoaderOptions.as_format`` (``--as text|markdown|html|...``) names the loader outright;
2. a binary format whose magic bytes are certain (PDF, gzip: ``sniff.DEFINITE``) is read as that
   when the suffix names a text format or nothing (a PDF saved as ``.txt``; ``.tar.gz`` and a
   plugin's own suffix keep their loader);
3. the longest registered suffix (``.tar.gz`` before ``.gz``);
4. the content (``sniff``): HTML, text, a tar, a PNG, JPEG or TIFF image (read with OCR), a zip
   (DOCX, XLSX, PPTX or EPUB by the member that marks each, otherwise an archive);
   ``changelog.Debian`` and ``README`` are text;
5. otherwise the file is binary and refused, in one line naming the way out (``--as text``).

ragtune's own formats are registered in ``ragtune.ingest.plugin`` through the same hook a plugin
uses, so there is one code path for both; a sniffed format is looked up in the same registry.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from ragtune.errors import ConfigError, UnsupportedFormatError
from ragtune.ingest.loaders.base import LoaderOptions
from ragtune.ingest.loaders.sniff import DEFINITE, DOCX, TEXT, TEXT_FORMATS, ZIP, read_head, sniff
from ragtune.plugins import Plugins, default_plugins
from ragtune.protocols import Loader

# ``--as`` names: a format's name, or any registered suffix (".md")
FORMATS = {"text": ".txt", "markdown": ".md", "html": ".html", "pdf": ".pdf", "docx": ".docx", "json": ".json",
           "jsonl": ".jsonl", "gzip": ".gz", "zip": ".zip", "tar": ".tar", "email": ".eml", "mbox": ".mbox",
           "xlsx": ".xlsx", "pptx": ".pptx", "epub": ".epub", "image": ".png"}


def supported_suffixes(plugins: Plugins | None = None) -> list[str]:
    return (plugins or default_plugins()).loaders.names()


def format_key(name: str, plugins: Plugins | None = None) -> str:
    """The registry key of an ``--as`` format name; ``ConfigError`` naming the choices."""
    loaders = (plugins or default_plugins()).loaders
    key = FORMATS.get(name.strip().lower(), name.strip().lower())
    if not key.startswith(".") and key:
        key = "." + key
    if loaders.find(key) is None:
        raise ConfigError(f"unknown format {name!r} for --as; use one of {', '.join(FORMATS)} or a registered suffix")
    return key


def loader_for(path: Path | str, options: LoaderOptions | None = None, plugins: Plugins | None = None) -> Loader:
    """The loader for ``path`` (the rule in the module docstring)."""
    loaders = (plugins or default_plugins()).loaders
    path = Path(path)
    options = options or LoaderOptions()
    if options.as_format:
        factory = loaders.find(format_key(options.as_format, plugins))
        assert factory is not None  # format_key checked it
        return factory(options)
    head = _head(path, options)
    if head is None:
        # Missing, empty, oversized or unreadable: chosen by name alone, and the loader's ``load``
        # refuses it with the standard error, without reading a byte (a 50 GB file is not opened).
        return _by_suffix(path, options, plugins) or loaders.get(TEXT)(options)
    sniffed = sniff(head)
    suffix = _suffix_key(path, plugins)
    if sniffed in DEFINITE and (suffix is None or suffix in TEXT_FORMATS) and (found := loaders.find(sniffed)):
        return found(options)
    if suffix is not None:
        return loaders.get(suffix)(options)
    if sniffed is None and head.startswith(b"PK\x03\x04"):
        sniffed = _zip_kind(path)
    if sniffed is not None and (found := loaders.find(sniffed)) is not None:
        return found(options)
    shown = path.suffix.lower() or "no suffix"
    raise UnsupportedFormatError(str(path), f"binary content ragtune has no loader for ({shown}); "
                                            "if it is text, read it with --as text")


def _suffix_key(path: Path, plugins: Plugins | None) -> str | None:
    """The longest registered suffix of ``path`` (``.tar.gz`` before ``.gz``), if any."""
    loaders = (plugins or default_plugins()).loaders
    suffixes = [s.lower() for s in path.suffixes]
    for candidate in ["".join(suffixes[i:]) for i in range(len(suffixes))] or [""]:
        if loaders.find(candidate) is not None:
            return candidate
    return None


def _by_suffix(path: Path, options: LoaderOptions, plugins: Plugins | None) -> Loader | None:
    key = _suffix_key(path, plugins)
    return None if key is None else (plugins or default_plugins()).loaders.get(key)(options)


def _head(path: Path, options: LoaderOptions) -> bytes | None:
    """The file's first bytes, or None when it is not a readable regular file of a size a loader
    would read (known from ``stat`` alone)."""
    try:
        info = path.stat()
        if not path.is_file() or not 0 < info.st_size <= options.max_file_bytes:
            return None
        return read_head(path)
    except OSError:
        return None


# a zip is one of these formats when it holds the member: Office files, then e-books
_ZIP_FORMATS = (("word/document.xml", DOCX), ("xl/workbook.xml", ".xlsx"), ("ppt/presentation.xml", ".pptx"),
                ("META-INF/container.xml", ".epub"))


def _zip_kind(path: Path) -> str:
    """What a zip without a telling suffix is: DOCX, XLSX, PPTX, EPUB, or an archive of files."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return ZIP  # the archive loader reports what is wrong with it
    return next((kind for member, kind in _ZIP_FORMATS if member in names), ZIP)
