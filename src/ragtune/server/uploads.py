"""A multipart upload streamed to disk as it arrives, never held in memory.

``receive_upload`` feeds the request body, chunk by chunk, to python-multipart's streaming parser;
each file part is appended to its own file in a fresh folder, and the limits are checked as bytes
arrive: the whole body (``server.max_upload_bytes``), each file (``max_file_bytes``), the number of
files, and each plain form field (64 KiB). Any failure removes the folder.

A file's document URI is its client-side name without folders (``report.pdf``); the stored copy
keeps the extension, which is how the loaders pick a format.
"""

from __future__ import annotations

import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import anyio.to_thread
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException
from starlette.requests import Request

from ragtune.errors import LimitError, QueryError, RequestTooLargeError

MAX_FIELD_BYTES = 64 * 1024
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class UploadedFile:
    name: str  # the document URI
    stored: str  # the file name in the upload folder
    bytes: int


@dataclass
class Upload:
    folder: Path
    files: list[UploadedFile] = field(default_factory=list)
    fields: dict[str, list[str]] = field(default_factory=dict)

    def field(self, name: str) -> list[str]:
        return self.fields.get(name, [])


def document_name(filename: str) -> str:
    """The client's file name without folders or control characters."""
    name = _CONTROL.sub("", filename.replace("\\", "/")).rsplit("/", 1)[-1].strip()
    if name in ("", ".", ".."):
        raise QueryError(f"invalid file name {filename!r}")
    return name[:255]


def stored_name(index: int, name: str) -> str:
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    safe_ext = _UNSAFE.sub("", ext)[:16].lower()
    safe_stem = _UNSAFE.sub("_", stem)[:80] or "file"
    return f"{index:04d}-{safe_stem}" + (f".{safe_ext}" if safe_ext else "")


class _Receiver:
    """python-multipart callbacks writing file parts to disk."""

    def __init__(self, upload: Upload, *, max_file_bytes: int, max_files: int) -> None:
        self.upload = upload
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, bytes] = {}
        self._name = ""
        self._file: IO[bytes] | None = None
        self._filename: str | None = None
        self._stored = ""
        self._size = 0
        self._value = bytearray()

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._part_begin, "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._headers = {}
        self._name, self._filename, self._file, self._size = "", None, None, 0
        self._value = bytearray()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_field.decode("latin-1").lower()] = bytes(self._header_value)
        self._header_field, self._header_value = bytearray(), bytearray()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get("content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        raw_filename = options.get(b"filename")
        if raw_filename is None:
            return
        filename = raw_filename.decode("utf-8", "replace")
        if not filename:  # an empty file input of a browser form
            return
        if len(self.upload.files) >= self.max_files:
            raise LimitError(f"too many files in one upload: at most {self.max_files}", "max_upload_files")
        self._filename = document_name(filename)
        self._stored = stored_name(len(self.upload.files), self._filename)
        self._file = open(self.upload.folder / self._stored, "wb")  # noqa: SIM115 - closed in _part_end

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        n = end - start
        if self._file is not None:
            self._size += n
            if self._size > self.max_file_bytes:
                raise RequestTooLargeError(f"file {self._filename!r} is over max_file_bytes={self.max_file_bytes}",
                                           "max_file_bytes")
            self._file.write(data[start:end])
        elif self._filename is None:
            if len(self._value) + n > MAX_FIELD_BYTES:
                raise RequestTooLargeError(f"form field {self._name!r} is over {MAX_FIELD_BYTES} bytes",
                                           "form_field_bytes")
            self._value += data[start:end]

    def _part_end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            assert self._filename is not None
            self.upload.files.append(UploadedFile(self._filename, self._stored, self._size))
        elif self._filename is None and self._name:
            self.upload.fields.setdefault(self._name, []).append(self._value.decode("utf-8", "replace"))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


async def receive_upload(request: Request, folder: Path, *, max_bytes: int, max_file_bytes: int,
                         max_files: int) -> Upload:
    """Stream a ``multipart/form-data`` body into ``folder`` (created here, removed on failure)."""
    content_type, params = parse_options_header(request.headers.get("content-type"))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise HTTPException(415, "send the files as multipart/form-data (a 'files' part per file)")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise RequestTooLargeError(f"upload of {declared} bytes is over server.max_upload_bytes={max_bytes}",
                                   "max_upload_bytes")
    folder = folder / f"incoming-{uuid.uuid4().hex}"
    folder.mkdir(parents=True)
    upload = Upload(folder)
    receiver = _Receiver(upload, max_file_bytes=max_file_bytes, max_files=max_files)
    parser = MultipartParser(boundary, receiver.callbacks())  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise RequestTooLargeError(f"upload is over server.max_upload_bytes={max_bytes}",
                                           "max_upload_bytes")
            if chunk:
                await anyio.to_thread.run_sync(parser.write, chunk)
        parser.finalize()
        if not upload.files:
            raise QueryError("no files in the upload: send each file as a 'files' part with a filename")
    except MultipartParseError as exc:
        receiver.close()
        shutil.rmtree(folder, ignore_errors=True)
        raise QueryError(f"malformed multipart body: {exc}") from None
    except BaseException:
        receiver.close()
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return upload
