"""The Optuna studies of the hyperparameter search (``search``), kept in the project's PostgreSQL:
the storage (Optuna's ``RDBStorage`` in a schema of its own, ``optuna``), the locks that tell a
trial being trained from one a killed process left, and reading studies back (``ragtune tune
studies|study``).

Stale trials: a process holds a PostgreSQL advisory lock per trial while it trains it, on a
connection of its own, so the server releases it when the process dies, however it dies. A
``RUNNING`` trial whose lock nobody holds was left by a killed process: a search marks it ``FAIL``
(``sweep_stale``, with its run folder); reading a study only reports it.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from ragtune.errors import ConfigError, NotFoundError
from ragtune.extras import require
from ragtune.finetune.lifecycle.tracking import sqlalchemy_url
from ragtune.finetune.lora import runs
from ragtune.settings import Settings
from ragtune.store.database import resolve_database_url

SCHEMA = "optuna"
TRIAL_LOCK = "ragtune.search.trial"  # advisory lock (hashtext(TRIAL_LOCK), trial_id) held while a trial trains
_STUDY_LOCK = "ragtune.search.study."
_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,89}$")  # a run name once "-t<number>" is added


@dataclass(frozen=True)
class TrialInfo:
    number: int
    state: str  # COMPLETE | PRUNED | FAIL | RUNNING | WAITING
    value: float | None  # the final eval loss (a pruned trial: its last reported one)
    params: dict[str, Any]
    run_dir: str | None = None
    steps: int | None = None
    note: str | None = None  # why it failed, where it was pruned, or that it is stale

    @classmethod
    def of(cls, trial: Any, note: str | None = None) -> TrialInfo:
        attrs = trial.user_attrs
        params = {**trial.params, **({"lora_alpha": attrs["lora_alpha"]} if "lora_alpha" in attrs else {})}
        if note is None and "pruned_at_step" in attrs:
            note = f"pruned at step {attrs['pruned_at_step']}"
        return cls(trial.number, trial.state.name, trial.value, params, attrs.get("run_dir"), attrs.get("steps"),
                   note or attrs.get("error"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def optuna_module() -> Any:
    return require("optuna", "train", "the hyperparameter search")


def check_study_name(name: str) -> str:
    if not _STUDY_NAME.match(name):
        raise ConfigError(f"invalid study name {name!r}: letters, digits, '.', '_' and '-', at most 90")
    return name


class TrialLocks:
    """A connection of our own holding per-trial advisory locks (released by the server when it dies)."""

    def __init__(self, database_url: str) -> None:
        import psycopg

        self.conn = psycopg.connect(database_url, autocommit=True)

    def try_trial(self, trial_id: int) -> bool:
        row = self.conn.execute("SELECT pg_try_advisory_lock(hashtext(%s), %s)", (TRIAL_LOCK, trial_id)).fetchone()
        return bool(row and row[0])

    def release_trial(self, trial_id: int) -> None:
        self.conn.execute("SELECT pg_advisory_unlock(hashtext(%s), %s)", (TRIAL_LOCK, trial_id))

    @contextmanager
    def study(self, name: str) -> Iterator[None]:
        """Serialises trial creation and the stale sweep of one study across processes."""
        self.conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (_STUDY_LOCK + name,))
        try:
            yield
        finally:
            self.conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (_STUDY_LOCK + name,))

    def close(self) -> None:
        self.conn.close()


@dataclass(frozen=True)
class StudyStorage:
    rdb: Any  # optuna.storages.RDBStorage
    database_url: str


@contextmanager
def open_storage(settings: Settings) -> Iterator[StudyStorage]:
    """Optuna's RDBStorage in the project's PostgreSQL, schema ``optuna`` (created if missing)."""
    optuna = optuna_module()
    for noisy in ("optuna", "alembic"):  # study creation and table migrations log at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    url = resolve_database_url(settings.database_url, settings.data_dir)
    with psycopg.connect(url, autocommit=True) as conn:  # one process creates the schema and tables
        conn.execute("SELECT pg_advisory_lock(hashtext('ragtune.search.schema'))")
        try:
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{SCHEMA}"')
            storage = optuna.storages.RDBStorage(sqlalchemy_url(url, SCHEMA), engine_kwargs={"pool_pre_ping": True})
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext('ragtune.search.schema'))")
    try:
        yield StudyStorage(storage, url)
    finally:
        storage.engine.dispose()


def orphans(study: Any, locks: TrialLocks) -> Iterator[Any]:
    """The RUNNING trials nobody holds the lock of (their process died), each yielded while this
    process holds its lock."""
    for trial in study.get_trials(deepcopy=False, states=(optuna_module().trial.TrialState.RUNNING,)):
        if locks.try_trial(trial._trial_id):
            try:
                yield trial
            finally:
                locks.release_trial(trial._trial_id)


def sweep_stale(study: Any, locks: TrialLocks) -> list[int]:
    """Mark the orphaned trials failed, and their run folders."""
    optuna = optuna_module()
    failed = []
    for trial in orphans(study, locks):
        try:
            reason = "interrupted: its process stopped without finishing (killed or out of memory)"
            study._storage.set_trial_user_attr(trial._trial_id, "error", reason)
            study._storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL)
            failed.append(trial.number)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # finished meanwhile
        run_dir = trial.user_attrs.get("run_dir")
        if run_dir and Path(run_dir, "status.json").is_file():
            runs.read_status(Path(run_dir))  # a run left "running" without its lock is marked failed
    return failed


def best_trial(trials: Any) -> Any:
    """The complete trial with the lowest eval loss (the earliest on a tie), or None."""
    complete = [t for t in trials if t.state == optuna_module().trial.TrialState.COMPLETE]
    return min(complete, key=lambda t: (t.value, t.number)) if complete else None


def load_study(storage: Any, name: str) -> Any:
    optuna = optuna_module()
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


@dataclass(frozen=True)
class StudyInfo:
    name: str
    dataset: str | None
    counts: dict[str, int]  # trials by state
    best: TrialInfo | None
    started: str | None
    trials: tuple[TrialInfo, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def list_studies(settings: Settings) -> list[StudyInfo]:
    with open_storage(settings) as store:
        names = [s.study_name for s in optuna_module().get_all_study_summaries(store.rdb, include_best_trial=False)]
        return [_describe(store, name, with_trials=False) for name in sorted(names)]


def describe_study(settings: Settings, name: str) -> StudyInfo:
    with open_storage(settings) as store:
        return _describe(store, name, with_trials=True)


def _describe(store: StudyStorage, name: str, *, with_trials: bool) -> StudyInfo:
    study = load_study(store.rdb, name)
    if study is None:
        raise NotFoundError(f"no study named {name!r} (see `ragtune tune studies`)")
    trials = study.get_trials(deepcopy=False)
    locks = TrialLocks(store.database_url)
    try:
        stale = {t.number for t in orphans(study, locks)}  # read-only: nothing is marked
    finally:
        locks.close()
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    best = best_trial(trials)
    started = min((t.datetime_start for t in trials if t.datetime_start), default=None)
    shown = tuple(TrialInfo.of(t, "stale: its process is gone (marked failed when the search resumes)"
                               if t.number in stale else None) for t in trials) if with_trials else ()
    return StudyInfo(name, study.user_attrs.get("dataset"), counts, TrialInfo.of(best) if best else None,
                     started.isoformat(timespec="seconds") if started else None, shown)
