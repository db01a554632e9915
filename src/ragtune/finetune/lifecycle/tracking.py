"""How a training run becomes an MLflow run: its parameters, metrics (training metrics;
``eval.<metric>`` and ``eval.base.<metric>`` from ``tune eval``), the dataset and base model hashes
(as parameters and tags), and the adapter, run.json, config.toml and eval.json as artefacts. A
failed or interrupted run is tracked too, with MLflow status ``FAILED``. Logging a run again
updates it: only metrics that changed are sent, and the adapter is uploaded once.

Also the two translations between ragtune's world and MLflow's: our libpq URL as a SQLAlchemy URL
(``sqlalchemy_url``, shared with the hyperparameter search's Optuna storage) and an artefact URI as
a local folder (``local_path``).
"""

from __future__ import annotations

import datetime as dt
import math
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from ragtune.errors import ModelError
from ragtune.finetune.lora.evaluate import read_report

_MLFLOW_STATUS = {"completed": "FINISHED", "failed": "FAILED"}


def sqlalchemy_url(database_url: str, schema: str) -> str:
    """Our libpq URL or conninfo as a SQLAlchemy URL for psycopg 3, with ``schema`` first on the
    search path (every libpq parameter but the database and the credentials goes in the query)."""
    from psycopg.conninfo import conninfo_to_dict
    from sqlalchemy.engine import URL  # installed with mlflow and optuna (the train extra)

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


def mlflow_run(client: Any, experiment_id: str, run_id: str) -> Any:
    """The MLflow run of ragtune's run ``run_id``, or None."""
    found = client.search_runs([experiment_id], filter_string=f"tags.`ragtune.run_id` = '{run_id}'", max_results=1)
    return found[0] if found else None


def log_run(client: Any, experiment_id: str, record: Any) -> str:
    """Track a training run (a ``RunRecord``, any status) as an MLflow run; again for the same run
    updates its status, metrics and artefacts. Returns the MLflow run id."""
    from mlflow.entities import Metric, Param, RunTag

    run_dir = Path(record.path)
    report = read_report(run_dir) if run_dir.is_dir() else None
    tags = {"ragtune.run_id": record.run_id, "ragtune.run_dir": record.path, "ragtune.status": record.status,
            "ragtune.base": record.base, "ragtune.base_hash": record.base_hash, "ragtune.dataset": record.dataset,
            "ragtune.dataset_hash": record.dataset_hash, "ragtune.method": record.method}
    if record.error:
        tags["ragtune.error"] = record.error[:7000]
    if record.trace_ids:  # the run's traces in ragtune (`ragtune traces show ID`), newest last
        tags["ragtune.trace_ids"] = ",".join(record.trace_ids)[-5000:]
    if report is not None:
        tags["ragtune.eval_rows_hash"] = report.rows_hash
    existing = mlflow_run(client, experiment_id, record.run_id)
    now = int(time.time() * 1000)
    metrics: list[Any] = []
    if existing is None:
        run = client.create_run(experiment_id, start_time=_ms(record.started_at), tags=tags, run_name=record.run_id)
        mlflow_id, have = run.info.run_id, {}
        params = {**record.params(), "method": record.method, "dataset_version": record.dataset_version,
                  "dataset_hash": record.dataset_hash, "base_hash": record.base_hash, "base_path": record.base_path,
                  "train_rows": record.train_rows, "eval_rows": record.eval_rows}
        plist = [Param(str(k), str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(plist), 100):
            client.log_batch(mlflow_id, params=plist[i:i + 100])
        metrics += [Metric("train.loss", float(loss), now, int(step))
                    for step, loss in record.metrics.get("losses", []) if number(loss)]
    else:
        mlflow_id, have = existing.info.run_id, dict(existing.data.metrics)
    wanted = {k: float(v) for k, v in record.metrics.items() if number(v)}
    if report is not None:
        for prefix, values in (("eval.", report.tuned_metrics), ("eval.base.", report.base_metrics)):
            wanted.update({prefix + k: float(v) for k, v in values.items() if v is not None and number(v)})
        wanted["eval.rows"] = float(report.rows)
    metrics += [Metric(k, v, now, 0) for k, v in wanted.items() if have.get(k) != v]
    for i in range(0, len(metrics), 1000):
        client.log_batch(mlflow_id, metrics=metrics[i:i + 1000], tags=[RunTag(k, v) for k, v in tags.items()]
                         if i == 0 else ())
    if not metrics:
        client.log_batch(mlflow_id, tags=[RunTag(k, v) for k, v in tags.items()])
    _log_files(client, mlflow_id, record, run_dir,
               first=existing is None or "ragtune.adapter" not in existing.data.tags)
    status = _MLFLOW_STATUS.get(record.status)
    if status and (existing is None or existing.info.status != status):
        client.set_terminated(mlflow_id, status=status, end_time=_ms(record.finished_at))
    return str(mlflow_id)


def _log_files(client: Any, mlflow_id: str, record: Any, run_dir: Path, *, first: bool) -> None:
    if record.status == "completed" and first and record.adapter and Path(record.adapter).is_dir():
        client.log_artifacts(mlflow_id, record.adapter, "adapter")
        client.set_tag(mlflow_id, "ragtune.adapter", "adapter")
    for name in ("run.json", "config.toml", "eval.json"):
        if (run_dir / name).is_file():
            client.log_artifact(mlflow_id, str(run_dir / name), "run")


def _ms(timestamp: str | None) -> int | None:
    if not timestamp:
        return None
    return int(dt.datetime.fromisoformat(timestamp).timestamp() * 1000)


def number(value: Any) -> bool:
    """A finite int or float (not a bool): what MLflow can hold as a metric."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
