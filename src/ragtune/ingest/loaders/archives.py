"""Archives read member by member: ``.zip`` (one that is not a DOCX) and ``.tar`` (also ``.tgz`` and
``.tar.gz``/``.tar.bz2``/``.tar.xz``, which tarfile expands as it reads). Each regular member is read
by the loader the same registry chooses for it (by its name, then its content), and its documents
are named ``ARCHIVE!/MEMBER`` (``docs.zip!/guide/intro.md``). Members are also what e-mail
attachments are read as (``mail.py``): ``read_member`` is the one way a file inside a file is read.

Limits (the hardening issue's, ``containers.py``): a zip is checked whole by ``check_zip`` before any
member is read (declared and actual sizes, ratio, member count, no nested zip); a tar's members are
counted and their sizes added as they stream past, refused past ``max_container_members`` or
``max_expanded_bytes``. Only regular files are read: links, devices and folders are skipped, and a
member's name never reaches the file system (it is read from a temporary file named after its last
part). An archive inside an archive is refused, member by member. A member that fails is reported
as its own failure (``ARCHIVE!/MEMBER: reason``) and the other members are still read.
"""

from __future__ import annotations

import dataclasses
import io
import re
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath

from ragtune.errors import CorruptFileError, ExpansionLimitError, IngestError
from ragtune.ingest.loaders.base import LoaderOptions, read_checked
from ragtune.ingest.loaders.containers import NESTED_ARCHIVE, check_zip, size
from ragtune.ingest.loaders.jsonl import BadRecordsError
from ragtune.models import LoadedDocument
from ragtune.protocols import Loader

Choose = Callable[[Path, LoaderOptions], Loader]
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


class ArchiveLoader:
    """Loaders of files that hold files, each read by the loader ``choose`` gives it (the registry's
    ``loader_for``, passed in so this module needs no registry); an archive inside an archive is
    refused."""

    def __init__(self, options: LoaderOptions | None, choose: Choose) -> None:
        self.options = options or LoaderOptions()
        self.choose = choose


def read_member(source: str, name: str, data: bytes, choose: Choose, options: LoaderOptions,
                uri: str | None = None) -> Iterator[LoadedDocument]:
    """The documents of one file named ``name`` held in ``source`` (an archive member, an
    attachment, a gzip file's content), as ``uri`` (default ``source!/name``); raises
    ``IngestError`` naming that."""
    uri = uri or f"{source}!/{name}"
    if not data:
        raise IngestError(uri, "empty file (0 bytes)")
    leaf = _UNSAFE.sub("_", PurePosixPath(name).name) or "member"
    with tempfile.TemporaryDirectory(prefix="ragtune-member-") as folder:
        path = Path(folder) / leaf
        path.write_bytes(data)
        try:
            loader = choose(path, options)
            if isinstance(loader, ArchiveLoader):
                raise ExpansionLimitError(uri, "an archive inside an archive is not read", NESTED_ARCHIVE)
            for doc in loader.load(path):  # yielded as they come: a later failure keeps the earlier ones
                yield _renamed(doc, str(path), uri, source)
        except BadRecordsError as exc:
            raise BadRecordsError(uri, [_renamed_error(f, str(path), uri) for f in exc.failures], exc.total) from None
        except IngestError as exc:
            raise _renamed_error(exc, str(path), uri) from None


def read_members(source: str, members: Iterable[tuple[str, bytes]], choose: Choose, options: LoaderOptions
                 ) -> Iterator[LoadedDocument]:
    """Every member's documents; the failed members are raised together at the end, after the
    others were yielded (``BadRecordsError``, which ``load_files`` reports one failure each)."""
    failures: list[IngestError] = []
    count = 0
    for name, data in members:
        count += 1
        try:
            yield from read_member(source, name, data, choose, options)
        except BadRecordsError as exc:
            failures.extend(exc.failures)
        except IngestError as exc:
            failures.append(exc)
    if count == 0:
        raise IngestError(source, "an archive with no files")
    if failures:
        raise BadRecordsError(source, failures, count)


class ZipArchiveLoader(ArchiveLoader):
    def load(self, source: Path) -> Iterator[LoadedDocument]:
        data = read_checked(source, self.options)
        check_zip(data, str(source), self.options, kind="zip archive")
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            files = [m for m in archive.infolist() if not m.is_dir()]
            yield from read_members(str(source), ((m.filename, archive.read(m)) for m in files), self.choose,
                                    self.options)


class TarArchiveLoader(ArchiveLoader):
    def load(self, source: Path) -> Iterator[LoadedDocument]:
        data = read_checked(source, self.options)
        try:
            archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")  # noqa: SIM115 (closed by the with below)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise CorruptFileError(str(source), f"unreadable tar archive: {exc}") from None
        with archive:
            yield from read_members(str(source), self._members(archive, str(source)), self.choose, self.options)

    def _members(self, archive: tarfile.TarFile, source: str) -> Iterator[tuple[str, bytes]]:
        options = self.options
        seen = expanded = 0
        try:
            for member in archive:  # streamed: headers are read as the loop goes
                seen += 1
                if seen > options.max_container_members:
                    raise ExpansionLimitError(source, f"a tar archive of over {options.max_container_members:,} "
                                                      "members, over max_container_members", "max_container_members")
                if not member.isreg():
                    continue  # folders, links, devices: nothing to read, and nothing to follow
                expanded += member.size
                if expanded > options.max_expanded_bytes:
                    raise ExpansionLimitError(source, f"expands past {size(options.max_expanded_bytes)}, over "
                                                      "max_expanded_bytes", "max_expanded_bytes")
                handle = archive.extractfile(member)
                if handle is not None:
                    yield member.name, handle.read(member.size)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise CorruptFileError(source, f"unreadable tar archive: {exc}") from None


def _renamed(doc: LoadedDocument, inner: str, uri: str, source: str) -> LoadedDocument:
    renamed = uri + doc.uri[len(inner):] if doc.uri.startswith(inner) else doc.uri
    metadata = {**doc.metadata, "container": source}
    if metadata.get("source_path") == inner:
        metadata["source_path"] = uri
    return dataclasses.replace(doc, uri=renamed, metadata=metadata)


def _renamed_error(exc: IngestError, inner: str, uri: str) -> IngestError:
    source = exc.source.replace(inner, uri) if inner in exc.source else uri
    reason = exc.reason.replace(inner, uri)
    try:
        return type(exc)(source, reason)
    except TypeError:  # an error type with other constructor arguments
        return IngestError(source, reason)
