"""One versioned store for every model ragtune trains that is not a registered LoRA adapter:
rerankers, answerability models, and the readers and classifiers later issues train. Files in the
project's data folder, no database: a trained model is a folder of weights, and a folder is what
transformers loads.

Layout (the one rerankers and answerability models used before this store, so old data folders
read as they are)::

    <data_dir>/<kind.root>/<name>/
        v1/manifest.json          a published version: the manifest and the model's own files
        v2/...
        .tmp-<host>-<pid>-<hex>/  a version being written: never read, never listed

A version is written into a temporary folder beside the versions and published by one ``rename``
to ``v<N>``, so a reader sees all of a version or none of it, however the writer ends. Of two
writers that pick the same N, ``rename`` onto the other's non-empty folder fails (``ENOTEMPTY``)
and the loser takes the next number. A temporary folder whose writer died on this host is removed
by the next publish of that name (a pid alive again, reused, keeps it: never a live writer's).

The manifest (``SCHEMA`` 1) of every kind holds ``kind``, ``format`` (the layout of the model files,
checked by readers), ``schema``, ``name``, ``version``, ``created_at``, ``data`` (the training data:
``sha256``, ``rows``, ``held_out``, ``source``, ``split`` — the rule that kept held-out rows out of
training), ``metrics``, ``thresholds`` and ``hyperparameters``; a kind adds fields of its own
(``base_model``, ``collection``). A manifest without ``schema`` was written before this store: its
kind's ``upgrade`` turns it into these sections as it is read (``"legacy": true``), so every reader
knows one shape. ``read_manifest`` is the one reader: a folder that is missing, has no manifest,
holds another kind or a format this version cannot load is a ``ModelError`` naming the folder.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.errors import ConfigError, ModelError, NotFoundError

MANIFEST = "manifest.json"
SCHEMA = 1
TMP_PREFIX = ".tmp-"
SECTIONS = ("data", "metrics", "thresholds", "hyperparameters")
# Written by the store: a kind's own fields may not take these names.
RESERVED = frozenset({"kind", "format", "schema", "name", "version", "created_at", "legacy", *SECTIONS})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VERSION_DIR = re.compile(r"^v(\d+)$")


@dataclass(frozen=True)
class ArtefactKind:
    """What one kind of trained model is called, where its versions live and which format this
    version of ragtune reads. Declared by the module that reads the kind (``retrieve.rerank``,
    ``generate.answerability``): the trainer writes what the reader reads."""

    kind: str  # the manifest's "kind"
    format: int  # the layout of the model files that this version reads and writes
    root: str  # the folder under the data folder with one folder per name
    noun: str  # how messages call it: "reranker"
    train_command: str  # what makes one: "ragtune rerank train"
    # A manifest written before this store (no "schema") -> today's sections; None: such a
    # manifest is refused.
    upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.root):
            raise ConfigError(f"invalid artefact root {self.root!r} for kind {self.kind!r}: one folder name")

    def check_name(self, name: str) -> str:
        if not _NAME.match(name):
            raise ConfigError(f"invalid {self.noun} name {name!r}: use letters, digits, '.', '_' and '-'")
        return name


@dataclass(frozen=True)
class TrainingData:
    """What a version was trained on: enough to tell two trainings' data apart and to know which
    rows it never saw."""

    sha256: str | None  # of exactly the rows trained on (None only in an upgraded legacy manifest)
    rows: int  # rows trained on (triples, examples)
    source: Any  # where they came from, as JSON: a dataset name, a generator, a collection
    split: str  # the rule that kept the held-out rows out of training
    held_out: int | None = None  # rows held out to choose thresholds or weights; None: none
    counts: Mapping[str, int] = field(default_factory=dict)  # the kind's own counts ("queries")

    def __post_init__(self) -> None:
        if self.rows < 0 or (self.held_out is not None and self.held_out < 0):
            raise ConfigError(f"training data counts must not be negative: rows={self.rows}, held_out={self.held_out}")
        if not self.split.strip():
            raise ConfigError("the training data needs its split rule (how held-out rows were kept out)")
        clash = sorted(set(self.counts) & {"sha256", "rows", "source", "split", "held_out"})
        if clash:
            raise ConfigError(f"training data counts may not be named {', '.join(clash)}")

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "rows": self.rows, "held_out": self.held_out, "source": self.source,
                "split": self.split, **self.counts}


@dataclass(frozen=True)
class Artefact:
    """One published version: its folder and its manifest (as ``read_manifest`` returns it)."""

    name: str
    version: int
    path: Path
    manifest: dict[str, Any]

    @property
    def thresholds(self) -> dict[str, Any]:
        return dict(self.manifest.get("thresholds") or {})


def read_manifest(path: str | Path, kind: ArtefactKind, *, any_format: bool = False) -> dict[str, Any]:
    """The manifest of a version folder of ``kind``, a legacy one upgraded; ``ModelError`` naming
    the folder when it is missing, is not a trained model of this kind, or (unless ``any_format``:
    listing shows old versions too) holds a format this version cannot load."""
    path = Path(path).expanduser()
    again = f"train one with `{kind.train_command}`"
    if not path.is_dir():
        raise ModelError(f"{kind.noun} folder {path} does not exist; {again}")
    file = path / MANIFEST
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path} is not a trained ragtune {kind.noun} (no {MANIFEST}); {again}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{file}: unreadable {kind.noun} manifest ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("kind") != kind.kind:
        found = manifest.get("kind") if isinstance(manifest, dict) else type(manifest).__name__
        raise ModelError(f"{file} is not a ragtune {kind.noun} manifest (kind {found!r}, expected {kind.kind!r})")
    schema = manifest.get("schema")
    if schema is None:
        if kind.upgrade is None:
            raise ModelError(f"{file} has no manifest schema; train the {kind.noun} again with "
                             f"`{kind.train_command}`")
        try:
            manifest = {**kind.upgrade(manifest), "schema": SCHEMA, "legacy": True}
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{file}: cannot read this older {kind.noun} manifest ({type(exc).__name__}: "
                             f"{exc}); train it again with `{kind.train_command}`") from exc
    elif schema != SCHEMA:
        raise ModelError(f"{file} has manifest schema {schema!r}; this version of ragtune reads schema {SCHEMA}")
    bad = [s for s in SECTIONS if not isinstance(manifest.get(s), dict)]
    if bad:
        raise ModelError(f"{file}: the {kind.noun} manifest has no valid {', '.join(bad)} section(s)")
    if not any_format and manifest.get("format") != kind.format:
        raise ModelError(f"{path} is a {kind.noun} of format {manifest.get('format')!r}; this version reads "
                         f"format {kind.format}: train it again with `{kind.train_command}`")
    return manifest


class ArtefactStore:
    """The versions of one named artefact of one kind (``<data_dir>/<kind.root>/<name>/``).
    Cheap to construct: nothing is read or created before a call needs it."""

    def __init__(self, folder: str | Path, kind: ArtefactKind) -> None:
        self.folder = Path(folder).expanduser()
        self.kind = kind
        kind.check_name(self.folder.name)

    @classmethod
    def of(cls, data_dir: str | Path, kind: ArtefactKind, name: str) -> ArtefactStore:
        return cls(Path(data_dir).expanduser() / kind.root / kind.check_name(name), kind)

    @property
    def name(self) -> str:
        return self.folder.name

    # -- reading -----------------------------------------------------------------------------------
    def _numbers(self) -> dict[int, Path]:
        """Every ``v<N>`` folder, published or not (an empty one a person made is still a number taken)."""
        found: dict[int, Path] = {}
        if self.folder.is_dir():
            for child in self.folder.iterdir():
                m = _VERSION_DIR.match(child.name)
                if m and child.is_dir():
                    found[int(m.group(1))] = child
        return found

    def _published(self) -> list[tuple[int, Path]]:
        return sorted((n, p) for n, p in self._numbers().items() if (p / MANIFEST).is_file())

    def versions(self) -> list[Artefact]:
        """Every published version, oldest first, with its manifest (of any format)."""
        return [Artefact(self.name, n, p, read_manifest(p, self.kind, any_format=True)) for n, p in self._published()]

    def latest(self) -> Artefact:
        published = self._published()
        if not published:
            raise NotFoundError(f"no trained {self.kind.noun} named {self.name!r} in {self.folder.parent}; "
                                f"train one with `{self.kind.train_command}`")
        number, path = published[-1]
        return Artefact(self.name, number, path, read_manifest(path, self.kind, any_format=True))

    def get(self, version: int | None = None) -> Artefact:
        """A version by number, or the latest."""
        if version is None:
            return self.latest()
        path = self.folder / f"v{version}"
        if not (path / MANIFEST).is_file():
            have = [n for n, _ in self._published()]
            raise NotFoundError(f"{self.kind.noun} {self.name!r} has no version {version} (versions: {have or 'none'})")
        return Artefact(self.name, version, path, read_manifest(path, self.kind, any_format=True))

    # -- writing -----------------------------------------------------------------------------------
    def publish(self, write: Callable[[Path], None], *, data: TrainingData, metrics: Mapping[str, Any],
                thresholds: Mapping[str, Any], hyperparameters: Mapping[str, Any],
                fields: Mapping[str, Any] | None = None) -> Artefact:
        """Publish the next version: ``write`` fills an empty temporary folder with the model's files,
        the store adds the manifest and renames the folder to ``v<N>``. Whatever ``write`` raises,
        nothing is published and the temporary folder is removed."""
        fields = dict(fields or {})
        clash = sorted(RESERVED & set(fields))
        if clash:
            raise ConfigError(f"{self.kind.noun} manifest fields {', '.join(clash)} are written by the artefact store")
        manifest = {"kind": self.kind.kind, "format": self.kind.format, "schema": SCHEMA, "name": self.name,
                    "version": None, "created_at": None, "data": data.to_dict(), "metrics": dict(metrics),
                    "thresholds": dict(thresholds), "hyperparameters": dict(hyperparameters), **fields}
        json.dumps(manifest)  # not JSON: fail before any model file is written
        self.folder.mkdir(parents=True, exist_ok=True)
        self._sweep()
        tmp = self.folder / f"{TMP_PREFIX}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            write(tmp)
            manifest["created_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            number = self._rename(tmp, manifest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone after the rename; whatever a failure left
        path = self.folder / f"v{number}"
        return Artefact(self.name, number, path, read_manifest(path, self.kind))

    def _rename(self, tmp: Path, manifest: dict[str, Any]) -> int:
        taken = 0
        while True:
            number = max([taken, *self._numbers()]) + 1
            _write_durably(tmp / MANIFEST, json.dumps({**manifest, "version": number}, indent=2) + "\n")
            try:
                os.rename(tmp, self.folder / f"v{number}")
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                taken = number  # another writer published this number first
                continue
            _fsync_dir(self.folder)
            return number

    def _sweep(self) -> None:
        """Remove the temporary folders of writers on this host that are gone."""
        host = socket.gethostname()
        for child in self.folder.iterdir():
            if not child.name.startswith(TMP_PREFIX):
                continue
            parts = child.name[len(TMP_PREFIX):].rsplit("-", 2)
            if len(parts) == 3 and parts[0] == host and parts[1].isdigit() and not _alive(int(parts[1])):
                shutil.rmtree(child, ignore_errors=True)


def names(data_dir: str | Path, kind: ArtefactKind) -> list[str]:
    """The names with a published version of ``kind`` (a root may be shared with other kinds)."""
    root = Path(data_dir).expanduser() / kind.root
    out = []
    for child in sorted(root.iterdir()) if root.is_dir() else []:
        if not child.is_dir() or not _NAME.match(child.name):
            continue
        published = ArtefactStore(child, kind)._published()
        if published and _kind_of(published[-1][1]) == kind.kind:
            out.append(child.name)
    return out


def _kind_of(path: Path) -> Any:
    with contextlib.suppress(OSError, ValueError):
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        return manifest.get("kind") if isinstance(manifest, dict) else None
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _write_durably(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` survive a power cut (not every file system lets a folder be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
