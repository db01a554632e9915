"""``ragtune demo``: the main job end to end on the embedded default, with real data.

Writes the SQuAD 2.0 dev articles as Markdown files, ingests them (the same path a user's files
take), runs a few searches, shows that an update is visible to the next query, and prints
retrieval quality on SQuAD.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from ragtune.cli.ask import print_sources
from ragtune.cli.common import DataDir, ProgressBars, console, engine, print_report, run_command

if TYPE_CHECKING:
    from ragtune.engine import Ragtune

app = typer.Typer()  # demo (top level)

DEMO_QUERIES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("Who was the Norse leader?", {}),
    ("What causes the tides?", {}),
    ("Which university did Tesla attend?", {}),
    ("When was the Amazon rainforest formed?", {"mode": "bm25"}),
)


DEMO_QUESTIONS: tuple[str, ...] = (
    "Who was the leader of the Norse settlers in Normandy?",
    "Which river flows through Warsaw?",
    "Which university did Nikola Tesla attend?",  # no SQuAD dev article covers Tesla
)
# Each question is answered by the trained reader and by the local LLM, side by side.
DEMO_GENERATORS = ("reader", "smollm2")


def write_articles(dataset: Any, folder: Path) -> int:
    """One Markdown file per SQuAD article: ``# Title`` then its paragraphs."""
    folder.mkdir(parents=True, exist_ok=True)
    articles: dict[str, list[str]] = {}
    for doc in dataset.corpus.values():
        articles.setdefault(doc.title, []).append(doc.text)
    for title, paragraphs in articles.items():
        slug = "".join(ch if ch.isalnum() else "_" for ch in title)[:80]
        body = f"# {title.replace('_', ' ')}\n\n" + "\n\n".join(paragraphs) + "\n"
        target = folder / f"{slug}.md"
        if not target.exists() or target.read_text(encoding="utf-8") != body:
            target.write_text(body, encoding="utf-8")
    return len(articles)


@app.command()
def demo(
    eval_limit: Annotated[int | None, typer.Option(help="Evaluate on the first N SQuAD questions.")] = None,
    reader_steps: Annotated[int, typer.Option(
        min=1, help="Training steps of the quick reader the demo trains when the project has none "
                    "(`ragtune reader train` trains the full one).")] = 120,
    data_dir: DataDir = None,
) -> None:
    """Run the main job end to end: ingest SQuAD articles, search, update, answer, evaluate."""
    def body() -> None:
        with engine(data_dir) as rt:
            run_demo(rt, eval_limit=eval_limit, reader_steps=reader_steps)

    run_command(body)


def quick_reader(rt: Ragtune, steps: int) -> None:
    """Train a small reader once into the project (SQuAD's training articles only, the lowest two
    layers frozen, short windows: minutes on 2 cores); the full one is ``ragtune reader train``."""
    from ragtune.finetune.reader import calibration_questions, public_split, train_reader
    from ragtune.generate.reader import reader_store

    store = reader_store(rt.settings.data_dir)
    if store.versions():
        return
    split = public_split(rt.settings.resolved_cache_dir / "packages", hotpotqa=False)
    embedder, analyzer = rt.embedder, rt.analyzer
    with ProgressBars() as bars:
        artefact = train_reader(split.train, store, calibration=[], max_steps=steps, epochs=1, max_length=192,
                                stride=64, frozen_layers=2, progress=bars, source={"public": ["squad-2.0-dev"]},
                                calibration_fn=lambda net: calibration_questions(net, split, embedder, analyzer,
                                                                                 limit=300, out_limit=150))
    held = artefact.manifest["metrics"]["validation"]
    console.print(f"trained a quick reader ({steps} steps, {artefact.manifest['metrics']['train_seconds']:.0f}s): "
                  f"validation overall F1 {held['overall_f1']:.3f}, answerable F1 {held['has_answer_f1']:.3f}")


