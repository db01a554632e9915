"""The values the model registry hands out: a reference to a version (``NAME``, ``NAME@ALIAS``,
``NAME/VERSION``), what is known of a version, the outcome of a promotion and one move of the
``production`` alias (a promotion or a rollback: the alias history). Kept apart from
``registry`` so serving and the edges can parse and show them without MLflow's client.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from ragtune.errors import ConfigError
from ragtune.finetune.lifecycle.gates import GateResult

PRODUCTION = "production"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_REF = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,99})"
                  r"(?:@(?P<alias>[A-Za-z][A-Za-z0-9_-]*)|/(?P<version>\d+))?$")


@dataclass(frozen=True)
class ModelRef:
    """``NAME`` (the production alias), ``NAME@ALIAS`` or ``NAME/VERSION``."""

    name: str
    alias: str | None = None
    version: int | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        match = _REF.match(text.strip().removeprefix("registry:"))
        if match is None:
            raise ConfigError(f"invalid model reference {text!r}: expected NAME, NAME@ALIAS or NAME/VERSION")
        version = match.group("version")
        return cls(match.group("name"), match.group("alias") or (None if version else PRODUCTION),
                   int(version) if version else None)

    def __str__(self) -> str:
        return f"{self.name}/{self.version}" if self.version is not None else f"{self.name}@{self.alias}"


@dataclass(frozen=True)
class ModelVersionInfo:
    name: str
    version: int
    aliases: tuple[str, ...]
    run_id: str  # ragtune's run id (the run folder's name)
    mlflow_run_id: str
    run_status: str  # the MLflow run's status: FINISHED, FAILED, RUNNING ...
    trained: str  # the ragtune run's status when registered
    base: str
    base_path: str
    base_hash: str
    dataset: str
    dataset_hash: str
    adapter: str  # the adapter folder in the artefact store
    run_dir: str
    created_at: int  # ms since the epoch
    eval_rows_hash: str | None = None  # which held-out rows its eval.* metrics come from
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def servable(self) -> bool:
        return self.run_status == "FINISHED" and self.trained == "completed"


@dataclass(frozen=True)
class Promotion:
    name: str
    version: int
    previous: int | None
    forced: bool
    gates: tuple[GateResult, ...]
    changed: bool = True
    notes: tuple[str, ...] = ()

    @property
    def failed(self) -> tuple[GateResult, ...]:
        return tuple(r for r in self.gates if not r.passed)


@dataclass(frozen=True)
class ProductionChange:
    """One move of a model's ``production`` alias, from ``previous`` (None: there was none) to
    ``version``: a promotion (``forced`` past failed gates or not) or a rollback."""

    at: str  # ISO 8601, UTC
    action: Literal["promote", "rollback"]
    version: int
    previous: int | None
    forced: bool = False

    def involves(self, version: int) -> bool:
        return version in (self.version, self.previous)

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at, "action": self.action, "from": self.previous, "to": self.version,
                "forced": self.forced}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProductionChange:
        previous = data.get("from")
        return cls(str(data.get("at", "")), "rollback" if data.get("action") == "rollback" else "promote",
                   int(data["to"]), None if previous is None else int(previous), bool(data.get("forced", False)))


def check_model_name(name: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(f"invalid model name {name!r}: letters, digits, '.', '_' and '-', at most 100")
    return name
