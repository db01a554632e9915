"""ragtune's own ingest parts, registered through the hook every plugin uses (``ragtune.plugins``):
the loaders by file suffix (gzip files by what they hold), the chunkers, the packaged and folder embedders,
and the connectors of remote sources by URI scheme (``s3``).

Factories import their parser or model lazily: nothing heavier than this module is imported until a
part is built (``pypdf``, ``python-docx`` and ``selectolax`` cost tenths of a second each, the
embedders torch; ``ragtune --help`` should not pay for them).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ragtune.plugins import ANY, Plugins

if TYPE_CHECKING:
    from ragtune.ingest.chunker import ChunkBudget, OffsetTokenizer
    from ragtune.ingest.connectors.base import Connector
    from ragtune.ingest.loaders.base import LoaderOptions
    from ragtune.protocols import Chunker, Embedder, Loader
    from ragtune.settings import Settings

# Files without a suffix (README, changelog.Debian) are read by what their content is (loaders.sniff).
TEXT_SUFFIXES = (".txt", ".text", ".rst", ".log", ".csv", ".tsv")


# Loaders of files that hold files: suffixes -> (module under ingest.loaders, class). Each reads what
# it holds with the loader the same registry chooses for it (``archives.ArchiveLoader``).
CONTAINERS = {
    (".gz",): ("compressed", "GzipLoader"),
    (".zip",): ("archives", "ZipArchiveLoader"),
    (".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz"): ("archives", "TarArchiveLoader"),
    (".eml",): ("mail", "EmailLoader"),
    (".mbox",): ("mail", "MboxLoader"),
}
# Formats with a library of their own (``office``): suffixes -> class.
OFFICE = {(".xlsx", ".xlsm"): "XlsxLoader", (".pptx",): "PptxLoader", (".epub",): "EpubLoader"}
# Images, read with OCR (loaders.images; refused as binary where OCR is not installed).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def _container(module: str, name: str, plugins: Plugins) -> Callable[[LoaderOptions], Loader]:
    def factory(options: LoaderOptions) -> Loader:
        from ragtune.ingest.loaders.registry import loader_for

        loader: Loader = getattr(importlib.import_module(f"ragtune.ingest.loaders.{module}"), name)(
            options, lambda path, inner: loader_for(path, inner, plugins))
        return loader

    return factory


def _office(name: str) -> Callable[[LoaderOptions], Loader]:
    def factory(options: LoaderOptions) -> Loader:
        loader: Loader = getattr(importlib.import_module("ragtune.ingest.loaders.office"), name)(options)
        return loader

    return factory


def register(plugins: Plugins) -> None:
    for suffixes, factory in ((TEXT_SUFFIXES, _text), ((".md", ".markdown"), _markdown), ((".html", ".htm"), _html),
                              ((".pdf",), _pdf), ((".docx",), _docx), ((".jsonl", ".ndjson"), _json_lines),
                              ((".json",), _json)):
        for suffix in suffixes:
            plugins.loaders.register(suffix, factory)
    for held_in, (module, name) in CONTAINERS.items():
        for suffix in held_in:
            plugins.loaders.register(suffix, _container(module, name, plugins))
    for office_suffixes, name in OFFICE.items():
        for suffix in office_suffixes:
            plugins.loaders.register(suffix, _office(name))
    for suffix in IMAGE_SUFFIXES:
        plugins.loaders.register(suffix, _image)
    plugins.chunkers.register("structured", _structured)
    plugins.chunkers.register("whole", _whole)
    from ragtune.ingest.embedders import PACKAGED_NAME

    for alias in ("minilm", PACKAGED_NAME):
        plugins.embedders.register(alias, _fp32_packaged)
    for alias in ("minilm-int8", f"{PACKAGED_NAME}-int8"):
        plugins.embedders.register(alias, _int8_packaged)
    plugins.embedders.register(ANY, _folder)
    plugins.connectors.register("s3", _s3)


# -- loaders ---------------------------------------------------------------------------------------
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


def _image(options: LoaderOptions) -> Loader:
    from ragtune.ingest.loaders.images import ImageLoader

    return ImageLoader(options)


def _json(options: LoaderOptions) -> Loader:
    from ragtune.ingest.loaders.jsonl import JsonRecordsLoader

    return JsonRecordsLoader(options, lines=False)


# -- connectors ------------------------------------------------------------------------------------
def _s3(uri: str, settings: Settings) -> Connector:
    from ragtune.ingest.connectors.s3 import s3_connector

    return s3_connector(uri, settings)


# -- chunkers --------------------------------------------------------------------------------------
def _structured(counter: OffsetTokenizer, budget: ChunkBudget) -> Chunker:
    from ragtune.ingest.chunker import StructuredChunker

    return StructuredChunker(counter, max_tokens=budget.max_tokens, overlap_tokens=budget.overlap_tokens)


def _whole(counter: OffsetTokenizer, budget: ChunkBudget) -> Chunker:
    from ragtune.ingest.chunker import WholeDocumentChunker

    return WholeDocumentChunker(counter)


# -- embedders -------------------------------------------------------------------------------------
def _fp32_packaged(name: str, cache_dir: Path) -> Embedder:
    from ragtune.ingest.embedders import PACKAGED_NAME, SentenceTransformerEmbedder, packaged_model_path

    return SentenceTransformerEmbedder(packaged_model_path(), name=PACKAGED_NAME)


def _int8_packaged(name: str, cache_dir: Path) -> Embedder:
    from ragtune.ingest.embedders import PACKAGED_NAME, OnnxInt8Embedder, packaged_model_path

    return OnnxInt8Embedder(packaged_model_path(), cache_dir=cache_dir, name=f"{PACKAGED_NAME}-int8")


def _folder(spec: str, cache_dir: Path) -> Embedder:
    """A sentence-transformers folder, ``PATH`` (fp32) or ``PATH:int8`` (the ONNX int8 backend); the
    registry hands over only specs written as paths."""
    from ragtune.ingest.embedders import OnnxInt8Embedder, SentenceTransformerEmbedder

    path, _, variant = spec.rpartition(":")
    if variant not in {"int8", "fp32"} or not path:
        path, variant = spec, "fp32"
    if variant == "int8":
        return OnnxInt8Embedder(path, cache_dir=cache_dir)
    return SentenceTransformerEmbedder(path)
