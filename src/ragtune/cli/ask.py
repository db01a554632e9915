"""``ragtune ask``: a cited answer, streamed to the terminal as it is generated."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ragtune.cli.common import (
    AsGroupOpt,
    AsUserOpt,
    CollectionOpt,
    DataDir,
    console,
    engine,
    reader,
    run_command,
)
from ragtune.models import Answer, Message

if TYPE_CHECKING:
    from ragtune.engine import Ragtune

app = typer.Typer()  # ask (top level)

HistoryOpt = Annotated[Path | None, typer.Option(
    "--history", help="The conversation so far, which the question follows up: a JSON list of {\"role\", "
                      "\"content\"} messages (user, assistant, system), {\"messages\": [...]}, or JSON Lines.")]


@app.command("ask")
def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    collection: CollectionOpt = None,
    top_k: Annotated[int | None, typer.Option("--top-k", "-k", help="Sources given to the generator.")] = None,
    mode: Annotated[str | None, typer.Option(help="Retrieval: dense | bm25 | hybrid")] = None,
    generator: Annotated[str | None, typer.Option(
        "--generator", "-g", help="reader | smollm2 | extractive | openai:MODEL | llamacpp:FILE.gguf | model folder"
    )] = None,
    adapter: Annotated[Path | None, typer.Option(help="PEFT LoRA adapter folder for a transformers model.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Longest answer, in tokens.")] = None,
    filter_: Annotated[list[str] | None, typer.Option("--filter", "-f", help="key=v, key=a|b, key>=n")] = None,
    as_user: AsUserOpt = None,
    as_group: AsGroupOpt = None,
    stream: Annotated[bool, typer.Option("--stream/--no-stream", help="Print the answer as it is generated.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output (no streaming).")] = False,
    rerank: Annotated[bool | None, typer.Option(
        "--rerank/--no-rerank", help="Rerank the sources with the configured reranker, or the collection's latest "
                                     "trained one (`ragtune rerank train`); default: the reranker setting.")] = None,
    answerability: Annotated[str | None, typer.Option(
        help="Also abstain by a trained answerability model: `latest`, `vN` or a folder (`ragtune answerability "
             "train`); `none` turns the answerability setting off.")] = None,
    history: HistoryOpt = None,
    data_dir: DataDir = None,
) -> None:
    """Answer a question from a collection's documents, with numbered citations (or abstain)."""
    def body() -> None:
        from ragtune.generate.answer import answer_fields

        principal = reader(as_user, as_group)
        overrides: dict[str, Any] = {"generator_adapter": adapter} if adapter else {}
        streamed: list[str] = []

        def on_token(text: str) -> None:
            streamed.append(text)
            sys.stdout.write(text)
            sys.stdout.flush()

        with engine(data_dir, **overrides) as rt:
            conversation = read_history(rt, history)
            answer = rt.ask(question, collection=collection, top_k=top_k, mode=mode, filters=filter_ or [],
                            principal=principal, generator=generator, max_tokens=max_tokens,
                            on_token=on_token if stream and not as_json else None, reranker=rerank,
                            answerability=answerability, history=conversation)
        if as_json:
            print(json.dumps(answer_fields(answer), ensure_ascii=False, indent=2, default=str))
            return
        if streamed:
            sys.stdout.write("\n")
            if answer.abstained and "".join(streamed).strip() != answer.text:
                console.print(answer.text)
        else:
            console.print(answer.text, highlight=False)
        print_sources(console, answer)

    run_command(body)


def read_history(rt: Ragtune, path: Path | None) -> list[Message] | None:
    """The conversation in ``--history``'s file (None without one), checked by the project's limits."""
    from ragtune.generate.conversation import ConversationOptions, read_conversation

    return read_conversation(path, ConversationOptions.from_settings(rt.settings)) if path else None


def print_sources(console: Console, answer: Answer) -> None:
    """Warnings, unsupported sentences, the sources table (cited ones ticked) and the status line."""
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
    if answer.span is not None:
        span = answer.span
        console.print(f"[dim]reader: {span.text!r} in [{span.source}] {span.uri} at {span.start}-{span.end}, "
                      f"confidence {span.confidence:.2f}[/]", highlight=False)
    status = "abstained" if answer.abstained else ("grounded" if answer.grounded else "not fully grounded")
    if answer.abstained and answer.decided_by:
        status += f" (decided by {answer.decided_by})"
    if answer.relevance is not None:
        status += f", relevance {answer.relevance:.2f}"
    tps = answer.usage.get("tokens_per_second")
    speed = f", {tps:.1f} tokens/s" if tps else ""
    console.print(f"[dim]{answer.model}: {status}{speed}, trace {answer.trace_id}[/]")

