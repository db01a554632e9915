"""``ragtune ask``: a cited answer, streamed to the terminal as it is generated."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table


def ask_command(
    question: Annotated[str, typer.Argument(help="The question.")],
    collection: Annotated[str | None, typer.Option("--collection", "-c", help="Collection name.")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", "-k", help="Sources given to the generator.")] = None,
    mode: Annotated[str | None, typer.Option(help="Retrieval: dense | bm25 | hybrid")] = None,
    generator: Annotated[str | None, typer.Option(
        "--generator", "-g", help="smollm2 | extractive | openai:MODEL | llamacpp:FILE.gguf | model folder")] = None,
    adapter: Annotated[Path | None, typer.Option(help="PEFT LoRA adapter folder for a transformers model.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Longest answer, in tokens.")] = None,
    filter_: Annotated[list[str] | None, typer.Option("--filter", "-f", help="key=v, key=a|b, key>=n")] = None,
    as_group: Annotated[list[str] | None, typer.Option("--as-group", help="Ask as a member of this group.")] = None,
    stream: Annotated[bool, typer.Option("--stream/--no-stream", help="Print the answer as it is generated.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output (no streaming).")] = False,
    rerank: Annotated[bool, typer.Option("--rerank/--no-rerank", help="Rerank the sources with the collection's "
                                         "latest trained reranker (`ragtune rerank train`).")] = False,
    answerability: Annotated[str | None, typer.Option(
        help="Also abstain by a trained answerability model: `latest` or a folder "
             "(`ragtune answerability train`).")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Project data folder.")] = None,
) -> None:
    """Answer a question from a collection's documents, with numbered citations (or abstain)."""
    from ragtune.cli.main import _engine, _groups, _run, console

    def body() -> None:
        from ragtune.generate.answer import answer_fields
        from ragtune.models import Principal

        groups = frozenset(g for item in as_group or [] for g in _groups(item))
        principal = Principal(id="cli", groups=groups)
        overrides: dict[str, Any] = {"generator_adapter": adapter} if adapter else {}
        streamed: list[str] = []

        def on_token(text: str) -> None:
            streamed.append(text)
            sys.stdout.write(text)
            sys.stdout.flush()

        with _engine(data_dir, **overrides) as rt:
            extra: dict[str, Any] = {}
            if rerank:
                from ragtune.cli.rerank import collection_reranker

                extra["reranker"] = collection_reranker(rt, collection, top_k=top_k or rt.settings.answer_top_k)
            if answerability:
                from ragtune.cli.answerability import resolve_answerability

                extra["answerability"] = resolve_answerability(rt, answerability)
            answer = rt.ask(question, collection=collection, top_k=top_k, mode=mode, filters=filter_ or [],
                            principal=principal, generator=generator, max_tokens=max_tokens,
                            on_token=on_token if stream and not as_json else None, **extra)
        if as_json:
            print(json.dumps(answer_fields(answer), ensure_ascii=False, indent=2, default=str))
            return
        if streamed:
            sys.stdout.write("\n")
            if answer.abstained and "".join(streamed).strip() != answer.text:
                console.print(answer.text)
        else:
            console.print(answer.text, highlight=False)
        _print_sources(console, answer)

    _run(body)


def _print_sources(console: Console, answer: Any) -> None:
    if answer.error:
        console.print(f"[yellow]warning[/]: {answer.error}")
    flagged = [s for s in answer.sentences if not s.supported]
    for s in flagged:
        console.print(f"[yellow]unsupported[/] (support {s.support:.2f}): {s.text}", highlight=False)
    cited = {c.number for c in answer.citations}
    title = "closest sources (no answer found)" if answer.abstained else "sources"
    table = Table(title=title, title_justify="left")
    for col in ("#", "cited", "document", "offsets", "text"):
        table.add_column(col, overflow="fold")
    for i, hit in enumerate(answer.hits, start=1):
        text = hit.chunk.text.replace("\n", " ")
        table.add_row(str(i), "✓" if i in cited else "", hit.uri, f"{hit.chunk.start}-{hit.chunk.end}",
                      text[:160] + ("…" if len(text) > 160 else ""))
    console.print(table)
    status = "abstained" if answer.abstained else ("grounded" if answer.grounded else "not fully grounded")
    tps = answer.usage.get("tokens_per_second")
    speed = f", {tps:.1f} tokens/s" if tps else ""
    console.print(f"[dim]{answer.model}: {status}{speed}, trace {answer.trace_id}[/]")


def eval_answers_command(
    dataset: Annotated[str, typer.Option(help="squad | hotpotqa | beir:PATH")] = "squad",
    generators: Annotated[str, typer.Option("--generator", "-g",
                                            help="Comma-separated generators to compare.")] = "extractive,smollm2",
    limit: Annotated[int, typer.Option(help="Questions (half unanswerable where the set has them).")] = 20,
    collection: Annotated[str | None, typer.Option("--collection", "-c")] = None,
    subset_corpus: Annotated[bool, typer.Option(
        "--subset-corpus", help="Index only the chosen questions' paragraphs (the whole HotpotQA corpus takes "
                                "~45 min to embed at fp32).")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Project data folder.")] = None,
) -> None:
    """EM, F1, abstention, citation precision, groundedness, latency and tokens/s per generator."""
    from rich.progress import Progress

    from ragtune.cli.main import _engine, _run, console, err_console

    def body() -> None:
        from ragtune.evaluate.answers import evaluate_answers

        names = [g.strip() for g in generators.split(",") if g.strip()]
        with _engine(data_dir) as rt, Progress(console=err_console, transient=True) as progress:
            tasks: dict[str, Any] = {}

            def advance(gen: str, done: int, total: int) -> None:
                if gen not in tasks:
                    tasks[gen] = progress.add_task(f"asking with {gen}", total=total)
                progress.update(tasks[gen], completed=done)

            result = evaluate_answers(rt, dataset, generators=names, limit=limit, collection=collection,
                                      progress=advance, subset_corpus=subset_corpus)
        if as_json:
            print(json.dumps(result, indent=2))
            return
        console.print(answers_table(result))

    _run(body)


def answers_table(result: dict[str, Any]) -> Table:
    table = Table(title=f"answers on {result['dataset']}: {result['questions']} questions")
    columns = [("EM", "exact_match"), ("F1", "f1"), ("abst. P", "abstention_precision"),
               ("abst. R", "abstention_recall"), ("cite P", "citation_precision"), ("grounded", "groundedness"),
               ("p50 ms", "p50_ms"), ("tok/s", "tokens_per_second")]
    table.add_column("generator")
    for label, _ in columns:
        table.add_column(label, justify="right")
    for gen, row in result["generators"].items():
        cells = []
        for _, key in columns:
            value = row.get(key)
            cells.append("-" if value is None else (f"{value:.0f}" if key == "p50_ms" else f"{value:.3f}"))
        table.add_row(gen, *cells)
    return table
