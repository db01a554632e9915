"""What a compressed file may expand to, checked before (zip) or while (PDF) it is expanded.

A 433 KB DOCX that expands to 99 MB of XML parses for minutes and splits into ~100k chunks
(issue 14). Three limits, the same for every container format, each named in the refusal:

* ``max_expanded_bytes``: what the file expands to in total (a zip's members, a PDF's decoded
  streams, the text extracted);
* ``max_expansion_ratio``: expanded / compressed size of one member or stream, checked only for
  those that expand past ``RATIO_FLOOR`` (4 MiB, which python-docx parses in under half a second):
  below it a high ratio costs little, and generated documents have small parts that compress
  150-300x (a python-docx table of 4,000 empty rows: a 2.2 MB ``document.xml`` at 195x);
* ``max_container_members``: the number of entries of a zip.

Zip. The central directory declares each member's sizes; ``check_zip`` refuses on the declared
numbers before anything is inflated, then inflates every member once in bounded steps to check
that none yields more than it declares. That second pass is needed because the declaration can
lie and ``zipfile`` trusts it in the wrong place: ``ZipFile.read`` (what python-docx calls)
inflates a member's whole compressed data in one call and only then cuts the output at the
declared size, so a member declaring 1 KB could still allocate gigabytes. Once every member has
been inflated within its declared size, the parser that reads them again cannot get more.
A member that is itself a zip is refused, except in the folders where Office keeps embedded
files (a chart's workbook is an .xlsx in ``word/embeddings/``): no loader opens those, and a
nested archive anywhere else is no part of the format.

PDF. There are no declared sizes, so ``PdfBudget`` counts as it goes: pypdf's own per-stream
output limits (``pypdf.Configuration``, pypdf >= 7) are lowered to ``max_expanded_bytes`` while
the file is read, and before a page's text is extracted its content streams and the form
XObjects they draw (recursively) are decoded and added to the file's total; pypdf caches decoded
streams, so extraction does not decode them again. Concession: other streams extraction decodes
(fonts' ToUnicode maps) are bounded only by pypdf's per-stream limit, not counted in the total.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ragtune.errors import CorruptFileError, ExpansionLimitError
from ragtune.ingest.loaders.base import LoaderOptions

RATIO_FLOOR = 4 * 1024 * 1024
NESTED_ARCHIVE = "nested_archive"  # the ``limit`` of a refused nested zip: a fixed rule, not a setting
# Office's folders for embedded packages (workbooks behind charts, OLE objects): never opened.
EMBEDDED_FOLDERS = ("word/embeddings/", "xl/embeddings/", "ppt/embeddings/")
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zipfile's structFileHeader: 30 bytes
_LOCAL_SIGNATURE = b"PK\x03\x04"
_END_RECORD = struct.Struct("<4s4H2LH")  # end of central directory: 22 bytes, then a comment
_END_SIGNATURE = b"PK\x05\x06"
_STEP = 1024 * 1024  # bytes inflated per call while checking a member


def size(n: float) -> str:
    """Bytes for a message: ``99.8 MB (99,800,000 bytes)``, ``433.1 KB (433,100 bytes)``."""
    return f"{n / 1e6:.1f} MB ({int(n):,} bytes)" if n >= 1e6 else f"{n / 1e3:.1f} KB ({int(n):,} bytes)"


def check_zip(data: bytes, source: str, options: LoaderOptions, *, kind: str = "zip") -> None:
    """Refuse a zip that declares or yields more than ``options`` allow (``ExpansionLimitError``),
    or whose structure its parser could not read safely (``CorruptFileError``, its reason starting
    ``unreadable {kind}``)."""
    declared = _declared_entries(data)
    if declared is not None and declared > options.max_container_members:
        raise _too_many(source, declared, options)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError) as exc:
        raise CorruptFileError(source, f"unreadable {kind}: not a readable zip archive: {exc}") from exc
    if len(members) > options.max_container_members:
        raise _too_many(source, len(members), options)
    total = sum(m.file_size for m in members)
    if total > options.max_expanded_bytes:
        raise ExpansionLimitError(source, f"expands to {size(total)} from {size(len(data))}, over "
                                          f"max_expanded_bytes={options.max_expanded_bytes:,}", "max_expanded_bytes")
    for member in members:
        _check_declared(member, source, options, kind)
    for member in members:
        _check_actual(data, member, source, kind)


def _declared_entries(data: bytes) -> int | None:
    """The entry count of the end-of-central-directory record, read before ``zipfile`` builds an
    object per entry; None when absent or ZIP64 (then ``zipfile`` counts, bounded by the file size)."""
    at = data.rfind(_END_SIGNATURE, max(0, len(data) - _END_RECORD.size - 65535))
    if at < 0 or at + _END_RECORD.size > len(data):
        return None
    entries = _END_RECORD.unpack_from(data, at)[4]
    return None if entries == 0xFFFF else int(entries)


def _too_many(source: str, count: int, options: LoaderOptions) -> ExpansionLimitError:
    return ExpansionLimitError(source, f"a zip of {count:,} members, over max_container_members="
                                       f"{options.max_container_members:,}", "max_container_members")


def _check_declared(member: zipfile.ZipInfo, source: str, options: LoaderOptions, kind: str) -> None:
    name = member.filename
    if member.flag_bits & 0x1:
        raise CorruptFileError(source, f"unreadable {kind}: zip member {name!r} is encrypted")
    if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise CorruptFileError(source, f"unreadable {kind}: zip member {name!r} uses compression method "
                                       f"{member.compress_type}; only stored and deflated members are read")
    if member.file_size >= RATIO_FLOOR:
        ratio = member.file_size / max(member.compress_size, 1)
        if ratio > options.max_expansion_ratio:
            raise ExpansionLimitError(
                source, f"zip member {name!r} expands {ratio:,.0f}x ({size(member.compress_size)} to "
                        f"{size(member.file_size)}), over max_expansion_ratio={options.max_expansion_ratio:g}",
                "max_expansion_ratio")


def _check_actual(data: bytes, member: zipfile.ZipInfo, source: str, kind: str) -> None:
    """Inflate ``member`` in bounded steps: refuse it if it yields more than it declares, or is a
    nested archive outside ``EMBEDDED_FOLDERS``."""
    name = member.filename
    start = member.header_offset
    if start + _LOCAL_HEADER.size > len(data):
        raise CorruptFileError(source, f"unreadable {kind}: zip member {name!r} points past the end of the file")
    header = _LOCAL_HEADER.unpack_from(data, start)
    if header[0] != _LOCAL_SIGNATURE:
        raise CorruptFileError(source, f"unreadable {kind}: zip member {name!r} has no local header")
    begin = start + _LOCAL_HEADER.size + header[10] + header[11]  # after the name and the extra field
    raw = memoryview(data)[begin:begin + member.compress_size]
    if len(raw) < member.compress_size:
        raise CorruptFileError(source, f"unreadable {kind}: zip member {name!r} is cut short")
    if member.compress_type == zipfile.ZIP_STORED:  # zipfile reads at most compress_size: the file bounds it
        head = bytes(raw[:4])
    else:
        head = _inflate_within(raw, member.file_size, name, source, kind)
    if head == _LOCAL_SIGNATURE and not name.startswith(EMBEDDED_FOLDERS):
        raise ExpansionLimitError(source, f"zip member {name!r} is itself a zip archive; nested archives are refused "
                                          f"outside {', '.join(EMBEDDED_FOLDERS)}", NESTED_ARCHIVE)


def _inflate_within(raw: memoryview, declared: int, name: str, source: str, kind: str) -> bytes:
    """The first bytes of the inflated member, after inflating all of it without passing ``declared``."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate, as zipfile reads it
    produced, head, offset = 0, b"", 0
    try:
        while not inflater.eof:
            if inflater.unconsumed_tail:
                out = inflater.decompress(inflater.unconsumed_tail, _STEP)
            elif offset < len(raw):
                out = inflater.decompress(raw[offset:offset + _STEP], _STEP)
                offset += _STEP
            else:
                break  # truncated stream: zipfile fails on it later with its own error
            if len(head) < 4:
                head = (head + out[:4])[:4]
            produced += len(out)
            if produced > declared:
                raise ExpansionLimitError(
                    source, f"zip member {name!r} declares {size(declared)} but expands to more; "
                            "a lying size is refused", "max_expanded_bytes")
    except zlib.error as exc:
        reason = f"unreadable {kind}: zip member {name!r} is not valid deflate data: {exc}"
        raise CorruptFileError(source, reason) from exc
    return head


