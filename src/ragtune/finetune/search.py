"""Hyperparameter search with Optuna: TPE sampling, median pruning, the study in our PostgreSQL.

Every trial is one real training run through ``train.start_run`` (in this process), named
``<study>-t<number>``, with the trial's learning rate, LoRA rank, alpha (a multiple of the rank),
dropout and epochs over the base configuration; the objective is the held-out eval loss, minimised.
The search space has defaults (:class:`SearchSpace`) and can be changed in a ``[search]`` table of
the training config::

    [search]
    learning_rate = [1e-5, 1e-3]    # log-uniform
    lora_r = [4, 8, 16, 32]          # categorical
    lora_alpha_factor = [1, 2, 4]    # lora.alpha = lora.r * factor
    lora_dropout = [0.0, 0.2]        # uniform
    epochs = [1, 3]                  # integers; not searched when max_steps > 0 (max_steps wins)
    evaluations = 4                  # intermediate evaluations per trial when eval_steps = 0
    random_trials = 5                # TPE's random start-up trials
    prune_after = 2                  # completed trials before median pruning starts
    warmup_evaluations = 1           # evaluations of a trial that are never pruned

Choices, stated:

* ``trials`` is the study's target, not a number of new trials: a search runs until the study
  holds that many finished trials (complete or pruned). Running the same command again after a
  kill finishes what is left; a larger number extends the study. Failed trials do not count, but
  one invocation makes at most as many attempts as trials were missing, so it always ends.
* Pruning: the trials evaluate every ``eval_steps`` (the config's, or the shortest trial's steps
  divided by ``evaluations``; one value per study, so the pruner compares the same steps) and once
  more at their last step. A callback reports each eval loss to the trial and stops the training
  when ``MedianPruner`` says so; the run then ends normally (its adapter saved, status
  ``completed``) and its record gets a note that it was pruned; the trial is ``PRUNED``.
* Storage: Optuna's ``RDBStorage`` in the project's PostgreSQL, in a schema of its own,
  ``optuna``. The study remembers its dataset and base model hashes, the configuration and the
  space; resuming with different ones is refused (their losses would not be comparable).
* Stale trials: a process holds a PostgreSQL advisory lock per trial while it trains it (on a
  connection of its own, so the server releases it when the process dies, however it dies). On
  start, a ``RUNNING`` trial whose lock nobody holds was left by a killed process: it is marked
  ``FAIL`` (with its run folder), and several processes may search one study at once.
* The sampler's seed is the config's ``seed`` plus the number of trials already in the study, so
  a resumed search does not draw its first parameters again.
* The best complete trial's run is registered (``ModelRegistry.register``) under the study's name
  or ``register_as``; its model version carries a ``ragtune.search`` tag (study, trial, value).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from ragtune.errors import ConfigError, DatasetError, ModelError, NotFoundError, TrainingError
from ragtune.finetune import runs
from ragtune.finetune.config import TuneConfig, to_dict
from ragtune.finetune.trainset import TrainSet
from ragtune.settings import Settings, read_toml

SCHEMA = "optuna"
TRIAL_LOCK = "ragtune.search.trial"  # advisory lock (hashtext(TRIAL_LOCK), trial_id) held while a trial trains
_STUDY_LOCK = "ragtune.search.study."
_INSTALL = "pip install 'ragtune[train]'"
_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,89}$")  # a run name once "-t<number>" is added


# -- the search space -----------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchSpace:
    learning_rate: tuple[float, float] = (1e-5, 1e-3)
    lora_r: tuple[int, ...] = (4, 8, 16, 32)
    lora_alpha_factor: tuple[int, ...] = (1, 2, 4)
    lora_dropout: tuple[float, float] = (0.0, 0.2)
    epochs: tuple[int, int] = (1, 3)
    evaluations: int = 4
    random_trials: int = 5
    prune_after: int = 2
    warmup_evaluations: int = 1

    def __post_init__(self) -> None:
        lo, hi = self.learning_rate
        _check("learning_rate", self.learning_rate, 0 < lo <= hi < 1, "[min, max] with 0 < min <= max < 1")
        _check("lora_r", list(self.lora_r), bool(self.lora_r) and all(1 <= r <= 1024 for r in self.lora_r)
               and len(set(self.lora_r)) == len(self.lora_r), "a list of distinct integers from 1 to 1024")
        _check("lora_alpha_factor", list(self.lora_alpha_factor), bool(self.lora_alpha_factor)
               and all(f >= 1 for f in self.lora_alpha_factor)
               and len(set(self.lora_alpha_factor)) == len(self.lora_alpha_factor),
               "a list of distinct positive integers")
        lo, hi = self.lora_dropout
        _check("lora_dropout", self.lora_dropout, 0 <= lo <= hi < 1, "[min, max] with 0 <= min <= max < 1")
        lo_e, hi_e = self.epochs
        _check("epochs", self.epochs, 1 <= lo_e <= hi_e, "[min, max] integers with 1 <= min <= max")
        _check("evaluations", self.evaluations, self.evaluations >= 1, "at least 1")
        _check("random_trials", self.random_trials, self.random_trials >= 1, "at least 1")
        _check("prune_after", self.prune_after, self.prune_after >= 1, "at least 1")
        _check("warmup_evaluations", self.warmup_evaluations, self.warmup_evaluations >= 0, "0 or more")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def _check(key: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise ConfigError(f"invalid search.{key}={value!r}: expected {expected}")


# TOML shapes: a pair of numbers, a list of integers, a pair of integers, an integer.
_SHAPES = {"learning_rate": "range", "lora_dropout": "range", "lora_r": "ints", "lora_alpha_factor": "ints",
           "epochs": "int_range", "evaluations": "int", "random_trials": "int", "prune_after": "int",
           "warmup_evaluations": "int"}


def space_from_dict(data: Mapping[str, Any], *, source: str | None = None) -> SearchSpace:
    """The ``[search]`` table, refusing unknown keys and values of the wrong shape (naming the key)."""
    where = f" in {source}" if source else ""
    unknown = sorted(set(data) - set(_SHAPES))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(f'search.{k}' for k in unknown)}{where}; known keys: "
                          + ", ".join(f"search.{k}" for k in _SHAPES))
    values: dict[str, Any] = {}
    for key, value in data.items():
        shape = _SHAPES[key]
        integer = isinstance(value, int) and not isinstance(value, bool)
        items = list(value) if isinstance(value, list) else None
        ints = items is not None and all(isinstance(v, int) and not isinstance(v, bool) for v in items)
        nums = items is not None and all(isinstance(v, int | float) and not isinstance(v, bool) for v in items)
        ok = {"int": integer, "ints": ints, "range": nums and len(items or ()) == 2,
              "int_range": ints and len(items or ()) == 2}[shape]
        if not ok:
            expected = {"int": "an integer", "ints": "a list of integers", "range": "[min, max] numbers",
                        "int_range": "[min, max] integers"}[shape]
            raise ConfigError(f"invalid search.{key}={value!r}{where}: expected {expected}")
        if shape == "range":
            values[key] = (float(value[0]), float(value[1]))
        elif shape in ("ints", "int_range"):
            values[key] = tuple(value)
        else:
            values[key] = value
    return SearchSpace(**values)


def load_space(path: str | Path | None = None) -> SearchSpace:
    """The ``[search]`` table of a training config (the defaults without one)."""
    if path is None:
        return SearchSpace()
    table = read_toml(path, what="training config").get("search", {})
    if not isinstance(table, dict):
        raise ConfigError(f"invalid search={table!r} in {path}: expected a table [search]")
    return space_from_dict(table, source=str(path))


def default_eval_steps(config: TuneConfig, space: SearchSpace, train_rows: int) -> int:
    """Steps between evaluations: the config's, or the shortest trial's steps / ``evaluations``."""
    if config.eval_steps > 0:
        return config.eval_steps
    if config.max_steps > 0:
        total = config.max_steps
    else:
        per_epoch = max(1, math.ceil(train_rows / config.batch_size) // config.grad_accum)
        total = math.ceil(per_epoch * space.epochs[0])
    return max(1, total // space.evaluations)


def suggest(trial: Any, space: SearchSpace, config: TuneConfig) -> TuneConfig:
    """The trial's configuration: the base one with the sampled parameters."""
    r = trial.suggest_categorical("lora_r", list(space.lora_r))
    factor = trial.suggest_categorical("lora_alpha_factor", list(space.lora_alpha_factor))
    changes: dict[str, Any] = {
        "learning_rate": trial.suggest_float("learning_rate", *space.learning_rate, log=True),
        "lora": {**to_dict(config)["lora"], "r": r, "alpha": r * factor,
                 "dropout": trial.suggest_float("lora_dropout", *space.lora_dropout)},
    }
    if config.max_steps == 0:
        changes["epochs"] = float(trial.suggest_int("epochs", *space.epochs))
    return config.replace(**changes)


