"""``ragtune rerank train|list``: train a collection's cross-encoder reranker and list its versions;
``search --rerank`` and ``ask --rerank`` load it through ``collection_reranker``."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import Progress
from rich.table import Table

from ragtune.cli.common import DataDir, console, engine, load_settings, progress_bar, run_command
from ragtune.errors import ConfigError

if TYPE_CHECKING:
    from ragtune.engine import Ragtune
    from ragtune.models import SearchResult
    from ragtune.retrieve.rerank import CrossEncoderReranker

app = typer.Typer()  # rerank train|list


def collection_reranker(rt: Ragtune, collection: str | None, *, top_k: int, version: int | None = None
                        ) -> CrossEncoderReranker:
    """The collection's reranker (latest version unless ``version``), rescoring ``max(top_k, 20)``
    candidates."""
    from ragtune.finetune.reranker import load_reranker
    from ragtune.retrieve.rerank import DEFAULT_TOP_N

    return load_reranker(rt.settings.data_dir, collection or rt.settings.default_collection, version,
                         top_n=max(top_k, DEFAULT_TOP_N))


def rerank_search(rt: Ragtune, query: str, *, collection: str | None, top_k: int, version: int | None = None,
                  mode: str | None = None, **search: Any) -> SearchResult:
    """Search and rerank with the collection's reranker (hybrid unless ``mode`` says otherwise)."""
    reranker = collection_reranker(rt, collection, top_k=top_k, version=version)
    return rt.search(query, collection=collection, top_k=top_k, mode=mode or "hybrid", reranker=reranker, **search)


def _updater(progress: Progress, description: str) -> Callable[[int, int], None]:
    task = progress.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    return update


@app.command("train")
def train(
    collection: Annotated[str, typer.Option("--collection", "-c", help="Collection to train on.")],
    dataset: Annotated[str | None, typer.Option(
        help="squad | hotpotqa | beir:PATH, indexed as this collection: positives from its qrels. "
             "Without it, a generator writes questions for chunks (--synthetic).")] = None,
    limit: Annotated[int, typer.Option(help="With --dataset: at most N questions, from the training half "
                                            "of a hash split (the other half stays unseen).")] = 500,
    synthetic: Annotated[int, typer.Option(help="Without --dataset: number of generated questions.")] = 200,
    generator: Annotated[str, typer.Option(help="Generator writing the synthetic questions.")] = "local",
    negatives: Annotated[int, typer.Option(help="Hard negatives per question.")] = 3,
    epochs: Annotated[int, typer.Option()] = 1,
    batch_size: Annotated[int, typer.Option(help="Questions per step (each with its negatives).")] = 4,
    learning_rate: Annotated[float, typer.Option("--lr")] = 3e-5,
    validation: Annotated[int, typer.Option(help="Questions held out of training to choose how much the rerank "
                                                 "score counts against the retriever's (0: rerank alone).")] = 100,
    seed: Annotated[int, typer.Option()] = 0,
    name: Annotated[str | None, typer.Option(help="Reranker name (default: the collection).")] = None,
    data_dir: DataDir = None,
) -> None:
    """Train a reranker on (question, positive, hard negative) triples mined from the collection."""
    def body() -> None:
        from ragtune.finetune.reranker import (
            hash_split,
            mine_triples,
            reranker_dir,
            synthetic_pairs,
            train_reranker,
            triples_from_dataset,
            validation_chooser,
        )
        from ragtune.generate.registry import make_generator

        for key, value in (("limit", limit), ("synthetic", synthetic)):
            if value < 1:
                raise ConfigError(f"--{key} must be at least 1, got {value}")
        if validation < 0:
            raise ConfigError(f"--validation must be at least 0, got {validation}")
        with engine(data_dir) as rt:
            rt.collection(collection)  # NotFoundError before any model loads
            out_dir = reranker_dir(rt.settings.data_dir, name or collection)
            with progress_bar() as progress:
                if dataset is not None:
                    from ragtune.evaluate.datasets import load_dataset

                    ds = load_dataset(dataset, rt.settings.resolved_cache_dir / "packages")
                    train_half = sorted(hash_split(ds.queries)[0])
                    qids = train_half[:limit]
                    held = ds.positives(train_half[limit:limit + validation])
                    triples = triples_from_dataset(rt, ds, collection, qids, negatives_per_query=negatives,
                                                   progress=_updater(progress, "mining triples"))
                    source: dict[str, Any] = {"dataset": dataset, "questions": len(qids),
                                              "split": "hash half 'train'"}
                else:
                    gen = make_generator(generator, rt.settings)
                    pairs = synthetic_pairs(rt, collection, gen, limit=synthetic + validation,
                                            progress=_updater(progress, "writing questions"))
                    # the last questions written are held out (too few: all train, no choice)
                    cut = len(pairs) - validation if len(pairs) >= 2 * validation else len(pairs)
                    pairs, held = pairs[:cut], pairs[cut:]
                    triples = mine_triples(rt, collection, pairs, negatives_per_query=negatives,
                                           progress=_updater(progress, "mining triples"))
                    source = {"synthetic": len(pairs), "generator": getattr(gen, "name", generator)}
                artifact = train_reranker(triples, out_dir, epochs=epochs, batch_size=batch_size,
                                          learning_rate=learning_rate, seed=seed,
                                          choose=validation_chooser(rt, collection, held) if held else None,
                                          progress=_updater(progress, "training steps"),
                                          extra={"collection": collection, "source": source})
        m = artifact.manifest
        console.print(f"reranker [bold]{artifact.name}[/] v{artifact.version}: {m['triples']} triples from "
                      f"{m['queries']} questions, trained in {m['train_seconds']:.0f}s -> {artifact.path}")
        if m.get("validation"):
            scores = ", ".join(f"{k} {v:.3f}" for k, v in m["validation"]["ndcg@10"].items())
            console.print(f"validation nDCG@10 by fusion weight ({m['validation']['questions']} questions): "
                          f"{scores}; chosen {m['fusion_weight']}")

    run_command(body)


@app.command("list")
def list_versions(
    name: Annotated[str | None, typer.Option("--name", "--collection", "-c",
                                             help="Reranker (collection) name; all when omitted.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifests.")] = False,
    data_dir: DataDir = None,
) -> None:
    """List trained reranker versions with their manifests."""


    def body() -> None:
        from ragtune.finetune.reranker import list_rerankers

        root = load_settings(data_dir).data_dir
        folder = root / "rerankers"
        names = [name] if name else sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        artifacts = [a for n in names for a in list_rerankers(root, n)]
        if as_json:
            print(json.dumps([{"name": a.name, "version": a.version, "path": str(a.path), "manifest": a.manifest}
                              for a in artifacts], indent=2))
            return
        table = Table(title=f"{len(artifacts)} reranker version(s) in {folder}")
        for col in ("name", "version", "created", "triples", "questions", "weight", "epochs", "lr", "seconds"):
            table.add_column(col)
        for a in artifacts:
            m, h = a.manifest, a.manifest.get("hyperparameters", {})
            table.add_row(a.name, f"v{a.version}", str(m.get("created_at", "")), str(m.get("triples", "")),
                          str(m.get("queries", "")), str(m.get("fusion_weight", "")), str(h.get("epochs", "")),
                          str(h.get("learning_rate", "")), f"{m.get('train_seconds', 0):.0f}")
        console.print(table)

    run_command(body)
