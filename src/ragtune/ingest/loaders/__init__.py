"""Loaders: one module per file format, chosen by suffix through the plugin registry (``ragtune.plugins``).

    loader = loader_for(path, LoaderOptions(max_file_bytes=...))
    for document in loader.load(path):   # Iterator[LoadedDocument]
        ...

Every loader refuses files over ``max_file_bytes`` from their size alone, refuses empty and
whitespace-only documents (``EmptyDocumentError``), and records ``source_path`` and ``format`` in
metadata (never timestamps, so equal content hashes equal). Compressed formats (DOCX, PDF) also
refuse to expand past ``max_expanded_bytes`` / ``max_expansion_ratio`` / ``max_container_members``
(``ExpansionLimitError``, see ``containers.py``).
"""

from ragtune.ingest.loaders.base import LoaderOptions
from ragtune.ingest.loaders.discover import iter_files, load_files
from ragtune.ingest.loaders.jsonl import BadRecordsError
from ragtune.ingest.loaders.registry import loader_for, supported_suffixes

__all__ = [
    "BadRecordsError",
    "LoaderOptions",
    "iter_files",
    "load_files",
    "loader_for",
    "supported_suffixes",
]
