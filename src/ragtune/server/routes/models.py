"""Read-only views of the model registry (``ragtune models list``): registered models, their
versions, aliases (``production``) and alias history (``history``: every promotion and rollback,
oldest first), source runs and key metrics. The registry (MLflow) is imported
only when a request needs it, so the server starts without ``ragtune[train]``; without it these
routes answer 503 ``model_error``."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter

from ragtune.errors import NotFoundError, StoreError
from ragtune.server.deps import Reader, ServerState, State

log = logging.getLogger("ragtune.server")
router = APIRouter(prefix="/models", tags=["models"])

# Absolute paths on the server (adapter, run folder, base model folder) are left out of the views.
_FIELDS = ("version", "aliases", "run_id", "mlflow_run_id", "run_status", "trained", "servable", "base", "base_hash",
           "dataset", "dataset_hash", "created_at", "eval_rows_hash")


@contextmanager
def _registry(state: ServerState) -> Iterator[Any]:
    """The registry, with MLflow's own errors (its store unreachable ...) as a 503 ``store_error``."""
    from ragtune.finetune.lifecycle.registry import ModelRegistry

    try:
        from mlflow.exceptions import MlflowException
    except ImportError:  # ModelRegistry.client says what to install
        yield ModelRegistry(state.settings)
        return
    try:
        yield ModelRegistry(state.settings)
    except MlflowException as exc:
        log.warning("the model registry failed: %s", exc)
        raise StoreError(f"the model registry failed ({exc.error_code}); see the server log") from exc


def _key_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The tuned model's evaluation metrics (``eval.*``, not the base model's ``eval.base.*``)."""
    return {k: v for k, v in sorted(metrics.items()) if k.startswith("eval.") and not k.startswith("eval.base.")}


def _version(info: Any, *, full: bool = False) -> dict[str, Any]:
    view = {k: getattr(info, k) for k in _FIELDS}
    view["aliases"] = list(info.aliases)
    view["metrics"] = dict(sorted(info.metrics.items())) if full else _key_metrics(info.metrics)
    return view


def _model(name: str, versions: list[Any], changes: list[Any], *, full: bool = False) -> dict[str, Any]:
    production = next((v.version for v in versions if "production" in v.aliases), None)
    return {"name": name, "production": production, "latest": max(v.version for v in versions),
            "history": [c.to_dict() for c in changes], "versions": [_version(v, full=full) for v in versions]}


@router.get("", summary="Every registered model with its versions, aliases, alias history and key (eval.*) metrics")
def list_models(state: State, caller: Reader) -> list[dict[str, Any]]:
    with _registry(state) as registry:
        by_name: dict[str, list[Any]] = {}
        for info in registry.versions():
            by_name.setdefault(info.name, []).append(info)
        changes = {name: registry.production_changes(name) for name in by_name}
    return [_model(name, versions, changes[name]) for name, versions in sorted(by_name.items())]


@router.get("/{name}", summary="A registered model with every version and all of its run's metrics")
def get_model(name: str, state: State, caller: Reader) -> dict[str, Any]:
    with _registry(state) as registry:
        versions = registry.versions(name)  # an invalid name is a 400 config_error
        if not versions:
            raise NotFoundError(f"no model named {name!r} (see GET /models)")
        changes = registry.production_changes(name)
    return _model(name, versions, changes, full=True)
