"""``ragtune tune train|runs``: LoRA fine-tuning runs (``tune search`` reads its data the same way:
``training_data``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from ragtune.cli.common import (
    AsJson,
    DataDir,
    ProgressBars,
    console,
    err_console,
    load_settings,
    num,
    open_engine,
    run_command,
)
from ragtune.errors import DatasetError
from ragtune.models import Principal

if TYPE_CHECKING:
    from ragtune.finetune.lora.config import TuneConfig
    from ragtune.finetune.lora.trainset import TrainSet
    from ragtune.settings import Settings

app = typer.Typer()  # tune train|runs


@app.command("train")
def train(
    data: Annotated[str, typer.Option("--data", help="A stored dataset name (`ragtune data import`), or a chat "
                                      "JSONL file (also Alpaca / ShareGPT).")],
    base: Annotated[str, typer.Option("--base", help="Base model: smollm2 or a Hugging Face folder.")] = "smollm2",
    config: Annotated[Path | None, typer.Option("--config", help="Training config (tune.toml).")] = None,
    output: Annotated[Path | None, typer.Option("--output", help="Run folder (default <data-dir>/runs/"
                                                "<name>-<timestamp>).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Run name (default: the dataset's).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the newest unfinished run of this name "
                                         "(or --output) from its last checkpoint.")] = False,
    nproc: Annotated[int | None, typer.Option("--nproc", help="Data-parallel processes (torchrun, gloo).")] = None,
    method: Annotated[str | None, typer.Option("--method", help="sft | dpo (default: the config's, sft).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Train on a dataset that failed validation; the "
                                        "reasons are recorded with the run.")] = False,
    version: Annotated[int | None, typer.Option("--data-version", help="Dataset version (default: latest).")] = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Train a LoRA adapter on a dataset; prints the run's record."""
    def body() -> None:
        from ragtune.finetune.lora import runs
        from ragtune.finetune.lora.config import load_config, to_dict
        from ragtune.finetune.lora.train import resolve_base, resume_run, start_run

        settings = load_settings(data_dir)
        tune = load_config(config, method=method)
        dataset = training_data(settings, data, tune, force=force, version=version)
        run_name = runs.check_name(name or dataset.name)
        if resume:
            run_dir = output.expanduser() if output is not None else runs.resumable_run(
                settings.data_dir / "runs", run_name)
            expect: dict[str, Any] = {"base_hash": resolve_base(base, settings.resolved_cache_dir).hash,
                                      "dataset_hash": dataset.content_hash}
            if config is not None or method is not None:
                expect["config"] = to_dict(tune)
            with ProgressBars() as bars:
                record = resume_run(run_dir, nproc=nproc, progress=bars, expect=expect)
        else:
            with ProgressBars() as bars:
                record = start_run(base=base, data=dataset, config=tune, data_dir=settings.data_dir,
                                   cache_dir=settings.resolved_cache_dir, name=run_name, output=output,
                                   nproc=nproc or 1, progress=bars)
        _print_record(record, as_json)

    run_command(body)


def training_data(settings: Settings, data: str, tune: TuneConfig, *, force: bool, version: int | None) -> TrainSet:
    """``--data``: a file of examples, or a stored dataset (its latest version unless ``version``)."""
    from ragtune.finetune.lora.trainset import from_file, from_store

    path = Path(data).expanduser()
    if path.is_file():
        if version is not None:
            raise typer.BadParameter("--data-version applies to stored datasets, not to a file")
        return from_file(path, eval_fraction=tune.eval_fraction, force=force)
    if "/" in data or path.suffix in (".jsonl", ".json"):
        raise DatasetError(f"no dataset file at {path}")
    from ragtune.finetune.data.store import DatasetStore

    with open_engine(settings) as rt:
        # Training, search and evaluation are the local operator's commands: they read every row.
        return from_store(DatasetStore(rt.db, cache_dir=settings.resolved_cache_dir), data,
                          principal=Principal.system(), version=version, force=force)


def _print_record(record: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(record.to_dict(), indent=2, default=str))
        return
    m = record.metrics
    table = Table(title=f"run {record.run_id}: {record.status}", show_header=False)
    rows = [
        ("folder", record.path), ("method", record.method), ("base", f"{record.base} ({record.base_hash[:12]})"),
        ("dataset", f"{record.dataset}" + (f" v{record.dataset_version}" if record.dataset_version else "")
         + f" ({record.dataset_hash[:12]}): {record.train_rows} train, {record.eval_rows} eval rows"),
        ("steps", f"{m.get('steps')} (resumed from {m['resumed_from_step']})" if m.get("resumed_from_step")
         else str(m.get("steps"))),
        ("loss", f"{num(m.get('first_loss'))} -> {num(m.get('last_loss'))} (mean {num(m.get('train_loss'))})"),
        ("eval loss", num(m.get("eval_loss"))),
        ("tokens/s", f"{m.get('tokens_per_second', 0):,.1f} ({m.get('session_tokens', 0):,} tokens in "
                     f"{m.get('seconds', 0):.1f} s, {record.world_size} process(es))"),
        ("peak memory", f"{m.get('peak_rss_mb', 0):,.0f} MiB RSS"),
        ("adapter", record.adapter or "-"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    for note in record.notes:
        err_console.print(f"[yellow]note[/]: {note}", highlight=False)
    for reason in record.forced_reasons:
        err_console.print(f"[yellow]forced past validation[/]: {reason}", highlight=False)


@app.command("runs")
def list_runs(
    name: Annotated[str | None, typer.Option("--name", help="Only runs of this name.")] = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """List training runs (a run killed while training shows as failed)."""
    def body() -> None:
        from ragtune.finetune.lora import runs

        records = runs.list_runs(load_settings(data_dir).data_dir / "runs", name)
        if as_json:
            print(json.dumps([r.to_dict() for r in records], indent=2, default=str))
            return
        table = Table(title=f"{len(records)} run(s)")
        for col in ("run", "status", "method", "base", "dataset", "steps", "loss", "finished", "error"):
            table.add_column(col, overflow="fold")
        for r in records:
            table.add_row(r.run_id, r.status, r.method, r.base, r.dataset, str(r.metrics.get("steps", "-")),
                          num(r.metrics.get("last_loss")), r.finished_at or "-", r.error or "")
        console.print(table)

    run_command(body)
