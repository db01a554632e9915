"""JSON Lines (.jsonl, .ndjson: one record per line) and JSON (.json: an array of records, or one).

Each record is an object; ``options.text_field`` (default ``"text"``) holds the text,
``options.title_field`` the title, and metadata is ``options.metadata_fields`` or, when that is
``None``, every scalar field other than the text field. A record's uri is ``f"{path}#{id}"``
when ``options.id_field`` is set, else ``f"{path}#{line}"`` (1-based line number) for JSON Lines
and ``f"{path}#{index}"`` (0-based array index) for a JSON array; a single JSON object's uri is
the path itself.

Bad records do not lose good ones. ``load`` yields every good record first; then, if any
record failed, it raises ``BadRecordsError`` (an ``IngestError`` for the whole file) whose
``failures`` holds one ``IngestError`` per bad record, with ``source`` naming ``path:line`` for
JSON Lines or ``path[index]`` for a JSON array, and ``reason`` saying what was wrong:

    try:
        for document in loader.load(path):
            store(document)
    except BadRecordsError as exc:
        for failure in exc.failures:
            report(failure.source, failure.reason)   # "data.jsonl:7", "malformed JSON: ..."

Raising after the last yield keeps the ``Loader`` protocol: a caller that knows nothing about
records still gets every good document and sees the file fail. JSON Lines are read line by line
(never the whole file into memory) and must be UTF-8, as the format requires. A ``.json`` file
that is not valid JSON at all has no good records and is a plain ``CorruptFileError``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ragtune.errors import CorruptFileError, DecodeError, EmptyDocumentError, IngestError
from ragtune.ingest.encoding import decode_bytes
from ragtune.ingest.loaders.base import LoaderOptions, base_metadata, check_size, read_checked
from ragtune.models import LoadedDocument

_NEWLINES = re.compile(r"\r\n?")
_SCALARS = (str, int, float, bool, type(None))
_SHOWN_FAILURES = 3
_BLANK = object()  # a blank line: skipped, not a record


class BadRecordsError(IngestError):
    """Some records of a JSON / JSON Lines file failed; the good ones were already yielded."""

    def __init__(self, source: str, failures: list[IngestError], total: int) -> None:
        shown = "; ".join(f"{_label(f.source, source)}: {f.reason}" for f in failures[:_SHOWN_FAILURES])
        more = f"; and {len(failures) - _SHOWN_FAILURES} more" if len(failures) > _SHOWN_FAILURES else ""
        super().__init__(source, f"{len(failures)} of {total} records failed ({shown}{more})")
        self.failures = failures
        self.total = total


class JsonRecordsLoader:
    """``lines=True`` reads JSON Lines, ``lines=False`` a JSON document."""

    def __init__(self, options: LoaderOptions | None = None, *, lines: bool = True) -> None:
        self.options = options or LoaderOptions()
        self.lines = lines

    def load(self, source: Path) -> Iterator[LoadedDocument]:
        records = self._json_lines(source) if self.lines else self._json_document(source)
        failures: list[IngestError] = []
        seen: dict[str, str] = {}
        total = 0
        for where, fragment, parsed in records:
            if parsed is _BLANK:
                continue
            total += 1
            try:
                if isinstance(parsed, IngestError):
                    raise parsed
                document = self._document(source, where, fragment, parsed)
                if document.uri in seen:
                    first = seen[document.uri]
                    raise CorruptFileError(where, f"duplicate id: uri {document.uri} already used by {first}")
                seen[document.uri] = where
            except IngestError as exc:
                failures.append(exc)
                continue
            yield document
        if failures:
            raise BadRecordsError(str(source), failures, total)
        if total == 0:
            raise EmptyDocumentError(str(source), "no records")

    def _json_lines(self, source: Path) -> Iterator[tuple[str, str | None, Any]]:
        check_size(source, self.options)
        try:
            handle = source.open("rb")
        except OSError as exc:
            raise IngestError(str(source), f"cannot read file: {exc.strerror or exc}") from exc
        with handle:
            for number, raw in enumerate(handle, start=1):
                where = f"{source}:{number}"
                if number == 1:
                    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a BOM is tolerated, not required
                yield where, str(number), _parse_line(raw, where)

    def _json_document(self, source: Path) -> Iterator[tuple[str, str | None, Any]]:
        text = decode_bytes(read_checked(source, self.options), str(source))
        try:
            value = json.loads(text, parse_constant=_refuse_constant)
        except json.JSONDecodeError as exc:
            raise CorruptFileError(
                str(source), f"malformed JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
            ) from exc
        except ValueError as exc:
            raise CorruptFileError(str(source), f"malformed JSON: {exc}") from exc
        if isinstance(value, dict):
            yield str(source), None, value
        elif isinstance(value, list):
            for index, item in enumerate(value):
                yield f"{source}[{index}]", str(index), item
        else:
            raise CorruptFileError(
                str(source), f"expected an array of objects or one object, got {type(value).__name__}"
            )

    def _document(self, source: Path, where: str, fragment: str | None, record: Any) -> LoadedDocument:
        options = self.options
        if not isinstance(record, dict):
            raise CorruptFileError(where, f"expected a JSON object, got {_json_type(record)}")
        record = _clean(record)
        if options.text_field not in record:
            fields = ", ".join(sorted(record)) or "none"
            raise EmptyDocumentError(where, f"no {options.text_field!r} field (fields: {fields})")
        text = record[options.text_field]
        if not isinstance(text, str):
            raise CorruptFileError(where, f"field {options.text_field!r} is {_json_type(text)}, not a string")
        if not text.strip():
            raise EmptyDocumentError(where, f"field {options.text_field!r} has no text")
        if options.id_field is not None:
            if options.id_field not in record:
                raise CorruptFileError(where, f"no id field {options.id_field!r}")
            identifier = record[options.id_field]
            if isinstance(identifier, bool) or not isinstance(identifier, str | int):
                kind = _json_type(identifier)
                raise CorruptFileError(where, f"id field {options.id_field!r} is {kind}, not a string or integer")
            fragment = str(identifier)
        title = record.get(options.title_field) if options.title_field else None
        return LoadedDocument(
            uri=str(source) if fragment is None else f"{source}#{fragment}",
            text=_NEWLINES.sub("\n", text),
            metadata=self._metadata(source, record),
            title=title.strip() or None if isinstance(title, str) else None,
            mime="application/x-ndjson" if self.lines else "application/json",
        )

    def _metadata(self, source: Path, record: dict[str, Any]) -> dict[str, Any]:
        fields = self.options.metadata_fields
        if fields is None:
            chosen = {k: v for k, v in record.items() if k != self.options.text_field and isinstance(v, _SCALARS)}
        else:
            chosen = {k: record[k] for k in fields if k in record}
        chosen.update(base_metadata(source, "jsonl" if self.lines else "json"))
        return chosen


def _parse_line(raw: bytes, where: str) -> Any:
    """The JSON value of one line, ``_BLANK`` for a blank line, or the ``IngestError`` it is."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return DecodeError(where, f"not UTF-8: {exc.reason} at byte {exc.start}")
    if not line.strip():
        return _BLANK
    try:
        return json.loads(line.rstrip("\r\n"), parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        return CorruptFileError(where, f"malformed JSON: {exc.msg} (column {exc.colno})")
    except ValueError as exc:
        return CorruptFileError(where, f"malformed JSON: {exc}")


def _refuse_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON (and PostgreSQL's jsonb) do not.
    raise ValueError(f"{name} is not a JSON value")


def _clean(value: Any) -> Any:
    """Drop NUL characters, which PostgreSQL text and jsonb cannot store, from strings in ``value``."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    return value


def _label(where: str, source: str) -> str:
    """``path:7`` -> ``line 7``; ``path[3]`` -> ``record [3]``."""
    rest = where.removeprefix(source)
    return f"line {rest[1:]}" if rest.startswith(":") else f"record {rest}"


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")
