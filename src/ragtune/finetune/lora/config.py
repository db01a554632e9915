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
    packing = false           # SFT: pack rows into max_length sequences (each row still sees only itself)
    chat_template = "base"    # base (the model's own) | chatml | llama3 | zephyr | a Jinja file

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

Command-line overrides (``--set lora.r=16``, ``--learning-rate 1e-4``) go through ``load_config``
on top of the file and the same ``from_dict`` checks, so they are typed and refused exactly as the
TOML is; a ``--set`` value is read as a TOML value (``1e-4``, ``true``, ``["q_proj"]``), a bare
word as a string (``lr_scheduler=cosine``). The file is checked on its own first, so a wrong type
or an unknown key is named with the file or the command line, whichever holds it.

A ``chat_template`` path in a file is relative to that file, on the command line to the working
directory; ``load_config`` makes it absolute and checks the file exists. ``from_dict`` does not
look at the disk: a run's recorded config must load even where the template file is gone (the run
keeps the template's text in its folder).
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.errors import ConfigError
from ragtune.settings import read_toml

METHODS = ("sft", "dpo")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
# Named chat templates (texts in ``trainset.CHAT_TEMPLATES``); any other value is a Jinja file's path.
CHAT_TEMPLATES = ("base", "chatml", "llama3", "zephyr")
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
    # SFT only: rows packed best-fit into max_length sequences, each attending only to itself (TRL's
    # "bfd" packing, padding-free); `batch_size` then counts packed sequences, not rows.
    packing: bool = False
    # "base": the base model's own; chatml | llama3 | zephyr; or a Jinja file. Trained with, and saved
    # with the adapter's tokenizer files so serving can render prompts the same way.
    chat_template: str = "base"
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
        # DPO rows are prompt/chosen/rejected triples TRL pads in pairs; packing them is not supported here.
        _check("packing", self.packing, not (self.packing and self.method != "sft"),
               f"false with method={self.method!r} (packing applies to sft)")
        _check("chat_template", self.chat_template, bool(self.chat_template.strip()),
               " | ".join(CHAT_TEMPLATES) + " or the path of a Jinja file")

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


def load_config(path: str | Path | None = None, *, sets: Sequence[str] = (), **overrides: Any) -> TuneConfig:
    """Read ``path`` (or the defaults), then apply ``sets`` (``KEY=VALUE``, a table's keys dotted:
    ``lora.r=16``) and then ``overrides`` (keyword values, ``None`` ignored; a mapping for a table,
    ``lora={"r": 16}``, changes only the keys it names)."""
    data: dict[str, Any] = {}
    source = None
    if path is not None:
        source = str(path)
        data = read_toml(path, what="training config")
        data.pop("search", None)  # the hyperparameter search's table, read by finetune.lifecycle.search
        template = data.get("chat_template")
        if isinstance(template, str) and template not in CHAT_TEMPLATES:
            data["chat_template"] = str(Path(path).expanduser().parent / Path(template).expanduser())
    changes = [parse_set(text) for text in sets]
    changes += [(k, v) for k, v in overrides.items() if v is not None]
    if not changes:
        return _with_template_file(from_dict(data, source=source))
    from_dict(data, source=source)  # the file's own errors are named as the file's
    where = "command-line overrides"
    for key, value in changes:
        _merge(data, key, value, where)
    return _with_template_file(from_dict(data, source=where))


def parse_set(text: str) -> tuple[str, Any]:
    """``--set KEY=VALUE``: the value as TOML reads it, or the bare text as a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"invalid --set {text!r}: expected KEY=VALUE (learning_rate=1e-4, lora.r=16)")
    try:
        value = tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def _merge(data: dict[str, Any], key: str, value: Any, where: str) -> None:
    table, dot, name = key.partition(".")
    if dot or (table in _TABLES and isinstance(value, Mapping)):
        if table not in _TABLES or (dot and (not name or "." in name)):
            raise ConfigError(f"unknown key(s) {key} in {where}; known tables: {', '.join(_TABLES)}")
        current = data.get(table, {})
        if isinstance(current, (LoraSettings, DpoSettings)):
            current = dataclasses.asdict(current)
        data[table] = {**current, **({name: value} if dot else value)}
    else:
        data[key] = value


def _with_template_file(config: TuneConfig) -> TuneConfig:
    """A ``chat_template`` path made absolute (a run records where its template came from), and
    refused here, before any run starts, when no file is there."""
    if config.chat_template in CHAT_TEMPLATES:
        return config
    path = Path(config.chat_template).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"invalid chat_template={config.chat_template!r}: expected "
                          + " | ".join(CHAT_TEMPLATES) + f" or the path of a Jinja file (no file at {path})")
    return config if str(path) == config.chat_template else config.replace(chat_template=str(path))


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