class PdfBudget:
    """Counts a PDF's decoded streams and extracted text against ``max_expanded_bytes``."""

    # pypdf's per-stream output limits, each lowered to max_expanded_bytes while reading
    _PYPDF_LIMITS = ("zlib_maximum_output_length", "lzw_maximum_output_length", "run_length_maximum_output_length",
                     "brotli_maximum_output_length", "jbig2_maximum_output_length",
                     "array_based_stream_maximum_output_length", "image_maximum_buffer_size",
                     "stream_decoding_work_maximum_length")

    def __init__(self, source: str, options: LoaderOptions) -> None:
        self.source = source
        self.options = options
        self.decoded = 0
        self.text = 0
        self.stream_limit = options.max_expanded_bytes  # what one stream may decode to; set by ``limits``
        self._seen: set[int] = set()

    @contextmanager
    def limits(self) -> Iterator[None]:
        """pypdf's limits lowered for the current context (a ContextVar: other threads keep theirs)."""
        try:
            from pypdf import apply_configuration, get_configuration
        except ImportError:  # pypdf < 7: its own default limits (75 MB a stream) stay
            yield
            return
        current = get_configuration()
        cap = self.options.max_expanded_bytes
        lowered = {name: min(getattr(current, name), cap) for name in self._PYPDF_LIMITS
                   if isinstance(getattr(current, name, None), int) and getattr(current, name) > 0}
        self.stream_limit = lowered.get("zlib_maximum_output_length", cap)
        with apply_configuration(**lowered):
            yield

    def add_page(self, page: Any) -> None:
        """Decode the page's content streams and the forms they draw, adding each stream once."""
        contents = page.get("/Contents")
        streams = []
        if contents is not None:
            contents = contents.get_object()
            streams = [s.get_object() for s in contents] if isinstance(contents, list) else [contents]
        for stream in streams:
            self._add(stream)
        self._add_forms(page.get("/Resources"), depth=0)

    def add_text(self, text: str) -> None:
        self.text += len(text)
        if self.text > self.options.max_expanded_bytes:
            raise ExpansionLimitError(self.source, f"its text passes {self.text:,} characters, over "
                                                   f"max_expanded_bytes={self.options.max_expanded_bytes:,}",
                                      "max_expanded_bytes")

    def _add_forms(self, resources: Any, depth: int) -> None:
        if resources is None or depth > 32:  # pypdf itself stops nested forms long before 32 levels
            return
        xobjects = resources.get_object().get("/XObject")
        if xobjects is None:
            return
        for ref in xobjects.get_object().values():
            form = ref.get_object()
            if form.get("/Subtype") != "/Form" or id(form) in self._seen:
                continue
            self._add(form)
            self._add_forms(form.get("/Resources"), depth + 1)

    def _add(self, stream: Any) -> None:
        if id(stream) in self._seen or not hasattr(stream, "get_data"):
            return
        self._seen.add(id(stream))
        encoded = len(getattr(stream, "_data", b"") or b"")  # before decoding: what the file holds
        decoded = len(stream.get_data())
        self.decoded += decoded
        limit = self.options.max_expanded_bytes
        if self.decoded > limit:
            raise ExpansionLimitError(self.source, f"its streams decode to more than {size(self.decoded)}, over "
                                                   f"max_expanded_bytes={limit:,}", "max_expanded_bytes")
        if decoded >= RATIO_FLOOR and encoded and decoded / encoded > self.options.max_expansion_ratio:
            raise ExpansionLimitError(
                self.source, f"a stream expands {decoded / encoded:,.0f}x ({size(encoded)} to {size(decoded)}), "
                             f"over max_expansion_ratio={self.options.max_expansion_ratio:g}", "max_expansion_ratio")