# -- results --------------------------------------------------------------------------------------
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


@dataclass(frozen=True)
class SearchResult:
    study: str
    target: int  # finished trials the study should hold
    ran: tuple[int, ...]  # trial numbers run by this call
    marked_failed: tuple[int, ...]  # stale trials of killed processes, marked failed
    trials: tuple[TrialInfo, ...]  # every trial of the study
    best: TrialInfo | None
    registered: dict[str, Any] | None = None  # {"name", "version", "run_id"}
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["ran"], out["marked_failed"], out["notes"] = list(self.ran), list(self.marked_failed), list(self.notes)
        return out


# -- storage and locks ----------------------------------------------------------------------------
def _optuna() -> Any:
    try:
        import optuna
    except ImportError as exc:
        raise ModelError(f"the hyperparameter search needs optuna: {_INSTALL} ({exc})") from exc
    return optuna


def check_study_name(name: str) -> str:
    if not _STUDY_NAME.match(name):
        raise ConfigError(f"invalid study name {name!r}: letters, digits, '.', '_' and '-', at most 90")
    return name


class _Locks:
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
    import logging

    import psycopg

    from ragtune.finetune.registry import sqlalchemy_url
    from ragtune.store.database import resolve_database_url

    optuna = _optuna()
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


def _orphans(study: Any, locks: _Locks) -> Iterator[Any]:
    """The RUNNING trials nobody holds the lock of (their process died), each yielded while this
    process holds its lock."""
    for trial in study.get_trials(deepcopy=False, states=(_optuna().trial.TrialState.RUNNING,)):
        if locks.try_trial(trial._trial_id):
            try:
                yield trial
            finally:
                locks.release_trial(trial._trial_id)


