"""``ragtune models list|track|register|promote|rollback|export``: the model registry (MLflow in
our PostgreSQL; see ``finetune.lifecycle.registry``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from ragtune.cli.common import AsJson, DataDir, console, err_console, load_settings, num, run_command

if TYPE_CHECKING:
    from ragtune.finetune.lifecycle.registry import ModelRegistry

app = typer.Typer()  # models list|track|register|promote|rollback|export
SHOWN_METRICS = ("eval.loss", "eval.token_f1", "eval.json_valid", "eval.tool_args_accuracy", "eval_loss")


def _registry(data_dir: Path | None) -> ModelRegistry:
    from ragtune.finetune.lifecycle.registry import ModelRegistry

    for noisy in ("mlflow", "alembic"):  # table creation and migrations log at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return ModelRegistry(load_settings(data_dir))


def _version_json(v: Any, changes: list[Any] | None = None) -> dict[str, Any]:
    """A version as JSON; with ``changes`` (the model's alias history) also the moves of
    ``production`` onto or off it (``production_history``: promotions and rollbacks, oldest first)."""
    out = {"name": v.name, "version": v.version, "aliases": list(v.aliases), "run_id": v.run_id,
           "mlflow_run_id": v.mlflow_run_id, "run_status": v.run_status, "base": v.base, "base_hash": v.base_hash,
           "dataset": v.dataset, "dataset_hash": v.dataset_hash, "adapter": v.adapter, "metrics": v.metrics,
           "promotion": json.loads(v.tags["ragtune.promotion"]) if "ragtune.promotion" in v.tags else None}
    if changes is not None:
        out["production_history"] = [c.to_dict() for c in changes if c.involves(v.version)]
    return out


def _history_table(name: str, changes: list[Any]) -> Table:
    table = Table(title=f"{name}: production history")
    for col in ("at", "change", "from", "to"):
        table.add_column(col)
    for c in changes:
        what = ("forced promotion" if c.forced else "promotion") if c.action == "promote" else "rollback"
        table.add_row(c.at, what, "-" if c.previous is None else str(c.previous), str(c.version))
    return table


@app.command("list")
def list_models(
    name: Annotated[str | None, typer.Argument(help="Only this model's versions.")] = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """List registered model versions with their aliases and gated metrics, and each model's
    production history (promotions and rollbacks)."""
    def body() -> None:
        registry = _registry(data_dir)
        versions = registry.versions(name)
        changes = {model: registry.production_changes(model) for model in sorted({v.name for v in versions})}
        if as_json:
            print(json.dumps([_version_json(v, changes[v.name]) for v in versions], indent=2))
            return
        table = Table(title=f"{len(versions)} model version(s)")
        for col in ("model", "version", "aliases", "run", "status", "base", "dataset", *SHOWN_METRICS, "promoted"):
            table.add_column(col, overflow="fold")
        for v in versions:
            promotion = json.loads(v.tags.get("ragtune.promotion", "null")) or {}
            promoted = f"{'forced ' if promotion.get('forced') else ''}{promotion.get('at', '')}" if promotion else ""
            table.add_row(v.name, str(v.version), ",".join(v.aliases), v.run_id, v.run_status, v.base, v.dataset,
                          *(num(v.metrics.get(m)) for m in SHOWN_METRICS), promoted)
        console.print(table)
        for model, moves in changes.items():
            if moves:
                console.print(_history_table(model, moves))

    run_command(body)


@app.command("track")
def track(
    run: Annotated[str | None, typer.Argument(help="One run (folder, id or name); default: every run.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Log training runs to MLflow (failed ones too, as FAILED) without registering them."""
    def body() -> None:
        from ragtune.finetune.lora import runs
        from ragtune.finetune.lora.evaluate import resolve_run

        registry = _registry(data_dir)
        runs_dir = load_settings(data_dir).data_dir / "runs"
        if run is None:
            ids = registry.track(runs_dir)
        else:
            record = runs.read_record(resolve_run(run, runs_dir))
            ids = [registry.log_run(record)] if record is not None else []
        console.print(f"tracked {len(ids)} run(s) in MLflow experiment 'ragtune'")

    run_command(body)


@app.command("register")
def register(
    run: Annotated[str, typer.Argument(help="Run folder, run id or run name (its newest completed run).")],
    name: Annotated[str | None, typer.Option("--name", help="Model name (default: the run's name).")] = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Register a completed run's adapter as a new model version (failed runs are refused)."""
    def body() -> None:
        from ragtune.finetune.lora.evaluate import resolve_run

        registry = _registry(data_dir)
        version = registry.register(resolve_run(run, load_settings(data_dir).data_dir / "runs"), name)
        if as_json:
            print(json.dumps(_version_json(version), indent=2))
            return
        console.print(f"registered {version.name} version {version.version} (run {version.run_id}); serve it with "
                      f"--generator registry:{version.name}/{version.version}", highlight=False)
        if not any(k.startswith("eval.") for k in version.metrics):
            console.print("[yellow]note[/]: no evaluation yet; promotion gates on eval.* metrics (compared with "
                          f"production, or absolute bounds) need `ragtune tune eval {version.run_id}`",
                          highlight=False)

    run_command(body)


@app.command("promote")
def promote(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="Version to serve as production.")],
    force: Annotated[bool, typer.Option("--force", help="Promote even when it fails a gate (worse than the "
                                        "production version, outside a bound or not measured; recorded with "
                                        "the version).")] = False,
    data_dir: DataDir = None,
) -> None:
    """Point the production alias at a version if it passes the promotion gates: no gated metric worse
    than production's, every absolute bound met (also on the first promotion)."""
    def body() -> None:
        result = _registry(data_dir).promote(name, version, force=force)
        if not result.changed:
            console.print(f"{name} version {version} is already production")
            return
        for gate in result.gates:
            mark = "[green]pass[/]" if gate.passed else "[red]FAIL[/]"
            console.print(f"{mark} {gate.describe()}", highlight=False)
        for note in result.notes:
            err_console.print(f"[yellow]note[/]: {note}", highlight=False)
        before = f" (was version {result.previous})" if result.previous else ""
        forced = " [red]forced past failed gates[/]" if result.forced else ""
        console.print(f"{name}@production -> version {version}{before}{forced}", highlight=False)

    run_command(body)


