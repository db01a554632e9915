"""Remote document sources: the ``Connector`` protocol, the objects it lists, and how their bytes
reach the same loaders as files.

A connector lists what a source holds (``list``: its one required method); each ``RemoteObject``
carries its ETag and a ``read`` that fetches its bytes only when called, so a sync compares ETags
first and downloads only what changed (``changed_objects``). A downloaded object is written to a
temporary file named like its key (the suffix picks the loader, the content is sniffed as for any
file) and read by ``load_files``; its documents get the object's URI (``s3://bucket/key``, with the
loaders' own ``#record`` / ``!/member`` parts), ``source_path`` and ``etag`` in their metadata. The
ETag is stored there, with the loader's metadata, so the next sync finds it with the document.

Concession: an object is held in memory once while it is written to its temporary file (the size
is checked against ``max_file_bytes`` from the listing first, and again on what arrived).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ragtune.errors import FileTooLargeError, IngestError, RagtuneError
from ragtune.ingest.loaders.base import LoaderOptions
from ragtune.ingest.loaders.discover import load_files
from ragtune.models import FileWarning, LoadedDocument
from ragtune.plugins import Plugins
from ragtune.progress import emit
from ragtune.protocols import Progress

ETAG = "etag"  # the metadata key a synced document's object ETag is stored under
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class RemoteObject:
    """One object of a remote source. ``uri`` is what its documents are stored under
    (``s3://bucket/key``); ``etag`` changes whenever its bytes do; ``read`` fetches the bytes (a
    download: called only for objects that changed)."""

    uri: str
    etag: str
    size: int
    modified: str | None = None  # ISO 8601, as the source reports it
    read: Callable[[], bytes] = field(default=lambda: b"", compare=False, repr=False)


@runtime_checkable
class Connector(Protocol):
    """A remote source of documents. ``uri`` is the source as given (``s3://bucket/prefix``): the
    URIs of what ``list`` yields start with it, and a sync removes the stored documents under it
    whose object is gone. ``list`` raises a ``RagtuneError`` naming the source (a bucket that does
    not exist, credentials refused) before yielding anything when the source cannot be listed."""

    uri: str

    def list(self) -> Iterator[RemoteObject]: ...


@dataclass(frozen=True)
class Stored:
    """What a sync needs of a stored document: its ETag and given attributes."""

    uri: str
    etag: str | None
    acl: tuple[str, ...]
    user_metadata: Mapping[str, Any]


def source_root(uri: str) -> str:
    """The "folder" a source URI names, up to which a new object inherits the ACL and metadata of
    stored documents (as a synced folder's files do): ``s3://b/hr/`` -> ``s3://b/hr``;
    ``s3://b/hr`` (a string prefix) -> ``s3://b``."""
    scheme, _, rest = uri.partition("://")
    if "/" not in rest:
        return uri
    return f"{scheme}://{rest.rsplit('/', 1)[0]}"


def file_of(uri: str) -> str:
    """The object a document's URI comes from: without its record (``#``) or member (``!/``) part."""
    return uri.split("#", 1)[0].split("!/", 1)[0]


def changed_objects(objects: Sequence[RemoteObject], stored: Iterable[Stored], *,
                    metadata: Mapping[str, Any] | None, acl: Iterable[str] | None
                    ) -> tuple[list[RemoteObject], list[str]]:
    """The objects to download, and the URIs of the stored documents left as they are: those of an
    object whose ETag every one of its documents stores, when the run gives no attributes that
    differ from theirs (new ones are applied by the pipeline, which needs the text)."""
    given_acl = tuple(sorted(set(acl))) if acl is not None else None
    by_object: dict[str, list[Stored]] = {}
    for doc in stored:
        by_object.setdefault(file_of(doc.uri), []).append(doc)
    todo: list[RemoteObject] = []
    kept: list[str] = []
    for obj in objects:
        docs = by_object.get(obj.uri, [])
        same = bool(docs) and all(
            d.etag == obj.etag and (given_acl is None or d.acl == given_acl)
            and (metadata is None or dict(d.user_metadata) == dict(metadata)) for d in docs)
        if same:
            kept.extend(d.uri for d in docs)
        else:
            todo.append(obj)
    return todo, kept


def load_objects(objects: Sequence[RemoteObject], options: LoaderOptions, plugins: Plugins, *,
                 warnings_to: list[FileWarning] | None = None, progress: Progress | None = None
                 ) -> Iterator[LoadedDocument | IngestError]:
    """The documents of ``objects``, downloaded one at a time as the pipeline asks for them and read
    by the loaders of files; a failure (download, size, format) is yielded in place, named by the
    object's URI. "files" progress events count the objects read."""
    emit(progress, "files", 0, len(objects))
    folder = Path(tempfile.mkdtemp(prefix="ragtune-remote-"))
    try:
        for done, obj in enumerate(objects):
            emit(progress, "files", done, len(objects), detail=obj.uri.rsplit("/", 1)[-1])
            yield from _load_one(obj, folder / f"{done:06d}", options, plugins, warnings_to)
        emit(progress, "files", len(objects), len(objects))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _load_one(obj: RemoteObject, folder: Path, options: LoaderOptions, plugins: Plugins,
              warnings_to: list[FileWarning] | None) -> Iterator[LoadedDocument | IngestError]:
    if obj.size > options.max_file_bytes:  # refused from the listing, without a download
        yield FileTooLargeError(obj.uri, f"{obj.size} bytes is over max_file_bytes={options.max_file_bytes}")
        return
    try:
        data = obj.read()
    except RagtuneError as exc:
        yield IngestError(obj.uri, getattr(exc, "reason", str(exc)))
        return
    if len(data) > options.max_file_bytes:
        yield FileTooLargeError(obj.uri, f"over max_file_bytes={options.max_file_bytes} while downloading")
        return
    folder.mkdir()
    path = folder / local_name(obj.uri)
    path.write_bytes(data)
    del data
    local = str(path)
    found: list[FileWarning] = []
    try:
        for item in load_files([path], options, plugins, warnings_to=found):
            if isinstance(item, LoadedDocument):
                meta = {**item.metadata, "source_path": obj.uri, ETAG: obj.etag}
                yield dataclasses.replace(item, uri=_rename(item.uri, local, obj.uri), metadata=meta)
            else:
                yield _renamed_error(item, local, obj.uri)
    finally:
        path.unlink(missing_ok=True)
    if warnings_to is not None:
        warnings_to.extend(dataclasses.replace(w, source=_rename(w.source, local, obj.uri)) for w in found)


def local_name(uri: str) -> str:
    """A safe file name keeping the key's last part and its suffixes (``report.tar.gz``), by which
    the loaders choose; a key without a name part (``dir/``) becomes ``object``."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    safe = _UNSAFE.sub("_", name).lstrip(".")[:200]
    return safe or "object"


def _rename(uri: str, local: str, remote: str) -> str:
    return remote + uri[len(local):] if uri.startswith(local) else uri


def _renamed_error(error: IngestError, local: str, remote: str) -> IngestError:
    source = _rename(error.source, local, remote)
    try:
        return type(error)(source, error.reason)
    except TypeError:  # an error type with another constructor
        return IngestError(source, error.reason)