def _sweep_stale(study: Any, locks: _Locks) -> list[int]:
    """Mark the orphaned trials failed, and their run folders."""
    optuna = _optuna()
    failed = []
    for trial in _orphans(study, locks):
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


def _best(trials: Any) -> Any:
    """The complete trial with the lowest eval loss (the earliest on a tie), or None."""
    complete = [t for t in trials if t.state == _optuna().trial.TrialState.COMPLETE]
    return min(complete, key=lambda t: (t.value, t.number)) if complete else None


# -- pruning --------------------------------------------------------------------------------------
def pruning_callback(trial: Any) -> Any:
    """A TrainerCallback that reports every eval loss to ``trial`` and stops the training when the
    pruner says so (never at the last step: the trial is complete then); it also asks for an
    evaluation at the last step when the schedule would skip it."""
    from transformers import TrainerCallback

    class Pruning(TrainerCallback):
        def __init__(self) -> None:
            self.reported: dict[int, float] = {}
            self.pruned_at: int | None = None
            self.max_steps = 0

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.max_steps = int(state.max_steps)
            if state.global_step >= state.max_steps and state.global_step not in self.reported:
                control.should_evaluate = True

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None,
                        **kwargs: Any) -> None:
            value = (metrics or {}).get("eval_loss")
            if value is None:
                return
            step = int(state.global_step)
            self.reported[step] = float(value)
            trial.report(float(value), step)
            if step < state.max_steps and trial.should_prune():
                self.pruned_at = step
                control.should_training_stop = True

    return Pruning()


