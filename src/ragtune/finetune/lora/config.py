"""Training configuration: a TOML file validated at load time into a frozen dataclass.

``tune.toml`` holds top-level keys and two tables, every one optional::

    method = "sft"            # sft | dpo
    learning_rate = 2e-4
    epochs = 1.0
    max_steps = 0             # 0: train for `epochs`; > 0: exactly this many optimiser steps
    batch_size = 4
    grad_accum = 1
    max_length = 512
    seed = 0
    save_steps = 50
    eval_fraction = 0.1       # held out of a --data FILE (a stored dataset brings its own split)

    [lora]
    r = 8
    alpha = 16
    dropout = 0.05
    target_modules = ["q_proj", "k_proj", "v_proj", "o_proj"]

    [dpo]
    beta = 0.1

A ``[search]`` table (the search space of ``ragtune tune search``) may sit in the same file; it is
validated by ``finetune.lifecycle.search`` and skipped here. An unknown key or an impossible value raises
:class:`ConfigError` naming the key (``lora.r``).
``to_toml`` writes the resolved configuration back in the same layout, so a run's ``config.toml``
can start another run.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.errors import ConfigError
from ragtune.settings import read_toml

METHODS = ("sft", "dpo")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


@dataclass(frozen=True)
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    # Attention projections of Llama-style models; "all-linear" takes every linear layer but the head.
    target_modules: tuple[str, ...] | str = ("q_proj", "k_proj", "v_proj", "o_proj")

    def __post_init__(self) -> None:
        modules = self.target_modules
        _check("lora.r", self.r, 1 <= self.r <= 1024, "an integer from 1 to 1024")
        _check("lora.alpha", self.alpha, self.alpha > 0, "positive")
        _check("lora.dropout", self.dropout, 0.0 <= self.dropout < 1.0, "in [0, 1)")
        if isinstance(modules, str):
            _check("lora.target_modules", modules, modules == "all-linear", '"all-linear" or a list of module names')
        else:
            _check("lora.target_modules", list(modules),
                   bool(modules) and all(isinstance(m, str) and _MODULE.match(m) for m in modules),
                   "a non-empty list of module names")


@dataclass(frozen=True)
class DpoSettings:
    beta: float = 0.1

    def __post_init__(self) -> None:
        _check("dpo.beta", self.beta, self.beta > 0 and math.isfinite(self.beta), "positive")


@dataclass(frozen=True)
class TuneConfig:
    method: str = "sft"
    learning_rate: float = 2e-4
    epochs: float = 1.0
    max_steps: int = 0
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 512
    seed: int = 0
    save_steps: int = 50
    save_total_limit: int = 2
    logging_steps: int = 1
    eval_fraction: float = 0.0
    eval_steps: int = 0  # 0: evaluate once, at the end (when there are eval rows)
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    lr_scheduler: str = "linear"
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    # 4-bit QLoRA through bitsandbytes; only on a CUDA GPU (otherwise skipped, with a note in the run).
    qlora: bool = False
    lora: LoraSettings = field(default_factory=LoraSettings)
    dpo: DpoSettings = field(default_factory=DpoSettings)

    def __post_init__(self) -> None:
        _check("method", self.method, self.method in METHODS, " or ".join(METHODS))
        _check("learning_rate", self.learning_rate, 0 < self.learning_rate < 1 and math.isfinite(self.learning_rate),
               "in (0, 1)")
        _check("epochs", self.epochs, self.epochs > 0 and math.isfinite(self.epochs), "positive")
        _check("max_steps", self.max_steps, self.max_steps >= 0, "0 (use epochs) or positive")
        _check("batch_size", self.batch_size, self.batch_size >= 1, "at least 1")
        _check("grad_accum", self.grad_accum, self.grad_accum >= 1, "at least 1")
        _check("max_length", self.max_length, 16 <= self.max_length <= 1_048_576, "from 16 to 1048576 tokens")
        _check("seed", self.seed, 0 <= self.seed < 2**32, "from 0 to 2**32 - 1")
        _check("save_steps", self.save_steps, self.save_steps >= 1, "at least 1")
        _check("save_total_limit", self.save_total_limit, self.save_total_limit >= 1, "at least 1")
        _check("logging_steps", self.logging_steps, self.logging_steps >= 1, "at least 1")
        _check("eval_fraction", self.eval_fraction, 0.0 <= self.eval_fraction < 1.0, "in [0, 1)")
        _check("eval_steps", self.eval_steps, self.eval_steps >= 0, "0 (at the end) or positive")
        _check("warmup_ratio", self.warmup_ratio, 0.0 <= self.warmup_ratio < 1.0, "in [0, 1)")
        _check("weight_decay", self.weight_decay, 0.0 <= self.weight_decay < 1.0, "in [0, 1)")
        _check("lr_scheduler", self.lr_scheduler, self.lr_scheduler in SCHEDULERS, " | ".join(SCHEDULERS))
        _check("max_grad_norm", self.max_grad_norm, self.max_grad_norm > 0, "positive")

    def replace(self, **changes: Any) -> TuneConfig:
        return from_dict({**to_dict(self), **changes})

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accum


def _check(key: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise ConfigError(f"invalid {key}={value!r}: expected {expected}")


_TABLES: dict[str, type] = {"lora": LoraSettings, "dpo": DpoSettings}


def from_dict(data: Mapping[str, Any], *, source: str | None = None) -> TuneConfig:
    """Build a config from TOML-shaped data, refusing unknown keys and values of the wrong type."""
    where = f" in {source}" if source else ""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(TuneConfig):
        if f.name in data and f.name not in _TABLES:
            values[f.name] = _convert(f.name, data[f.name], f.type, where)
    for table, kind in _TABLES.items():
        raw = data.get(table, {})
        if isinstance(raw, (LoraSettings, DpoSettings)):
            raw = dataclasses.asdict(raw)
        if not isinstance(raw, Mapping):
            raise ConfigError(f"invalid {table}={raw!r}{where}: expected a table [{table}]")
        unknown = sorted(set(raw) - {f.name for f in dataclasses.fields(kind)})
        if unknown:
            raise ConfigError(f"unknown key(s) {', '.join(f'{table}.{k}' for k in unknown)}{where}")
        values[table] = kind(**{f.name: _convert(f"{table}.{f.name}", raw[f.name], f.type, where)
                                for f in dataclasses.fields(kind) if f.name in raw})
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(TuneConfig)})
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)}{where}; known keys: "
                          + ", ".join(f.name for f in dataclasses.fields(TuneConfig)))
    return TuneConfig(**values)


def _convert(key: str, value: Any, kind: Any, where: str) -> Any:
    """TOML already types its values; accept ints for floats, nothing else loosely."""
    kind = str(kind)
    bad = ConfigError(f"invalid {key}={value!r}{where}: expected {kind.replace('tuple[str, ...]', 'list of str')}")
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if kind == "str":
        if not isinstance(value, str):
            raise bad
        return value
    if "tuple" in kind:  # target_modules: a list of names or "all-linear"
        if isinstance(value, str):
            return value
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise bad
        return tuple(value)
    raise bad  # pragma: no cover - every field type is handled above


def load_config(path: str | Path | None = None, **overrides: Any) -> TuneConfig:
    """Read ``path`` (or the defaults) and apply ``overrides`` (``None`` values ignored)."""
    data: dict[str, Any] = {}
    source = None
    if path is not None:
        source = str(path)
        data = read_toml(path, what="training config")
        data.pop("search", None)  # the hyperparameter search's table, read by finetune.lifecycle.search
    data.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(data, source=source)


def to_dict(config: TuneConfig) -> dict[str, Any]:
    out = dataclasses.asdict(config)
    modules = out["lora"]["target_modules"]
    out["lora"]["target_modules"] = modules if isinstance(modules, str) else list(modules)
    return out


def to_toml(config: TuneConfig) -> str:
    """The resolved configuration in the layout ``load_config`` reads."""
    data = to_dict(config)
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if k not in _TABLES]
    for table in _TABLES:
        lines += ["", f"[{table}]", *(f"{k} = {_toml_value(v)}" for k, v in data[table].items())]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")  # pragma: no cover
