"""Gzip-compressed files (``changelog.Debian.gz``, ``manual.html.gz``, ``records.jsonl.gz``), read
transparently: the file is expanded within the container limits and read by the loader of what it
holds, chosen by the inner name (``manual.html``) or, when that says nothing, by the content
(``sniff``), through ``archives.read_member``. Documents keep the compressed file's path as their
source.

Limits (the hardening issue's, ``containers.py``): the expansion is streamed and stops at
``max_expanded_bytes`` (and at ``max_file_bytes``, which the inner file is held to like any file);
over 4 MiB, an expansion ratio over ``max_expansion_ratio`` is refused as a bomb; an archive or a
gzip inside a gzip is refused (``.tar.gz`` is read by the tar loader; nothing else needs it, and it
would multiply the ratio).
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterator
from pathlib import Path

from ragtune.errors import CorruptFileError, ExpansionLimitError
from ragtune.ingest.loaders.archives import ArchiveLoader, read_member
from ragtune.ingest.loaders.base import LoaderOptions, read_checked
from ragtune.ingest.loaders.containers import RATIO_FLOOR, size
from ragtune.models import LoadedDocument

_STEP = 1024 * 1024


class GzipLoader(ArchiveLoader):
    def load(self, source: Path) -> Iterator[LoadedDocument]:
        expanded = expand(read_checked(source, self.options), str(source), self.options)
        inner_name = source.name[:-3] if source.name.lower().endswith(".gz") else source.stem or source.name
        yield from read_member(str(source), inner_name or "expanded", expanded, self.choose, self.options,
                               uri=str(source))


def expand(data: bytes, source: str, options: LoaderOptions) -> bytes:
    """The gzip ``data`` expanded, streamed so a bomb stops at the limit instead of filling memory."""
    limit = min(options.max_expanded_bytes, options.max_file_bytes)
    out = io.BytesIO()
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            while chunk := stream.read(_STEP):
                out.write(chunk)
                written = out.tell()
                if written > limit:
                    setting = "max_expanded_bytes" if limit == options.max_expanded_bytes else "max_file_bytes"
                    raise ExpansionLimitError(source, f"expands past {size(limit)}, over {setting}", setting)
                if written > RATIO_FLOOR and written / len(data) > options.max_expansion_ratio:
                    raise ExpansionLimitError(
                        source, f"expands {written / len(data):.0f}x ({size(len(data))} to over {size(written)}), "
                                f"over max_expansion_ratio={options.max_expansion_ratio:g}", "max_expansion_ratio")
    except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as exc:
        raise CorruptFileError(source, f"corrupt gzip file: {exc}") from None
    return out.getvalue()