# -- the search -----------------------------------------------------------------------------------
def search(*, settings: Settings, data: TrainSet, config: TuneConfig, trials: int, base: str = "smollm2",
           space: SearchSpace | None = None, study: str | None = None, register: bool = True,
           register_as: str | None = None, console: Console | None = None,
           on_trial: Callable[[TrialInfo], None] | None = None) -> SearchResult:
    """Run trials until the study holds ``trials`` finished ones; register the best (see the module)."""
    from ragtune.finetune.train import resolve_base

    space = space or SearchSpace()
    if trials < 1:
        raise ConfigError(f"invalid --trials {trials}: expected at least 1")
    data.check_method(config.method)
    if not data.train:
        raise DatasetError(f"dataset {data.name!r} has no training rows")
    if not data.eval:
        raise DatasetError(
            f"dataset {data.name!r} has no eval rows: the search minimises the held-out eval loss; import the dataset "
            "with `ragtune data import --eval-fraction 0.1` (or, for a file, set eval_fraction in the config)")
    name = check_study_name(study or data.name)
    model = resolve_base(base, settings.resolved_cache_dir)
    config = config.replace(eval_steps=default_eval_steps(config, space, len(data.train)))
    identity = {"dataset": data.name, "dataset_hash": data.content_hash, "base": model.name,
                "base_hash": model.hash, "config": to_dict(config), "space": space.to_dict()}
    optuna = _optuna()
    states = optuna.trial.TrialState
    with open_storage(settings) as store:
        locks = _Locks(store.database_url)
        try:
            with locks.study(name):
                found = _load(store.rdb, name)
                sampler_seed = (config.seed + (len(found.trials) if found is not None else 0)) % 2**32
                opened = optuna.create_study(
                    storage=store.rdb, study_name=name, direction="minimize", load_if_exists=True,
                    sampler=optuna.samplers.TPESampler(seed=sampler_seed, n_startup_trials=space.random_trials),
                    pruner=optuna.pruners.MedianPruner(
                        n_startup_trials=space.prune_after,
                        n_warmup_steps=config.eval_steps * space.warmup_evaluations + 1),
                )
                _check_identity(opened, identity)
                marked = _sweep_stale(opened, locks)
            finished = len(opened.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED)))
            ran: list[int] = []
            for _ in range(max(0, trials - finished)):
                if len(opened.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED))) >= trials:
                    break  # other processes searching the same study got there
                with locks.study(name):
                    trial = opened.ask()
                    locks.try_trial(trial._trial_id)
                try:
                    info = _run_trial(opened, trial, name=name, base=base, data=data, config=config, space=space,
                                      settings=settings, console=console)
                finally:
                    locks.release_trial(trial._trial_id)
                ran.append(trial.number)
                if on_trial is not None:
                    on_trial(info)
            all_trials = opened.get_trials(deepcopy=False)
            best = _best(all_trials)
        finally:
            locks.close()
    notes: list[str] = []
    registered = None
    if best is None:
        notes.append("no trial completed: nothing to register")
    elif register:
        registered = _register(settings, best, register_as or name, name)
    else:
        notes.append("--no-register: the best trial was not registered")
    if config.max_steps > 0:
        notes.append(f"epochs not searched: max_steps = {config.max_steps} sets every trial's length")
    return SearchResult(name, trials, tuple(ran), tuple(marked), tuple(TrialInfo.of(t) for t in all_trials),
                        TrialInfo.of(best) if best is not None else None, registered, tuple(notes))


def _load(storage: Any, name: str) -> Any:
    optuna = _optuna()
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def _check_identity(study: Any, identity: dict[str, Any]) -> None:
    """A new study records what it searches; an old one must be searched on the same things."""
    if study.direction != _optuna().study.StudyDirection.MINIMIZE:
        raise ConfigError(f"study {study.study_name!r} maximises its objective; ragtune's minimises the eval loss")
    recorded = study.user_attrs
    if "dataset_hash" not in recorded:
        for key, value in identity.items():
            study.set_user_attr(key, value)
        return
    changed = []
    for key in ("dataset_hash", "base_hash", "config", "space"):
        old, new = recorded.get(key), identity[key]
        if key in ("config", "space") and isinstance(old, dict):
            changed += [f"{key}.{k}" for k in sorted({*old, *new}) if old.get(k) != new.get(k)]
        elif old != new:
            changed.append(key)
    if changed:
        raise ConfigError(f"study {study.study_name!r} was searched with another {', '.join(changed)}; its eval "
                          "losses would not compare with these: choose another --study")


