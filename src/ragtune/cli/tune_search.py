"""``ragtune tune search|studies|study``: the Optuna hyperparameter search (``finetune.lifecycle.search``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

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
from ragtune.cli.tune import training_data

app = typer.Typer()  # tune search|studies|study
_PARAMS = (("learning_rate", "lr", "{:.2e}"), ("lora_r", "r", "{}"), ("lora_alpha", "alpha", "{}"),
           ("lora_dropout", "drop", "{:.3f}"), ("epochs", "epochs", "{}"))


@app.command("search")
def tune_search(
    data: Annotated[str, typer.Option("--data", help="A stored dataset name (with eval rows), or a chat JSONL file "
                                      "(set eval_fraction in the config).")],
    trials: Annotated[int, typer.Option("--trials", help="Finished trials the study should hold; running the same "
                                        "command again resumes, a larger number extends it.")],
    base: Annotated[str, typer.Option("--base", help="Base model: smollm2 or a Hugging Face folder.")] = "smollm2",
    config: Annotated[Path | None, typer.Option("--config", help="Training config (tune.toml), with an optional "
                                                "[search] table for the search space.")] = None,
    study: Annotated[str | None, typer.Option("--study", help="Study name (default: the dataset's).")] = None,
    register_as: Annotated[str | None, typer.Option("--register-as", help="Model name for the best trial "
                                                    "(default: the study's).")] = None,
    no_register: Annotated[bool, typer.Option("--no-register", help="Do not register the best trial.")] = False,
    version: Annotated[int | None, typer.Option("--data-version", help="Dataset version (default: latest).")] = None,
    sets: Annotated[list[str] | None, typer.Option("--set", help="Override a config key of every trial: KEY=VALUE, "
                                                   "a table's keys dotted (lora.dropout=0); repeatable.")] = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Search learning rate, LoRA rank, alpha, dropout and epochs with Optuna (TPE, median pruning);
    each trial is a training run; the study is kept in PostgreSQL; the best trial is registered."""
    def body() -> None:
        from ragtune.finetune.lifecycle.search import search
        from ragtune.finetune.lifecycle.search_space import load_space
        from ragtune.finetune.lora.config import load_config

        settings = load_settings(data_dir)
        tune = load_config(config, sets=sets or ())
        space = load_space(config)
        dataset = training_data(settings, data, tune, force=False, version=version)
        # a line per finished trial, above the bars; the search is a trace, its trials' runs below it
        with open_engine(settings) as rt, ProgressBars(lines=["trials"]) as bars:
            result = search(settings=settings, data=dataset, config=tune, trials=trials, base=base, space=space,
                            study=study, register=not no_register, register_as=register_as, progress=bars,
                            tracing=rt.tracing)
            rt.tracing.flush(120_000)
        if as_json:
            print(json.dumps(result.to_dict(), indent=2, default=str))
            return
        for number in result.marked_failed:
            err_console.print(f"[yellow]note[/]: trial {number} was left running by a stopped process; marked failed",
                              highlight=False)
        console.print(trials_table(f"study {result.study}: {len(result.trials)} trial(s), target {result.target} "
                                   "finished", result.trials))
        if result.best is not None:
            console.print(f"best: trial {result.best.number}, eval loss {result.best.value:.4f}, "
                          f"{_params(result.best)} ({result.best.run_dir})", highlight=False)
        if result.registered:
            reg = result.registered
            console.print(f"registered {reg['name']} version {reg['version']} (run {reg['run_id']}); serve it with "
                          f"--generator registry:{reg['name']}/{reg['version']}", highlight=False)
        for note in result.notes:
            err_console.print(f"[yellow]note[/]: {note}", highlight=False)

    run_command(body)


@app.command("studies")
def tune_studies(as_json: AsJson = False, data_dir: DataDir = None) -> None:
    """List hyperparameter-search studies with their trial counts and best eval loss."""
    def body() -> None:
        from ragtune.finetune.lifecycle.studies import list_studies

        studies = list_studies(load_settings(data_dir))
        if as_json:
            print(json.dumps([s.to_dict() for s in studies], indent=2, default=str))
            return
        table = Table(title=f"{len(studies)} stud(ies)")
        for col in ("study", "dataset", "trials", "best eval loss", "best trial", "best run", "started"):
            table.add_column(col, overflow="fold")
        for s in studies:
            counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(s.counts.items()))
            table.add_row(s.name, s.dataset or "-", counts or "0", num(s.best.value if s.best else None),
                          str(s.best.number) if s.best else "-", Path(s.best.run_dir).name if s.best and
                          s.best.run_dir else "-", s.started or "-")
        console.print(table)

    run_command(body)


@app.command("study")
def tune_study(
    name: Annotated[str, typer.Argument(help="Study name (see `ragtune tune studies`).")],
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Show a study's trials: number, state, parameters, eval loss and run folder."""
    def body() -> None:
        from ragtune.finetune.lifecycle.studies import describe_study

        info = describe_study(load_settings(data_dir), name)
        if as_json:
            print(json.dumps(info.to_dict(), indent=2, default=str))
            return
        console.print(trials_table(f"study {info.name}" + (f" on {info.dataset}" if info.dataset else ""),
                                   info.trials))
        if info.best is not None:
            console.print(f"best: trial {info.best.number}, eval loss {info.best.value:.4f}", highlight=False)

    run_command(body)


def trials_table(title: str, trials: Any) -> Table:
    """Short columns never wrap; the run folder and the note share the column that folds."""
    trials = list(trials)
    params = [p for p in _PARAMS if any(p[0] in t.params for t in trials)] or list(_PARAMS[:4])
    table = Table(title=title)
    for col in ("#", "state", *(short for _, short, _ in params), "eval loss", "steps"):
        table.add_column(col, no_wrap=True)
    table.add_column("run / note", overflow="fold")
    for t in trials:
        table.add_row(str(t.number), t.state, *(fmt.format(t.params[k]) if k in t.params else "-"
                                                for k, _, fmt in params),
                      num(t.value), "-" if t.steps is None else str(t.steps),
                      "\n".join(x for x in (Path(t.run_dir).name if t.run_dir else "", t.note or "") if x) or "-")
    return table


def _params(info: Any) -> str:
    return " ".join(f"{short}={fmt.format(info.params[k])}" for k, short, fmt in _PARAMS if k in info.params)