def run_demo(rt: Ragtune, *, eval_limit: int | None, reader_steps: int = 120) -> None:
    """The five steps of ``ragtune demo`` on an open engine, printed as they run."""
    from ragtune.evaluate.datasets import load_dataset
    from ragtune.evaluate.retrieval import evaluate_retrieval

    cache = rt.settings.resolved_cache_dir / "packages"
    squad = load_dataset("squad", cache)
    folder = rt.settings.data_dir / "demo" / "squad-articles"
    n = write_articles(squad, folder)
    console.rule(f"1. ingest {n} SQuAD 2.0 dev articles ({len(squad.corpus)} paragraphs) from {folder}")
    with ProgressBars() as bars:
        report = rt.sync(folder, collection="squad-articles", progress=bars, metadata={"source": "squad-dev"})
    print_report(report, "synced")

    console.rule("2. hybrid search over the articles")
    for query, extra in DEMO_QUERIES:
        result = rt.search(query, collection="squad-articles", top_k=3, **extra)
        table = Table(title=f"{result.mode}: {query}  ({result.timings_ms.get('search', 0):.1f} ms, "
                      f"trace {result.trace_id})", show_lines=False)
        for col in ("#", "score", "document", "section", "offsets", "text"):
            table.add_column(col, overflow="fold")
        for h in result.hits:
            text = h.chunk.text.replace("\n", " ")
            table.add_row(str(h.rank), f"{h.score:.3f}", Path(h.uri).name, h.chunk.heading,
                          f"{h.chunk.start}-{h.chunk.end}", text[:160] + ("…" if len(text) > 160 else ""))
        console.print(table)

    console.rule("3. update the database, not the model")
    note = folder / "zz_ragtune_demo_note.md"
    note.write_text("# Demo note\n\nThe ragtune demo mascot is a purple narwhal named Quillon.\n", encoding="utf-8")
    rt.sync(folder, collection="squad-articles")
    hit = rt.search("What is the name of the demo mascot?", collection="squad-articles", top_k=1).hits
    console.print(f"after adding a file: top hit {Path(hit[0].uri).name!r}: {hit[0].chunk.text!r}" if hit else "no hit")
    note.unlink()
    removed = rt.sync(folder, collection="squad-articles").removed
    hit = rt.search("What is the name of the demo mascot?", collection="squad-articles", top_k=1).hits
    console.print(f"after deleting it ({removed} removed): top hit {Path(hit[0].uri).name!r}" if hit else "no hit")

    console.rule("4. cited answers: the trained reader beside the local SmolLM2-135M, and a question no "
                 "article covers")
    quick_reader(rt, reader_steps)
    for question in DEMO_QUESTIONS:
        console.print(f"[bold]Q:[/] {question}")
        for generator in DEMO_GENERATORS:
            console.print(f"[bold]A ({generator}):[/] ", end="")
            streamed: list[str] = []

            def show(text: str, streamed: list[str] = streamed) -> None:
                streamed.append(text)
                console.print(text, end="", highlight=False, markup=False)

            answer = rt.ask(question, collection="squad-articles", generator=generator, top_k=3, on_token=show)
            console.print("" if streamed else answer.text, highlight=False, markup=False)
            print_sources(console, answer)

    label = f"first {eval_limit}" if eval_limit else "all"
    console.rule(f"5. retrieval quality on SQuAD 2.0 dev ({label} answerable questions, paragraph level)")
    with ProgressBars(transient=True) as bars:
        quality = evaluate_retrieval(rt, "squad", limit=eval_limit, progress=bars)
    table = Table(title=f"{quality['queries']} queries over {quality['corpus']} paragraphs")
    table.add_column("mode")
    for m in quality["measures"]:
        table.add_column(m, justify="right")
    table.add_column("p50 ms", justify="right")
    table.add_column("p95 ms", justify="right")
    for mode, row in quality["modes"].items():
        table.add_row(mode, *(f"{row[m]:.3f}" for m in quality["measures"]), f"{row['p50_ms']:.1f}",
                      f"{row['p95_ms']:.1f}")
    console.print(table)

    console.rule("6. the audit log: every read and write above, hash-chained")
    if not rt.audit.enabled:
        console.print("off ([governance] audit = false)")
        return
    verified = rt.audit.verify()
    console.print(", ".join(f"{n} {action}" for action, n in rt.audit.counts().items()), highlight=False)
    console.print(f"`ragtune audit verify`: {verified.checked} events, "
                  + (f"chain unbroken, head {verified.head_seq}:{(verified.head_hash or '')[:16]}…" if verified.ok
                     else f"BROKEN at row {verified.broken_at}: {verified.problem}"), highlight=False)
