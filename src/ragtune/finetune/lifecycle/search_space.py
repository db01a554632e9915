"""The search space of ``ragtune tune search`` (``search``): the hyperparameters a trial samples
over the base configuration, with defaults (:class:`SearchSpace`) that a ``[search]`` table of the
training config changes::

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

``suggest`` draws one trial's configuration; ``default_eval_steps`` sets how often the trials of a
study evaluate (one value per study, so the pruner compares the same steps).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.errors import ConfigError
from ragtune.finetune.lora.config import TuneConfig, to_dict
from ragtune.settings import read_toml


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
