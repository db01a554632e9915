"""``ragtune tune eval RUN``: base and adapter side by side on the run's held-out rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ragtune.cli.common import DataDir, ProgressBars, console, load_settings, num, run_command

app = typer.Typer()  # tune eval


@app.command("eval")
def tune_eval(
    run: Annotated[str, typer.Argument(help="Run folder, run id or run name (its newest completed run).")],
    limit: Annotated[int | None, typer.Option("--limit", help="Evaluate the first N held-out rows.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Greedy decoding budget per reply.")] = 128,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable (no per-case outputs).")] = False,
    data_dir: DataDir = None,
) -> None:
    """Compare base and tuned: held-out loss and perplexity, exact match, token F1, ROUGE-L, JSON
    validity, schema conformance and tool-call accuracy; writes eval.json into the run folder."""
    def body() -> None:
        from ragtune.finetune.lora.evaluate import evaluate_run, resolve_run

        settings = load_settings(data_dir)
        run_dir = resolve_run(run, settings.data_dir / "runs")
        with ProgressBars(transient=True) as bars:
            report = evaluate_run(run_dir, settings=settings, limit=limit, max_new_tokens=max_new_tokens,
                                  progress=bars)
        if as_json:
            data = report.to_dict()
            data.pop("details")
            print(json.dumps(data, indent=2))
            return
        console.print(report_table(report))
        console.print(f"written to {Path(report.run_dir) / 'eval.json'}", highlight=False)

    run_command(body)


def report_table(report: Any) -> Table:
    """Base, tuned and delta per metric, the delta green where it improved (the benchmarks print it too)."""
    from ragtune.finetune.lora.evaluate import METRICS

    cases = ", ".join(f"{n} {kind}" for kind, n in sorted(report.cases.items()))
    table = Table(title=f"{report.run_id}: {report.rows} held-out row(s), {cases} case(s); greedy, "
                        f"{report.max_new_tokens} new tokens at most")
    for col in ("metric", "base", "tuned", "delta"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    delta = report.delta
    for name, higher in METRICS.items():
        a, b, d = report.base_metrics.get(name), report.tuned_metrics.get(name), delta.get(name)
        if a is None and b is None:
            continue
        colour = "" if d is None or d == 0 else "green" if (d > 0) == higher else "red"
        shown = "-" if d is None else f"{d:+.4f}"
        table.add_row(name, num(a), num(b), f"[{colour}]{shown}[/]" if colour else shown)
    return table