def _run_trial(study: Any, trial: Any, *, name: str, base: str, data: TrainSet, config: TuneConfig,
               space: SearchSpace, settings: Settings, console: Console | None) -> TrialInfo:
    """Train one trial and tell the study how it ended."""
    from ragtune.finetune.train import start_run

    states = _optuna().trial.TrialState
    try:
        tuned = suggest(trial, space, config)
        trial.set_user_attr("lora_alpha", tuned.lora.alpha)
        run_name = f"{name}-t{trial.number}"
        run_dir = runs.create_run_dir(settings.data_dir / "runs", run_name).resolve()
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("run_id", run_dir.name)
        callback = pruning_callback(trial)
        record = start_run(base=base, data=data, config=tuned, data_dir=settings.data_dir,
                           cache_dir=settings.resolved_cache_dir, name=run_name, output=run_dir, console=console,
                           callbacks=[callback])
    except TrainingError as exc:  # this trial's training failed (out of memory, NaN ...): the next may not
        trial.set_user_attr("error", exc.reason[:2000])
        return TrialInfo.of(study.tell(trial, state=states.FAIL))
    except BaseException as exc:  # bad config, missing libraries, Ctrl-C: the search stops
        trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:2000])
        study.tell(trial, state=states.FAIL)
        raise
    steps = record.metrics.get("steps")
    trial.set_user_attr("steps", steps)
    if callback.pruned_at is not None:
        value = callback.reported[callback.pruned_at]
        note = (f"pruned by the hyperparameter search (study {name!r}, trial {trial.number}): stopped at step "
                f"{callback.pruned_at} of {callback.max_steps}, eval loss {value:.4f} worse than the median of "
                "earlier trials at that step")
        with runs.run_lock(run_dir):
            runs.write_record(record.replace(notes=(*record.notes, note)))
        trial.set_user_attr("pruned_at_step", callback.pruned_at)
        return TrialInfo.of(study.tell(trial, state=states.PRUNED))
    value = record.metrics.get("eval_loss")
    if not isinstance(value, int | float) or not math.isfinite(value):
        trial.set_user_attr("error", f"no finite eval loss ({value!r})")
        return TrialInfo.of(study.tell(trial, state=states.FAIL))
    return TrialInfo.of(study.tell(trial, float(value)))


def _register(settings: Settings, best: Any, model_name: str, study: str) -> dict[str, Any]:
    from ragtune.finetune.registry import ModelRegistry

    run_dir = best.user_attrs.get("run_dir")
    if not run_dir:
        raise NotFoundError(f"the best trial {best.number} of study {study!r} has no run folder to register")
    registry = ModelRegistry(settings)
    version = registry.register(run_dir, model_name)
    registry.client.set_model_version_tag(version.name, str(version.version), "ragtune.search", json.dumps(
        {"study": study, "trial": best.number, "eval_loss": best.value, "params": best.params}))
    return {"name": version.name, "version": version.version, "run_id": version.run_id}


# -- inspection -----------------------------------------------------------------------------------
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
        names = [s.study_name for s in _optuna().get_all_study_summaries(store.rdb, include_best_trial=False)]
        return [_describe(store, name, with_trials=False) for name in sorted(names)]


def describe_study(settings: Settings, name: str) -> StudyInfo:
    with open_storage(settings) as store:
        return _describe(store, name, with_trials=True)


def _describe(store: StudyStorage, name: str, *, with_trials: bool) -> StudyInfo:
    study = _load(store.rdb, name)
    if study is None:
        raise NotFoundError(f"no study named {name!r} (see `ragtune tune studies`)")
    trials = study.get_trials(deepcopy=False)
    locks = _Locks(store.database_url)
    try:
        stale = {t.number for t in _orphans(study, locks)}  # read-only: nothing is marked
    finally:
        locks.close()
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    best = _best(trials)
    started = min((t.datetime_start for t in trials if t.datetime_start), default=None)
    shown = tuple(TrialInfo.of(t, "stale: its process is gone (marked failed when the search resumes)"
                               if t.number in stale else None) for t in trials) if with_trials else ()
    return StudyInfo(name, study.user_attrs.get("dataset"), counts, TrialInfo.of(best) if best else None,
                     started.isoformat(timespec="seconds") if started else None, shown)

