"""The model registry: training runs tracked in MLflow, adapters registered as model versions,
a ``production`` alias moved by gated promotions and rollbacks, served by reference.

Where things live. MLflow's backend store is our own PostgreSQL (the database ragtune uses, through
SQLAlchemy's ``postgresql+psycopg`` driver), in a schema of its own, ``mlflow``: its tables
(``runs``, ``datasets``, ``alembic_version`` ...) would collide with ours in ``public``. Artefacts
go to ``<data_dir>/mlruns`` (the experiment ``ragtune``'s artifact location). A training run becomes
one MLflow run (``tracking``); a failed or interrupted run is tracked too, with MLflow status
``FAILED``, and can never be registered or promoted. The values handed out (``ModelRef``,
``ModelVersionInfo``, ``Promotion``, ``ProductionChange``) are in ``refs``.

Promotion. ``promote`` moves the ``production`` alias to a version that passes the configured gates
(``gates``; ``[training] promotion_gates`` in the settings): not worse than the current production
version on a compared metric, within every absolute bound (those apply to the first promotion too);
``force`` overrides the gates (never the rule about failed runs) and is recorded on the version
(``ragtune.promotion``). Both versions' latest ``eval.json`` is logged first, and the outcome notes a
version that was never evaluated or two evaluated on different held-out rows. The registered model
keeps its production stack (``ragtune.production_history``): ``rollback`` pops the current one and
puts the alias back on the one before. Every move of the alias, promotion or rollback, is also
appended to the model's alias history (``ragtune.production_changes``, ``ProductionChange``), which
``ragtune models list`` and ``GET /models`` show; a model promoted before that log existed gets it
rebuilt from its versions' last promotion and rollback tags. MLflow keeps a registered model's tag
in 5,000 characters, so both lists keep their newest entries that fit (about 60 changes and several
hundred stack entries). Promotions and rollbacks of one model are serialised by a PostgreSQL
advisory lock.

Serving and export (``serving``): ``registry:NAME[@ALIAS|/VERSION]`` is a generator spec resolved
on every request, so a promotion or rollback takes effect on the next one; ``ragtune models export``
merges a version's adapter into a standalone Hugging Face folder.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from ragtune.errors import NotFoundError, PromotionRefusedError, RegistryError
from ragtune.extras import require
from ragtune.finetune.lifecycle import tracking
from ragtune.finetune.lifecycle.gates import check_gates
from ragtune.finetune.lifecycle.refs import (
    PRODUCTION,
    ModelRef,
    ModelVersionInfo,
    ProductionChange,
    Promotion,
    check_model_name,
)
from ragtune.finetune.lora import runs
from ragtune.finetune.lora.evaluate import completed_record
from ragtune.models import Principal
from ragtune.settings import Gate, Settings, parse_gates
from ragtune.store.audit import AuditEvent, append
from ragtune.store.database import Database, resolve_database_url

log = logging.getLogger(__name__)

SCHEMA = "mlflow"
EXPERIMENT = "ragtune"
HISTORY_TAG = "ragtune.production_history"
CHANGES_TAG = "ragtune.production_changes"
# Set on a version trained on data an erasure removed (govern.erasure): {"erasure", "action", "dataset"...};
# action "block" refuses its promotion, with or without --force.
HOLD_TAG = "ragtune.erasure_hold"
TAG_LIMIT = 5000  # characters of a registered model's tag value (MLflow's column is VARCHAR(5000))


class ModelRegistry:
    """MLflow tracking + model registry for ragtune's training runs; cheap to construct, connects on
    first use."""

    def __init__(self, settings: Settings, *, gates: Sequence[Gate] | None = None) -> None:
        self.settings = settings
        self.gates = tuple(gates) if gates is not None else parse_gates(settings.training.promotion_gates)
        self.artifact_dir = Path(settings.data_dir).expanduser().resolve() / "mlruns"
        self._client: Any = None
        self._experiment_id: str | None = None
        self._database_url: str | None = None
        self._init_lock = threading.Lock()

    # -- connection ---------------------------------------------------------------------------------
    @property
    def database_url(self) -> str:
        if self._database_url is None:
            self._database_url = resolve_database_url(self.settings.database_url, self.settings.data_dir)
        return self._database_url

    @property
    def client(self) -> Any:
        with self._init_lock:
            if self._client is None:
                mlflow = require("mlflow", "train", "the model registry")
                uri = tracking.sqlalchemy_url(self.database_url, SCHEMA)
                with self._advisory_lock("schema"):  # one process creates the schema and tables
                    self._execute(f'CREATE SCHEMA IF NOT EXISTS "{SCHEMA}"')
                    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
                    self._experiment_id = self._experiment(client)
                self._client = client
        return self._client

    def _experiment(self, client: Any) -> str:
        found = client.get_experiment_by_name(EXPERIMENT)
        if found is not None:
            return str(found.experiment_id)
        self.artifact_dir.mkdir(parents=True, exist_ok=True)
        return str(client.create_experiment(EXPERIMENT, artifact_location=self.artifact_dir.as_uri()))

    @property
    def experiment_id(self) -> str:
        self.client  # noqa: B018 - sets it
        assert self._experiment_id is not None
        return self._experiment_id

    def _execute(self, sql: str) -> None:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute(sql.encode())

    @contextmanager
    def _advisory_lock(self, key: str) -> Iterator[None]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"ragtune.registry.{key}",))
            try:
                yield
            finally:
                conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (f"ragtune.registry.{key}",))

    # -- tracking ------------------------------------------------------------------------------------
    def log_run(self, record: Any) -> str:
        """Track a training run (any status) as an MLflow run (``tracking.log_run``); returns its id."""
        return tracking.log_run(self.client, self.experiment_id, record)

    def track(self, runs_dir: Path) -> list[str]:
        """Log every run in ``runs_dir`` (stale ``running`` ones are marked failed first)."""
        return [self.log_run(r) for r in runs.list_runs(runs_dir)]

    # -- versions ------------------------------------------------------------------------------------
    def register(self, run_dir: str | Path, name: str | None = None) -> ModelVersionInfo:
        """Register a completed run's adapter as a new version of ``name`` (default: the run's name);
        registering the same run again returns its existing version."""
        from mlflow.exceptions import MlflowException

        record = completed_record(Path(run_dir))  # a failed or interrupted run is refused here
        name = check_model_name(name or record.name)
        mlflow_id = self.log_run(record)
        client = self.client
        with self._advisory_lock(f"model.{name}"):
            try:
                client.create_registered_model(name, tags={"ragtune.created_by": "ragtune"})
            except MlflowException as exc:
                if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                    raise
            for mv in client.search_model_versions(f"name = '{name}'"):
                if mv.run_id == mlflow_id:
                    return self.version(name, int(mv.version))
            run = client.get_run(mlflow_id)
            tags = {"ragtune.run_id": record.run_id, "ragtune.status": record.status, "ragtune.base": record.base,
                    "ragtune.base_path": record.base_path, "ragtune.base_hash": record.base_hash,
                    "ragtune.dataset": record.dataset, "ragtune.dataset_hash": record.dataset_hash,
                    "ragtune.run_dir": record.path}
            mv = client.create_model_version(name, f"{run.info.artifact_uri}/adapter", run_id=mlflow_id, tags=tags,
                                             description=f"LoRA adapter of run {record.run_id} on {record.base}")
        return self.version(name, int(mv.version))

    def version(self, name: str, version: int, *, mv: Any = None) -> ModelVersionInfo:
        from mlflow.exceptions import MlflowException

        client = self.client
        if mv is None:
            try:
                mv = client.get_model_version(name, str(version))
            except MlflowException as exc:
                raise NotFoundError(f"no version {version} of model {name!r} (see `ragtune models list`)") from exc
        run = client.get_run(mv.run_id) if mv.run_id else None
        tags = dict(mv.tags)
        return ModelVersionInfo(
            name=mv.name, version=int(mv.version), aliases=tuple(mv.aliases or ()),
            run_id=tags.get("ragtune.run_id", ""), mlflow_run_id=mv.run_id or "",
            run_status=run.info.status if run else "UNKNOWN", trained=tags.get("ragtune.status", "unknown"),
            base=tags.get("ragtune.base", ""), base_path=tags.get("ragtune.base_path", ""),
            base_hash=tags.get("ragtune.base_hash", ""), dataset=tags.get("ragtune.dataset", ""),
            dataset_hash=tags.get("ragtune.dataset_hash", ""), adapter=str(tracking.local_path(mv.source)),
            run_dir=tags.get("ragtune.run_dir", ""), created_at=int(mv.creation_timestamp or 0),
            eval_rows_hash=run.data.tags.get("ragtune.eval_rows_hash") if run else None,
            metrics=dict(run.data.metrics) if run else {}, tags=tags,
        )

    def hold(self, name: str, version: int, reason: dict[str, Any]) -> None:
        """Mark a version trained on erased data (``HOLD_TAG``); ``reason["action"]`` "block" refuses
        its promotion."""
        self.client.set_model_version_tag(name, str(version), HOLD_TAG, json.dumps(reason))

    def versions(self, name: str | None = None) -> list[ModelVersionInfo]:
        if name is not None:
            check_model_name(name)
        found = self.client.search_model_versions(f"name = '{name}'" if name else None)
        # Searches leave the aliases out; a version read by name and number has them.
        return sorted((self.version(mv.name, int(mv.version)) for mv in found), key=lambda v: (v.name, v.version))

    def resolve(self, ref: str | ModelRef) -> ModelVersionInfo:
        ref = ModelRef.parse(ref) if isinstance(ref, str) else ref
        if ref.version is not None:
            return self.version(ref.name, ref.version)
        mv = self.by_alias(ref.name, ref.alias or PRODUCTION)
        return self.version(ref.name, int(mv.version), mv=mv)

    def by_alias(self, name: str, alias: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            raise NotFoundError(f"model {name!r} has no version with alias {alias!r}"
                                + (" (promote one with `ragtune models promote`)" if alias == PRODUCTION else "")
                                ) from exc

    def production(self, name: str) -> ModelVersionInfo | None:
        try:
            return self.resolve(ModelRef(name, PRODUCTION))
        except NotFoundError:
            return None

    def history(self, name: str) -> list[int]:
        tags = self.client.get_registered_model(name).tags
        return [int(v) for v in json.loads(tags.get(HISTORY_TAG, "[]"))]

    def production_changes(self, name: str) -> list[ProductionChange]:
        """The model's alias history, oldest first: every promotion and rollback (the newest that fit
        in the tag; see the module docstring)."""
        tags = self.client.get_registered_model(name).tags
        if CHANGES_TAG in tags:
            return [ProductionChange.from_dict(d) for d in json.loads(tags[CHANGES_TAG])]
        # Promoted before the log existed: each version's last promotion and rollback tell most of it.
        changes = []
        for mv in self.client.search_model_versions(f"name = '{name}'"):
            version, vtags = int(mv.version), dict(mv.tags)
            if "ragtune.promotion" in vtags:
                promoted = json.loads(vtags["ragtune.promotion"])
                changes.append(ProductionChange(promoted.get("at", ""), "promote", version, promoted.get("previous"),
                                                bool(promoted.get("forced"))))
            if "ragtune.rolled_back" in vtags:
                rolled = json.loads(vtags["ragtune.rolled_back"])
                changes.append(ProductionChange(rolled.get("at", ""), "rollback", int(rolled["to"]), version))
        # Times are to the second: within one, the chain of versions decides (each change starts
        # from the version the one before it left in production).
        ordered: list[ProductionChange] = []
        pending, current = sorted(changes, key=lambda c: c.at), None
        while pending:
            tied = [c for c in pending if c.at == pending[0].at]
            chosen = next((c for c in tied if c.previous == current), tied[0])
            ordered.append(chosen)
            pending.remove(chosen)
            current = chosen.version
        return ordered

    # -- promotion -----------------------------------------------------------------------------------
    def promote(self, name: str, version: int, *, force: bool = False) -> Promotion:
        """Point ``production`` at ``version`` if it passes the gates (or ``force``)."""
        client = self.client
        with self._advisory_lock(f"model.{name}"):
            candidate = self._refreshed(self.version(name, version))
            if not candidate.servable:
                raise RegistryError(
                    f"version {version} of {name!r} comes from run {candidate.run_id or candidate.mlflow_run_id}, "
                    f"which did not complete (MLflow status {candidate.run_status}, run {candidate.trained}); "
                    "a failed or interrupted run is never promoted, with or without --force")
            held = candidate.tags.get(HOLD_TAG)
            if held and json.loads(held).get("action") == "block":
                why = json.loads(held)
                raise RegistryError(
                    f"version {version} of {name!r} was trained on data erasure {why.get('erasure')} removed "
                    f"({why.get('dataset')} version {why.get('dataset_version')}): it cannot be promoted, with or "
                    "without --force; train a new version on the dataset as it is now")
            current = self.production(name)
            if current is not None and current.version == candidate.version:
                return Promotion(name, version, version, False, (), changed=False)
            if current is not None:  # its eval.json may be newer than its promotion, as the candidate's
                current = self._refreshed(current)
            results = tuple(check_gates(self.gates, candidate.metrics, current.metrics if current else None,
                                        run_id=candidate.run_id))
            failed = [r for r in results if not r.passed]
            notes = self._notes(candidate, current)
            if failed and not force:
                raise PromotionRefusedError(name, version, tuple(r.describe() for r in failed))
            at = runs.now()
            client.set_registered_model_alias(name, PRODUCTION, str(version))
            self._set_history(name, [*self.history(name), version])
            self._record(name, ProductionChange(at, "promote", version, current.version if current else None,
                                                bool(failed)))
            client.set_model_version_tag(name, str(version), "ragtune.promotion", json.dumps({
                "at": at, "previous": current.version if current else None, "forced": bool(failed),
                "overridden": [r.describe() for r in failed], "gates": [r.describe() for r in results],
                "notes": notes,
            }))
            self._audited("model.promote", {"model": name, "version": version,
                                            "previous": current.version if current else None,
                                            "forced": bool(failed), "overridden": [r.describe() for r in failed]})
        return Promotion(name, version, current.version if current else None, bool(failed), results,
                         notes=tuple(notes))

    def _notes(self, candidate: ModelVersionInfo, current: ModelVersionInfo | None) -> list[str]:
        """What the gate results alone do not say about a comparison with production."""
        if current is None or not any(g.compares for g in self.gates):
            return []
        notes = []
        if not any(g.compares and g.metric in current.metrics for g in self.gates):
            notes.append(f"no gated metric on production version {current.version}: nothing to compare")
        if not any(g.compares and g.metric.startswith("eval.") for g in self.gates):
            return notes
        # Only a version with an eval.json has a rows hash: without one it was never evaluated, which
        # is not the same as being evaluated on other rows.
        for label, info in (("candidate", candidate), ("production", current)):
            if info.eval_rows_hash is None:
                notes.append(f"{label} version {info.version} was never evaluated (no eval.json; run "
                             f"`ragtune tune eval {info.run_id or 'RUN'}`): it has no eval.* metrics to compare")
        if None not in (candidate.eval_rows_hash, current.eval_rows_hash) and (
                candidate.eval_rows_hash != current.eval_rows_hash):
            notes.append(f"versions {candidate.version} and {current.version} were evaluated on different held-out "
                         "rows: their eval.* metrics may not compare")
        return notes

    def rollback(self, name: str) -> Promotion:
        """Put ``production`` back on the version that held it before the current one."""
        client = self.client
        with self._advisory_lock(f"model.{name}"):
            current = self.production(name)
            if current is None:
                raise RegistryError(f"model {name!r} has no production version to roll back")
            history = self.history(name)
            while history and history[-1] == current.version:
                history.pop()
            if not history:
                raise RegistryError(f"model {name!r} has no earlier production version than {current.version}")
            previous, at = history[-1], runs.now()
            client.set_registered_model_alias(name, PRODUCTION, str(previous))
            self._set_history(name, history)
            self._record(name, ProductionChange(at, "rollback", previous, current.version))
            client.set_model_version_tag(name, str(current.version), "ragtune.rolled_back",
                                         json.dumps({"at": at, "to": previous}))
            self._audited("model.rollback", {"model": name, "version": previous, "previous": current.version})
        return Promotion(name, previous, current.version, False, ())

    def _audited(self, action: str, details: dict[str, Any]) -> None:
        """A production change in the audit log (``govern.audit``), by the local operator. Its own
        transaction, right after the change: MLflow's registry writes in transactions of its own."""
        if not self.settings.governance.audit:
            return
        db = Database.from_settings(self.settings)
        try:
            with db.transaction() as conn:
                append(conn, AuditEvent(action, Principal.system(), details=details))
        finally:
            db.close()

    def _set_history(self, name: str, history: list[int]) -> None:
        self._set_list_tag(name, HISTORY_TAG, history)

    def _record(self, name: str, change: ProductionChange) -> None:
        self._set_list_tag(name, CHANGES_TAG, [c.to_dict() for c in [*self.production_changes(name), change]])

    def _set_list_tag(self, name: str, tag: str, items: list[Any]) -> None:
        """A JSON list as a registered model tag, dropping its oldest entries until it fits."""
        text = json.dumps(items, separators=(",", ":"))
        while len(text) > TAG_LIMIT:
            items = items[max(1, len(items) // 10):]
            text = json.dumps(items, separators=(",", ":"))
        self.client.set_registered_model_tag(name, tag, text)

    def _refreshed(self, info: ModelVersionInfo) -> ModelVersionInfo:
        """The version with the metrics of its run folder's latest ``eval.json`` logged first."""
        run_dir = Path(info.run_dir) if info.run_dir else None
        record = runs.read_record(run_dir) if run_dir is not None and run_dir.is_dir() else None
        if record is None or record.status != "completed":
            return info
        self.log_run(record)
        return self.version(info.name, info.version)

