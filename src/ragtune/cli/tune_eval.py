"""``ragtune tune eval RUN``: base and adapter side by side on the run's held-out rows, or on a
registered evaluation set (``--set``), optionally scored by a task spec (``--task-spec``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ragtune.cli.common import (
    DataDir,
    ProgressBars,
    confusion_tables,
    console,
    load_settings,
    num,
    open_engine,
    run_command,
)
from ragtune.models import Principal

app = typer.Typer()  # tune eval


@app.command("eval")
def tune_eval(
    run: Annotated[str, typer.Argument(help="Run folder, run id or run name (its newest completed run).")],
    limit: Annotated[int | None, typer.Option("--limit", help="Evaluate the first N rows.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Greedy decoding budget per reply.")] = 128,
    eval_set: Annotated[str | None, typer.Option(
        "--set", help="Evaluate on this registered evaluation set (`ragtune data import --eval-set`, its latest "
                      "version) instead of the run's held-out rows.")] = None,
    task_spec: Annotated[Path | None, typer.Option(
        "--task-spec", help="What the replies should be (JSON or TOML): a JSON Schema with enums and per-field "
                            "metrics (exact, f1, accuracy + macro-F1); see docs/task-metrics.md.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable (no per-case outputs).")] = False,
    data_dir: DataDir = None,
) -> None:
    """Compare base and tuned: held-out loss and perplexity, exact match, token F1, ROUGE-L, JSON
    validity, schema conformance, tool-call accuracy and a task spec's per-field metrics; writes
    eval.json into the run folder."""
    def body() -> None:
        from ragtune.evaluate.task_spec import load_task_spec
        from ragtune.finetune.lora.evaluate import evaluate_run, resolve_run

        settings = load_settings(data_dir)
        spec = load_task_spec(task_spec) if task_spec is not None else None  # a bad spec fails first
        run_dir = resolve_run(run, settings.data_dir / "runs")
        examples, data = None, None
        if eval_set is not None:
            from ragtune.finetune.data.store import DatasetStore

            with open_engine(settings) as rt:
                # evaluation is the local operator's command: it reads every row (as `tune train` does)
                info, examples = DatasetStore(rt.db, cache_dir=settings.resolved_cache_dir).eval_set(
                    eval_set, principal=Principal.system())
            data = f"eval set {info.name} v{info.version}"
        with open_engine(settings) as rt, ProgressBars(transient=True) as bars:  # the evaluation is a trace
            report = evaluate_run(run_dir, settings=settings, limit=limit, max_new_tokens=max_new_tokens,
                                  progress=bars, task_spec=spec, examples=examples, data=data, tracing=rt.tracing)
            rt.tracing.flush(120_000)  # the embedded server may have to start for it
        if as_json:
            out = report.to_dict()
            out.pop("details")
            print(json.dumps(out, indent=2))
            return
        console.print(report_table(report))
        for table in confusion_tables(report.confusion.get("tuned", {}), "tuned"):
            console.print(table)
        console.print(f"written to {Path(report.run_dir) / 'eval.json'}", highlight=False)

    run_command(body)


def report_table(report: Any) -> Table:
    """Base, tuned and delta per metric (a task spec's field metrics after the others), the delta
    green where it improved (the benchmarks print it too)."""
    from ragtune.finetune.lora.evaluate import higher_is_better, metric_names

    cases = ", ".join(f"{n} {kind}" for kind, n in sorted(report.cases.items()))
    spec = f"; task spec {report.task['source']}" if report.task else ""
    table = Table(title=f"{report.run_id}: {report.rows} row(s) ({report.data}), "
                        f"{cases} case(s); greedy, {report.max_new_tokens} new tokens at most{spec}")
    for col in ("metric", "base", "tuned", "delta"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    delta = report.delta
    for name in metric_names(report.base_metrics, report.tuned_metrics):
        a, b, d = report.base_metrics.get(name), report.tuned_metrics.get(name), delta.get(name)
        declared = name.startswith("field.")  # a spec's metric is shown even when nothing measured it
        if a is None and b is None and not declared:
            continue
        colour = "" if d is None or d == 0 else "green" if (d > 0) == higher_is_better(name) else "red"
        shown = "-" if d is None else f"{d:+.4f}"
        table.add_row(name, num(a), num(b), f"[{colour}]{shown}[/]" if colour else shown)
    return table
