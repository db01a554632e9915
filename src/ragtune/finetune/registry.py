"""The model registry: training runs tracked in MLflow, adapters registered as model versions,
a ``production`` alias moved by gated promotions and rollbacks, served by reference.

Where things live. MLflow's backend store is our own PostgreSQL (the database ragtune uses, through
SQLAlchemy's ``postgresql+psycopg`` driver), in a schema of its own, ``mlflow``: its tables
(``runs``, ``datasets``, ``alembic_version`` ...) would collide with ours in ``public``. Artefacts
go to ``<data_dir>/mlruns`` (the experiment ``ragtune``'s artifact location). A training run becomes
one MLflow run: its parameters, metrics (training metrics; ``eval.<metric>`` and
``eval.base.<metric>`` from ``tune eval``), the dataset and base model hashes (as parameters and
tags), and the adapter, run.json, config.toml and eval.json as artefacts. A failed or interrupted
run is tracked too, with MLflow status ``FAILED``; it can never be registered or promoted.

Promotion. ``promote`` moves the ``production`` alias to a version when none of the configured
gates (``gates``; ``promotion_gates`` in the settings) finds it worse than the current production
version; ``force`` overrides the gates (never the rule about failed runs) and is recorded on the
version (``ragtune.promotion``). The registered model keeps its production history
(``ragtune.production_history``, a stack of versions): ``rollback`` pops the current one and puts
the alias back on the one before. Promotions and rollbacks of one model are serialised by a
PostgreSQL advisory lock.

Serving and export (``finetune.serving``): ``registry:NAME[@ALIAS|/VERSION]`` is a generator spec
resolved on every request, so a promotion or rollback takes effect on the next one; ``ragtune
models export`` merges a version's adapter into a standalone Hugging Face folder.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.errors import ConfigError, ModelError, NotFoundError, PromotionRefusedError, RegistryError
from ragtune.finetune.gates import GateResult, check_gates
from ragtune.settings import Gate, Settings, parse_gates

log = logging.getLogger(__name__)

SCHEMA = "mlflow"
EXPERIMENT = "ragtune"
PRODUCTION = "production"
HISTORY_TAG = "ragtune.production_history"
_INSTALL = "pip install 'ragtune[train]'"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_REF = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,99})"
                  r"(?:@(?P<alias>[A-Za-z][A-Za-z0-9_-]*)|/(?P<version>\d+))?$")
_MLFLOW_STATUS = {"completed": "FINISHED", "failed": "FAILED"}


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


def sqlalchemy_url(database_url: str, schema: str = SCHEMA) -> str:
    """Our libpq URL or conninfo as a SQLAlchemy URL for psycopg 3, with ``schema`` first on the
    search path (every libpq parameter but the database and the credentials goes in the query)."""
    from psycopg.conninfo import conninfo_to_dict
    from sqlalchemy.engine import URL

    params = {k: str(v) for k, v in conninfo_to_dict(database_url).items() if v is not None}
    query = {k: v for k, v in params.items() if k not in ("dbname", "user", "password", "options")}
    query["options"] = " ".join(filter(None, [params.get("options", ""), f"-csearch_path={schema}"]))
    url = URL.create("postgresql+psycopg", username=params.get("user"), password=params.get("password"),
                     database=params.get("dbname"), query=query)
    return url.render_as_string(hide_password=False)


def local_path(uri: str) -> Path:
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(urllib.request.url2pathname(parsed.path) if parsed.scheme else uri)
    raise ModelError(f"artefact {uri} is not in a local folder; ragtune serves adapters from the data folder only")


def _ms(timestamp: str | None) -> int | None:
    if not timestamp:
        return None
    import datetime as dt

    return int(dt.datetime.fromisoformat(timestamp).timestamp() * 1000)


class ModelRegistry:
    """MLflow tracking + model registry for ragtune's training runs; cheap to construct, connects on
    first use."""

    def __init__(self, settings: Settings, *, gates: Sequence[Gate] | None = None) -> None:
        self.settings = settings
        self.gates = tuple(gates) if gates is not None else parse_gates(settings.promotion_gates)
        self.artifact_dir = Path(settings.data_dir).expanduser().resolve() / "mlruns"
        self._client: Any = None
        self._experiment_id: str | None = None
        self._database_url: str | None = None
        self._init_lock = threading.Lock()

    # -- connection ---------------------------------------------------------------------------------
    @property
    def database_url(self) -> str:
        if self._database_url is None:
            from ragtune.store.database import resolve_database_url

            self._database_url = resolve_database_url(self.settings.database_url, self.settings.data_dir)
        return self._database_url

    @property
    def client(self) -> Any:
        with self._init_lock:
            if self._client is None:
                try:
                    from mlflow import MlflowClient
                except ImportError as exc:
                    raise ModelError(f"the model registry needs mlflow: {_INSTALL} ({exc})") from exc
                uri = sqlalchemy_url(self.database_url)
                with self._advisory_lock("schema"):  # one process creates the schema and tables
                    self._execute(f'CREATE SCHEMA IF NOT EXISTS "{SCHEMA}"')
                    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
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
        import psycopg

        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute(sql.encode())

    @contextmanager
    def _advisory_lock(self, key: str) -> Iterator[None]:
        import psycopg

        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"ragtune.registry.{key}",))
            try:
                yield
            finally:
                conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (f"ragtune.registry.{key}",))

    # -- tracking ------------------------------------------------------------------------------------
    def _mlflow_run(self, run_id: str) -> Any:
        found = self.client.search_runs([self.experiment_id], filter_string=f"tags.`ragtune.run_id` = '{run_id}'",
                                        max_results=1)
        return found[0] if found else None

    def log_run(self, record: Any) -> str:
        """Track a training run (any status) as an MLflow run; again for the same run updates its
        status, metrics and artefacts. Returns the MLflow run id."""
        from mlflow.entities import Metric, Param, RunTag

        from ragtune.finetune.evaluate import read_report

        client = self.client
        run_dir = Path(record.path)
        report = read_report(run_dir) if run_dir.is_dir() else None
        tags = {"ragtune.run_id": record.run_id, "ragtune.run_dir": record.path, "ragtune.status": record.status,
                "ragtune.base": record.base, "ragtune.base_hash": record.base_hash, "ragtune.dataset": record.dataset,
                "ragtune.dataset_hash": record.dataset_hash, "ragtune.method": record.method}
        if record.error:
            tags["ragtune.error"] = record.error[:7000]
        if report is not None:
            tags["ragtune.eval_rows_hash"] = report.rows_hash
        existing = self._mlflow_run(record.run_id)
        now = int(time.time() * 1000)
        metrics: list[Any] = []
        if existing is None:
            run = client.create_run(self.experiment_id, start_time=_ms(record.started_at), tags=tags,
                                    run_name=record.run_id)
            mlflow_id, have = run.info.run_id, {}
            params = {**record.params(), "method": record.method, "dataset_version": record.dataset_version,
                      "dataset_hash": record.dataset_hash, "base_hash": record.base_hash, "base_path": record.base_path,
                      "train_rows": record.train_rows, "eval_rows": record.eval_rows}
            plist = [Param(str(k), str(v)[:6000]) for k, v in params.items()]
            for i in range(0, len(plist), 100):
                client.log_batch(mlflow_id, params=plist[i:i + 100])
            metrics += [Metric("train.loss", float(loss), now, int(step))
                        for step, loss in record.metrics.get("losses", []) if _number(loss)]
        else:
            mlflow_id, have = existing.info.run_id, dict(existing.data.metrics)
        wanted = {k: float(v) for k, v in record.metrics.items() if _number(v)}
        if report is not None:
            for prefix, values in (("eval.", report.tuned_metrics), ("eval.base.", report.base_metrics)):
                wanted.update({prefix + k: float(v) for k, v in values.items() if v is not None and _number(v)})
            wanted["eval.rows"] = float(report.rows)
        metrics += [Metric(k, v, now, 0) for k, v in wanted.items() if have.get(k) != v]
        for i in range(0, len(metrics), 1000):
            client.log_batch(mlflow_id, metrics=metrics[i:i + 1000], tags=[RunTag(k, v) for k, v in tags.items()]
                             if i == 0 else ())
        if not metrics:
            client.log_batch(mlflow_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self._log_files(mlflow_id, record, run_dir, first=existing is None or "ragtune.adapter" not in
                        existing.data.tags)
        status = _MLFLOW_STATUS.get(record.status)
        if status and (existing is None or existing.info.status != status):
            client.set_terminated(mlflow_id, status=status, end_time=_ms(record.finished_at))
        return str(mlflow_id)

    def _log_files(self, mlflow_id: str, record: Any, run_dir: Path, *, first: bool) -> None:
        client = self.client
        if record.status == "completed" and first and record.adapter and Path(record.adapter).is_dir():
            client.log_artifacts(mlflow_id, record.adapter, "adapter")
            client.set_tag(mlflow_id, "ragtune.adapter", "adapter")
        for name in ("run.json", "config.toml", "eval.json"):
            if (run_dir / name).is_file():
                client.log_artifact(mlflow_id, str(run_dir / name), "run")

    def track(self, runs_dir: Path) -> list[str]:
        """Log every run in ``runs_dir`` (stale ``running`` ones are marked failed first)."""
        from ragtune.finetune import runs

        return [self.log_run(r) for r in runs.list_runs(runs_dir)]

    # -- versions ------------------------------------------------------------------------------------
    def register(self, run_dir: str | Path, name: str | None = None) -> ModelVersionInfo:
        """Register a completed run's adapter as a new version of ``name`` (default: the run's name);
        registering the same run again returns its existing version."""
        from mlflow.exceptions import MlflowException

        from ragtune.finetune.evaluate import completed_record

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
            dataset_hash=tags.get("ragtune.dataset_hash", ""), adapter=str(local_path(mv.source)),
            run_dir=tags.get("ragtune.run_dir", ""), created_at=int(mv.creation_timestamp or 0),
            eval_rows_hash=run.data.tags.get("ragtune.eval_rows_hash") if run else None,
            metrics=dict(run.data.metrics) if run else {}, tags=tags,
        )

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

    # -- promotion -----------------------------------------------------------------------------------
    def promote(self, name: str, version: int, *, force: bool = False) -> Promotion:
        """Point ``production`` at ``version`` unless a gate finds it worse than the current one."""
        client = self.client
        with self._advisory_lock(f"model.{name}"):
            candidate = self._refreshed(self.version(name, version))
            if not candidate.servable:
                raise RegistryError(
                    f"version {version} of {name!r} comes from run {candidate.run_id or candidate.mlflow_run_id}, "
                    f"which did not complete (MLflow status {candidate.run_status}, run {candidate.trained}); "
                    "a failed or interrupted run is never promoted, with or without --force")
            current = self.production(name)
            if current is not None and current.version == candidate.version:
                return Promotion(name, version, version, False, (), changed=False)
            results = tuple(check_gates(self.gates, candidate.metrics, current.metrics)) if current else ()
            failed = [r for r in results if not r.passed]
            notes = []
            if current is not None and not results:
                notes.append(f"no gated metric on production version {current.version}: nothing to compare")
            if results and current is not None and current.eval_rows_hash != candidate.eval_rows_hash:
                notes.append("the two versions were evaluated on different held-out rows")
            if failed and not force:
                raise PromotionRefusedError(name, version, tuple(r.describe() for r in failed))
            client.set_registered_model_alias(name, PRODUCTION, str(version))
            self._set_history(name, [*self.history(name), version])
            client.set_model_version_tag(name, str(version), "ragtune.promotion", json.dumps({
                "at": _now(), "previous": current.version if current else None, "forced": bool(failed),
                "overridden": [r.describe() for r in failed], "gates": [r.describe() for r in results],
            }))
        return Promotion(name, version, current.version if current else None, bool(failed), results,
                         notes=tuple(notes))

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
            previous = history[-1]
            client.set_registered_model_alias(name, PRODUCTION, str(previous))
            self._set_history(name, history)
            client.set_model_version_tag(name, str(current.version), "ragtune.rolled_back",
                                         json.dumps({"at": _now(), "to": previous}))
        return Promotion(name, previous, current.version, False, ())

    def _set_history(self, name: str, history: list[int]) -> None:
        self.client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-1000:]))

    def _refreshed(self, info: ModelVersionInfo) -> ModelVersionInfo:
        """The version with the metrics of its run folder's latest ``eval.json`` logged first."""
        from ragtune.finetune import runs

        run_dir = Path(info.run_dir) if info.run_dir else None
        record = runs.read_record(run_dir) if run_dir is not None and run_dir.is_dir() else None
        if record is None or record.status != "completed":
            return info
        self.log_run(record)
        return self.version(info.name, info.version)


def check_model_name(name: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(f"invalid model name {name!r}: letters, digits, '.', '_' and '-', at most 100")
    return name


def _number(value: Any) -> bool:
    import math

    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _now() -> str:
    from ragtune.finetune.runs import now

    return now()
