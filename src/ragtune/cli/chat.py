"""``ragtune chat``: ``ask`` in a loop, each question read as a follow-up of the conversation so far."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from ragtune.cli.ask import HistoryOpt, print_sources, read_history
from ragtune.cli.common import (
    AsGroupOpt,
    AsUserOpt,
    CollectionOpt,
    DataDir,
    console,
    engine,
    err_console,
    reader,
    run_command,
)
from ragtune.errors import RagtuneError
from ragtune.models import Message

app = typer.Typer()  # chat (top level)

EXIT_WORDS = ("exit", "quit")


@app.command("chat")
def chat(
    collection: CollectionOpt = None,
    top_k: Annotated[int | None, typer.Option("--top-k", "-k", help="Sources given to the generator.")] = None,
    mode: Annotated[str | None, typer.Option(help="Retrieval: dense | bm25 | hybrid")] = None,
    generator: Annotated[str | None, typer.Option(
        "--generator", "-g", help="smollm2 | extractive | openai:MODEL | llamacpp:FILE.gguf | model folder")] = None,
    adapter: Annotated[Path | None, typer.Option(help="PEFT LoRA adapter folder for a transformers model.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Longest answer, in tokens.")] = None,
    filter_: Annotated[list[str] | None, typer.Option("--filter", "-f", help="key=v, key=a|b, key>=n")] = None,
    as_user: AsUserOpt = None,
    as_group: AsGroupOpt = None,
    stream: Annotated[bool, typer.Option("--stream/--no-stream", help="Print each answer as it is generated.")] = True,
    rerank: Annotated[bool | None, typer.Option(
        "--rerank/--no-rerank", help="Rerank the sources (see `ragtune ask --help`).")] = None,
    answerability: Annotated[str | None, typer.Option(
        help="Also abstain by a trained answerability model (see `ragtune ask --help`).")] = None,
    history: HistoryOpt = None,
    data_dir: DataDir = None,
) -> None:
    """Chat with a collection: questions are read line by line from the terminal or standard input
    until `exit` or the end of input; each is searched with the conversation so far (its questions
    and answers), answered with numbered citations, and added to it."""
    def body() -> None:
        principal = reader(as_user, as_group)
        overrides: dict[str, Any] = {"generator_adapter": adapter} if adapter else {}
        interactive = sys.stdin.isatty()
        streamed: list[str] = []

        def on_token(text: str) -> None:
            streamed.append(text)
            sys.stdout.write(text)
            sys.stdout.flush()

        with engine(data_dir, **overrides) as rt:
            conversation: list[Message] = read_history(rt, history) or []
            if interactive:
                console.print("[dim]Ask a question; `exit` or Ctrl-D ends the chat.[/]")
            while True:
                if interactive:
                    console.print("[bold]you>[/] ", end="")
                line = sys.stdin.readline()
                if not line or line.strip().lower() in EXIT_WORDS:
                    break
                question = line.strip()
                if not question:
                    continue
                streamed.clear()
                try:
                    answer = rt.ask(question, collection=collection, top_k=top_k, mode=mode, filters=filter_ or [],
                                    principal=principal, generator=generator, max_tokens=max_tokens,
                                    on_token=on_token if stream else None, reranker=rerank,
                                    answerability=answerability, history=conversation)
                except RagtuneError as exc:
                    # one bad question (too long a conversation, a bad filter) does not end the chat
                    err_console.print(f"[bold red]error[/]: {escape(str(exc))}", markup=True, highlight=False,
                                      soft_wrap=True)
                    continue
                if streamed:
                    sys.stdout.write("\n")
                if not streamed or (answer.abstained and "".join(streamed).strip() != answer.text):
                    console.print(answer.text, highlight=False)
                print_sources(console, answer)
                conversation += [Message("user", question), Message("assistant", answer.text)]

    run_command(body)
