"""Plain text (.txt, .text, .rst, .log, .csv, .tsv, and any file whose content is text: ``sniff``).

The text is kept exactly as decoded (newlines normalised); plain text has no structure we can
trust, so no sections and no title are guessed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ragtune.ingest.encoding import decode_bytes
from ragtune.ingest.loaders.base import LoaderOptions, base_metadata, read_checked, require_text
from ragtune.models import LoadedDocument


class TextLoader:
    def __init__(self, options: LoaderOptions | None = None) -> None:
        self.options = options or LoaderOptions()

    def load(self, source: Path) -> Iterator[LoadedDocument]:
        text = require_text(decode_bytes(read_checked(source, self.options), str(source)), str(source))
        yield LoadedDocument(uri=str(source), text=text, metadata=base_metadata(source, "text"))
