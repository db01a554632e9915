"""Hyperparameter search with Optuna: TPE sampling, median pruning, the study in our PostgreSQL.

Every trial is one real training run through ``lora.train.start_run`` (in this process), named
``<study>-t<number>``, with the trial's learning rate, LoRA rank, alpha (a multiple of the rank),
dropout and epochs over the base configuration; the objective is the held-out eval loss, minimised.
The search space (``search_space``) has defaults and can be changed in a ``[search]`` table of the
training config; the studies live in our PostgreSQL (``studies``).

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
* Stale trials: on start, a ``RUNNING`` trial whose lock nobody holds was left by a killed process
  and is marked ``FAIL`` (``studies``), so several processes may search one study at once.
* The sampler's seed is the config's ``seed`` plus the number of trials already in the study, so
  a resumed search does not draw its first parameters again.
* The best complete trial's run is registered (``ModelRegistry.register``) under the study's name
  or ``register_as``; its model version carries a ``ragtune.search`` tag (study, trial, value).

Progress (``protocols.Progress``): "trials", the study's finished trials of the target, sent at the
start and after each trial this call runs (``detail``: that trial's number, state, eval loss and
parameters; ``metrics["eval_loss"]``), and each trial's "training" events (``lora.train``),
which start again at 0 for every trial.
"""


from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from ragtune.errors import ConfigError, DatasetError, NotFoundError, TrainingError
from ragtune.finetune.lifecycle.registry import ModelRegistry
from ragtune.finetune.lifecycle.search_space import SearchSpace, default_eval_steps, suggest
from ragtune.finetune.lifecycle.studies import (
    TrialInfo,
    TrialLocks,
    best_trial,
    check_study_name,
    load_study,
    open_storage,
    optuna_module,
    sweep_stale,
)
from ragtune.finetune.lora import runs
from ragtune.finetune.lora.config import TuneConfig, to_dict
from ragtune.finetune.lora.train import resolve_base, start_run
from ragtune.finetune.lora.trainset import TrainSet
from ragtune.observe.tracing import Tracing, run_span, set_attributes
from ragtune.progress import emit
from ragtune.protocols import Progress
from ragtune.settings import Settings


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


def search(*, settings: Settings, data: TrainSet, config: TuneConfig, trials: int, base: str = "smollm2",
           space: SearchSpace | None = None, study: str | None = None, register: bool = True,
           register_as: str | None = None, progress: Progress | None = None,
           tracing: Tracing | None = None) -> SearchResult:
    """Run trials until the study holds ``trials`` finished ones; register the best (see the module).
    With ``tracing`` the search is a ``tune-search`` trace, each trial's ``train`` span below it."""
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
    optuna = optuna_module()
    states = optuna.trial.TrialState
    with open_storage(settings) as store, run_span(tracing, "tune-search", {
            "ragtune.study": name, "ragtune.dataset": data.name, "ragtune.dataset_hash": data.content_hash,
            "ragtune.model": model.name, "ragtune.base_hash": model.hash, "ragtune.trials": trials},
            f"study {name}: up to {trials} trials on {data.name}") as span:
        locks = TrialLocks(store.database_url)
        try:
            with locks.study(name):
                found = load_study(store.rdb, name)
                sampler_seed = (config.seed + (len(found.trials) if found is not None else 0)) % 2**32
                opened = optuna.create_study(
                    storage=store.rdb, study_name=name, direction="minimize", load_if_exists=True,
                    sampler=optuna.samplers.TPESampler(seed=sampler_seed, n_startup_trials=space.random_trials),
                    pruner=optuna.pruners.MedianPruner(
                        n_startup_trials=space.prune_after,
                        n_warmup_steps=config.eval_steps * space.warmup_evaluations + 1),
                )
                _check_identity(opened, identity)
                marked = sweep_stale(opened, locks)
            finished = len(opened.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED)))
            emit(progress, "trials", min(finished, trials), trials)
            ran: list[int] = []
            for _ in range(max(0, trials - finished)):
                if len(opened.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED))) >= trials:
                    break  # other processes searching the same study got there
                with locks.study(name):
                    trial = opened.ask()
                    locks.try_trial(trial._trial_id)
                try:
                    info = _run_trial(opened, trial, name=name, base=base, data=data, config=config, space=space,
                                      settings=settings, progress=progress, tracing=tracing)
                finally:
                    locks.release_trial(trial._trial_id)
                ran.append(trial.number)
                done = len(opened.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED)))
                emit(progress, "trials", min(done, trials), trials, detail=describe_trial(info),
                     metrics={} if info.value is None else {"eval_loss": info.value})
            all_trials = opened.get_trials(deepcopy=False)
            best = best_trial(all_trials)
            set_attributes(span, {"ragtune.trials.ran": len(ran), "ragtune.trials.best":
                                  best.number if best is not None else None,
                                  "ragtune.eval.loss": best.value if best is not None else None})
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


def describe_trial(info: TrialInfo) -> str:
    """One line for a trial: number, state, eval loss, parameters and note."""
    value = "-" if info.value is None else f"{info.value:.4f}"
    params = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(info.params.items()))
    return (f"trial {info.number} {info.state.lower()}, eval loss {value}" + (f" ({params})" if params else "")
            + (f"; {info.note}" if info.note else ""))


def _check_identity(study: Any, identity: dict[str, Any]) -> None:
    """A new study records what it searches; an old one must be searched on the same things."""
    if study.direction != optuna_module().study.StudyDirection.MINIMIZE:
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
               space: SearchSpace, settings: Settings, progress: Progress | None,
               tracing: Tracing | None = None) -> TrialInfo:
    """Train one trial and tell the study how it ended."""
    states = optuna_module().trial.TrialState
    try:
        tuned = suggest(trial, space, config)
        trial.set_user_attr("lora_alpha", tuned.lora.alpha)
        run_name = f"{name}-t{trial.number}"
        run_dir = runs.create_run_dir(settings.data_dir / "runs", run_name).resolve()
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("run_id", run_dir.name)
        callback = pruning_callback(trial)
        record = start_run(base=base, data=data, config=tuned, data_dir=settings.data_dir,
                           cache_dir=settings.resolved_cache_dir, name=run_name, output=run_dir, progress=progress,
                           callbacks=[callback], tracing=tracing)
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
    run_dir = best.user_attrs.get("run_dir")
    if not run_dir:
        raise NotFoundError(f"the best trial {best.number} of study {study!r} has no run folder to register")
    registry = ModelRegistry(settings)
    version = registry.register(run_dir, model_name)
    registry.client.set_model_version_tag(version.name, str(version.version), "ragtune.search", json.dumps(
        {"study": study, "trial": best.number, "eval_loss": best.value, "params": best.params}))
    return {"name": version.name, "version": version.version, "run_id": version.run_id}