@app.command("rollback")
def rollback(name: Annotated[str, typer.Argument(help="Model name.")], data_dir: DataDir = None) -> None:
    """Point the production alias back at the previous production version."""
    def body() -> None:
        result = _registry(data_dir).rollback(name)
        console.print(f"{name}@production -> version {result.version} (rolled back from {result.previous})",
                      highlight=False)

    run_command(body)


@app.command("export")
def export(
    ref: Annotated[str, typer.Argument(help="NAME (production), NAME@ALIAS or NAME/VERSION.")],
    out: Annotated[Path, typer.Argument(help="New folder for the merged model.")],
    dtype: Annotated[str, typer.Option("--dtype", help="fp32, fp16 or bf16.")] = "fp32",
    fmt: Annotated[str, typer.Option("--format", help="safetensors (a Hugging Face folder) or gguf (one file for "
                                     "llama.cpp and Ollama; Llama-architecture bases such as SmolLM2).")]
    = "safetensors",
    data_dir: DataDir = None,
) -> None:
    """Merge a version's adapter into its base model and save it standalone (safetensors or GGUF, fp32, fp16
    or bf16), checked against the merged model before it is kept."""
    def body() -> None:
        from ragtune.finetune.lifecycle.serving import check_export_options, export_manifest, export_model

        check_export_options(fmt, dtype)  # before the registry is opened
        path = export_model(_registry(data_dir), ref, out, dtype=dtype, format=fmt)
        manifest = export_manifest(path)
        check = manifest["check"]
        size = sum(manifest["files"].values()) / 1e6
        console.print(f"exported {ref} to {path} ({fmt}, {dtype}, {size:,.0f} MB)", highlight=False)
        ends = "the same" if check["next_tokens_equal"] else "different only on near-ties"
        console.print(f"checked: max |logit diff| {check['max_abs_logit_diff']:.3g} (tolerance "
                      f"{check['tolerance']:.3g}), greedy tokens agree at {check['greedy_agreement']:.1%} of "
                      f"{check['positions']} positions, next tokens after the {check['prompts']} prompts {ends}"
                      + ("" if check["tokenizer_equal"] is None else ", tokenizer identical"), highlight=False)

    run_command(body)

