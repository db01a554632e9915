"""``ragtune eval retrieval|answers``: retrieval and answer quality on a dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ragtune.cli.common import (
    AsJson,
    CollectionOpt,
    DataDir,
    ProgressBars,
    confusion_tables,
    console,
    engine,
    run_command,
)

app = typer.Typer()  # eval answers|retrieval

# Measures as the README's tables name them: the mean of reciprocal ranks over queries is MRR
# (the result's keys keep the metric's own name, RR@10, which scripts read).
MEASURE_LABELS = {"RR@10": "MRR@10"}
# (label, key) of answers_table's columns
ANSWER_COLUMNS = [("EM", "exact_match"), ("HasAns F1", "f1"), ("overall F1", "overall_f1"),
                  ("abst. P", "abstention_precision"), ("abst. R", "abstention_recall"),
                  ("cite P", "citation_precision"), ("grounded", "groundedness"), ("p50 ms", "p50_ms"),
                  ("tok/s", "tokens_per_second")]


@app.command("answers")
def eval_answers(
    dataset: Annotated[str, typer.Option(help="squad | hotpotqa | beir:PATH")] = "squad",
    generators: Annotated[str, typer.Option("--generator", "-g",
                                            help="Comma-separated generators to compare.")] = "extractive,smollm2",
    limit: Annotated[int, typer.Option(help="Questions (half unanswerable where the set has them).")] = 20,
    collection: CollectionOpt = None,
    subset_corpus: Annotated[bool, typer.Option(
        "--subset-corpus", help="Index only the chosen questions' paragraphs (the whole HotpotQA corpus takes "
                                "~45 min to embed at fp32).")] = False,
    task_spec: Annotated[Path | None, typer.Option(
        "--task-spec", help="What the answers should be (JSON or TOML): a text task adds ROUGE-L; a json task "
                            "(gold answers in JSON) scores schema and fields; see docs/task-metrics.md.")] = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Answer quality per generator on a dataset: exact match, F1, abstention precision and recall,
    citation precision, groundedness, latency and tokens/s (and a task spec's metrics)."""
    def body() -> None:
        from ragtune.evaluate.answers import evaluate_answers
        from ragtune.evaluate.task_spec import load_task_spec

        spec = load_task_spec(task_spec) if task_spec is not None else None  # a bad spec fails before indexing
        names = [g.strip() for g in generators.split(",") if g.strip()]
        with engine(data_dir) as rt, ProgressBars(transient=True) as bars:
            result = evaluate_answers(rt, dataset, generators=names, limit=limit, collection=collection,
                                      progress=bars, subset_corpus=subset_corpus, task_spec=spec)
        if as_json:
            print(json.dumps(result, indent=2))
            return
        console.print(answers_table(result))
        if spec is not None:
            console.print(task_table(result))
            for gen, row in result["generators"].items():
                for table in confusion_tables(row.get("confusion", {}), gen):
                    console.print(table)

    run_command(body)


def task_table(result: dict[str, Any]) -> Table:
    """A task spec's metrics (those not in ``answers_table``), one column per generator."""
    task = result["task"]
    generators = result["generators"]
    names = list(dict.fromkeys(k for row in generators.values() for k in row
                               if k in ("rouge_l", "json_valid", "schema_valid") or k.startswith("field.")))
    table = Table(title=f"{task['task']} task ({task['source']}) on {result['dataset']}: answerable questions")
    table.add_column("metric")
    for gen in generators:
        table.add_column(gen, justify="right")
    for name in names:
        table.add_row(name, *("-" if row.get(name) is None else f"{row[name]:.3f}" for row in generators.values()))
    return table


def answers_table(result: dict[str, Any]) -> Table:
    """One row per generator of ``evaluate_answers``' result (the benchmarks print it too)."""
    table = Table(title=f"answers on {result['dataset']}: {result['questions']} questions")
    table.add_column("generator")
    for label, _ in ANSWER_COLUMNS:
        table.add_column(label, justify="right")
    for gen, row in result["generators"].items():
        cells = []
        for _, key in ANSWER_COLUMNS:
            value = row.get(key)
            cells.append("-" if value is None else (f"{value:.0f}" if key == "p50_ms" else f"{value:.3f}"))
        table.add_row(gen, *cells)
    return table


@app.command("retrieval")
def eval_retrieval(
    dataset: Annotated[str, typer.Option(help="squad | hotpotqa | beir:PATH")] = "squad",
    modes: Annotated[str, typer.Option(help="Comma-separated modes to compare.")] = "bm25,dense,hybrid",
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N queries.")] = None,
    subset_corpus: Annotated[bool, typer.Option(help="With --limit: index only those queries' paragraphs.")] = False,
    collection: CollectionOpt = None,
    measures: Annotated[str | None, typer.Option(
        help="ir_measures names, space- or comma-separated, e.g. \"nDCG@10 R@1 P@1 RR@10\" (default: nDCG@10 R@1 "
             "P@1 R@5 R@10 RR@10).")] = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Retrieval quality per search mode on a dataset: nDCG@10, Recall@1, Precision@1, Recall@5,
    Recall@10, MRR@10 (or the --measures given) and latency."""
    def body() -> None:
        from ragtune.evaluate.metrics import DEFAULT_MEASURES, parse_measures
        from ragtune.evaluate.retrieval import evaluate_retrieval

        chosen = parse_measures(measures) if measures is not None else DEFAULT_MEASURES  # checked before indexing
        with engine(data_dir) as rt, ProgressBars(transient=True) as bars:
            result = evaluate_retrieval(rt, dataset, modes=[m.strip() for m in modes.split(",")], limit=limit,
                                        subset_corpus=subset_corpus, collection=collection, progress=bars,
                                        measures=chosen)
        if as_json:
            print(json.dumps(result, indent=2))
            return
        table = Table(title=f"retrieval on {dataset}: {result['queries']} queries, {result['corpus']} documents")
        table.add_column("mode")
        for m in result["measures"]:
            table.add_column(MEASURE_LABELS.get(m, m), justify="right")
        table.add_column("p50 ms", justify="right")
        for mode, row in result["modes"].items():
            table.add_row(mode, *(f"{row[m]:.4f}" for m in result["measures"]), f"{row['p50_ms']:.1f}")
        console.print(table)

    run_command(body)
