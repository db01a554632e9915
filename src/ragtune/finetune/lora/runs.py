"""Training run folders: ``<data_dir>/runs/<name>-<timestamp>/``, one per training.

A run folder holds::

    run.json        the RunRecord (everything a model registry needs; rewritten as the run goes)
    status.json     {"status": running | completed | failed, ...}, replaced atomically
    config.toml     the resolved training configuration (starts another run as is)
    chat_template.jinja  the chat template trained with (the base's own or the one the config chose)
    data/           the exact rows trained on (train.jsonl, eval.jsonl): resume and DDP workers read them
    checkpoints/    checkpoint-<step>/ every `save_steps` (adapter, optimiser, scheduler, RNG, trainer state)
    adapter/        the final LoRA adapter (PEFT format; ``generator_adapter`` serves it)
    .lock           held (flock) by the process that trains in the folder

Folders are created with ``os.mkdir``, which fails if the folder exists, so two trainings of the
same name at once never share one (the second gets a ``-2`` suffix). A run whose status says
``running`` while nobody holds its lock was killed (SIGKILL, the OOM killer, a power cut): reading
its status marks it failed, which is what a registry should see.

The seam for the model registry (MLflow, later) is :class:`RunRecord`: parameters, metrics, the
dataset and base model hashes and the adapter folder, all in one JSON-ready value.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import json
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.errors import ConfigError, NotFoundError, RagtuneError, RunBusyError

STATUSES = ("running", "completed", "failed")
CHAT_TEMPLATE_FILE = "chat_template.jinja"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Files a checkpoint needs before it can be resumed (trainer_state.json is written last).
_CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")


@dataclass(frozen=True)
class RunRecord:
    """Everything about one training run, JSON-ready; what a model registry records."""

    run_id: str
    name: str
    path: str
    method: str
    base: str
    base_path: str
    base_hash: str
    dataset: str
    dataset_version: int | None
    dataset_hash: str
    train_rows: int
    eval_rows: int
    config: dict[str, Any]
    status: str = "running"
    started_at: str = ""
    finished_at: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    adapter: str | None = None
    world_size: int = 1
    forced_reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    error: str | None = None
    # {"name": base | chatml | llama3 | zephyr | a file's path, "sha256": of the text}; None before templates
    # were recorded (those runs trained with the base's own)
    chat_template: dict[str, str] | None = None
    # a mix of datasets (``trainset.MixPart.to_dict``: name, version, content_hash, weight, rows, taken,
    # eval_rows); empty for one dataset taken whole
    mix: tuple[dict[str, Any], ...] = ()
    # the trace of each session of the run (a resume is another), when tracing was on (``lora.train``)
    trace_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["forced_reasons"], out["notes"], out["mix"] = list(self.forced_reasons), list(self.notes), list(self.mix)
        out["trace_ids"] = list(self.trace_ids)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["forced_reasons"] = tuple(values.get("forced_reasons", ()))
        values["notes"] = tuple(values.get("notes", ()))
        values["mix"] = tuple(values.get("mix", ()))
        values["trace_ids"] = tuple(values.get("trace_ids", ()))
        return cls(**values)

    def replace(self, **changes: Any) -> RunRecord:
        return dataclasses.replace(self, **changes)

    def params(self) -> dict[str, Any]:
        """Flat parameters (``lora.r``), as a registry logs them."""
        flat: dict[str, Any] = {}
        for key, value in self.config.items():
            if isinstance(value, dict):
                flat.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                flat[key] = value
        return {**flat, "base": self.base, "dataset": self.dataset, "world_size": self.world_size}


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(f"invalid run name {name!r}: letters, digits, '.', '_' and '-', at most 100")
    return name


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` so a reader sees the old file or the new one, never half of either."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def create_run_dir(runs_dir: Path, name: str) -> Path:
    """A new, empty folder ``<name>-<UTC timestamp>[-N]``; ``mkdir`` is atomic, so concurrent
    trainings of one name always get different folders."""
    check_name(name)
    runs_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        path = runs_dir / (f"{name}-{stamp}" if n == 1 else f"{name}-{stamp}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise RagtuneError(f"cannot create a run folder for {name!r} in {runs_dir}")  # pragma: no cover


def claim_output_dir(path: Path) -> Path:
    """``--output DIR``: a folder that does not exist yet or is empty."""
    path = path.expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir()
    except FileExistsError:
        if not path.is_dir() or any(path.iterdir()):
            raise ConfigError(f"--output {path} exists and is not empty; pass --resume to continue the run "
                              "in it, or choose another folder") from None
    return path


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run's lock for the duration of a training; refuse if another process holds it."""
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunBusyError(run_dir, "another process is training in this folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def _locked(run_dir: Path) -> bool:
    try:
        fd = os.open(run_dir / ".lock", os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def set_status(run_dir: Path, status: str, **extra: Any) -> dict[str, Any]:
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    data = {"status": status, "updated_at": now(), "pid": os.getpid(), "host": socket.gethostname(), **extra}
    write_json(run_dir / "status.json", data)
    return data


def read_status(run_dir: Path) -> dict[str, Any]:
    """The run's status; a ``running`` run that nobody trains any more is marked failed first."""
    path = run_dir / "status.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotFoundError(f"no training run at {run_dir} (status.json missing)") from None
    if data.get("status") == "running" and not _locked(run_dir):
        error = f"interrupted: process {data.get('pid')} stopped without finishing (killed or out of memory)"
        data = set_status(run_dir, "failed", error=error)
        record = read_record(run_dir)
        if record is not None and record.status == "running":
            write_record(record.replace(status="failed", error=error, finished_at=data["updated_at"]))
    return data


def write_record(record: RunRecord) -> None:
    write_json(Path(record.path) / "run.json", record.to_dict())


def read_record(run_dir: Path) -> RunRecord | None:
    try:
        return RunRecord.from_dict(json.loads((run_dir / "run.json").read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None


def list_runs(runs_dir: Path, name: str | None = None) -> list[RunRecord]:
    """Runs in ``runs_dir`` (of ``name`` if given), oldest first, stale ``running`` ones marked failed."""
    if not runs_dir.is_dir():
        return []
    out: list[RunRecord] = []
    for path in sorted(runs_dir.iterdir()):
        record = read_record(path) if path.is_dir() else None
        if record is None or (name is not None and record.name != name):
            continue
        if read_status(path)["status"] != record.status:  # a stale run was just marked failed
            record = read_record(path) or record
        out.append(record)
    return sorted(out, key=lambda r: (r.started_at, r.run_id))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (a kill during a save leaves the newest one incomplete)."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return None
    found = sorted(((int(m.group(1)), p) for p in folder.iterdir() if (m := _CHECKPOINT.match(p.name))), reverse=True)
    for _, path in found:
        if all((path / f).is_file() for f in _CHECKPOINT_FILES):
            try:
                json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))["global_step"]
            except (ValueError, KeyError):
                continue
            return path
    return None


def resumable_run(runs_dir: Path, name: str) -> Path:
    """The newest run of ``name`` that did not complete."""
    candidates = [r for r in list_runs(runs_dir, name) if r.status != "completed"]
    if not candidates:
        raise NotFoundError(f"no unfinished run named {name!r} in {runs_dir} to resume")
    return Path(candidates[-1].path)
