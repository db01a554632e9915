"""``ragtune rerank train|list``: train a collection's cross-encoder reranker and list its versions;
``search --rerank`` and ``ask --rerank`` use it (the engine resolves it: ``Ragtune.reranker``)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from ragtune.cli.common import DataDir, ProgressBars, console, engine, load_settings, run_command
from ragtune.errors import ConfigError

app = typer.Typer()  # rerank train|list


@app.command("train")
def train(
    collection: Annotated[str, typer.Option("--collection", "-c", help="Collection to train on.")],
    dataset: Annotated[str | None, typer.Option(
        help="squad | hotpotqa | beir:PATH, indexed as this collection: positives from its qrels. "
             "Without it, a generator writes questions for chunks (--synthetic).")] = None,
    limit: Annotated[int, typer.Option(help="With --dataset: at most N questions, from the training half "
                                            "of a hash split (the other half stays unseen).")] = 500,
    synthetic: Annotated[int, typer.Option(help="Without --dataset: number of generated questions.")] = 200,
    generator: Annotated[str, typer.Option(help="Generator writing the synthetic questions.")] = "smollm2",
    negatives: Annotated[int, typer.Option(help="Hard negatives per question.")] = 3,
    epochs: Annotated[int, typer.Option(help="Passes over the training questions.")] = 1,
    batch_size: Annotated[int, typer.Option(help="Questions per step (each with its negatives).")] = 4,
    learning_rate: Annotated[float, typer.Option("--lr", help="AdamW learning rate.")] = 3e-5,
    validation: Annotated[int, typer.Option(help="Questions held out of training to choose how much the rerank "
                                                 "score counts against the retriever's (0: rerank alone).")] = 100,
    seed: Annotated[int, typer.Option(help="Random seed of the training (initialisation, shuffling).")] = 0,
    name: Annotated[str | None, typer.Option(help="Reranker name (default: the collection).")] = None,
    data_dir: DataDir = None,
) -> None:
    """Train a reranker on (question, positive, hard negative) triples mined from the collection."""
    def body() -> None:
        from ragtune.finetune.rerankers.mining import (
            HASH_SPLIT,
            hash_split,
            mine_triples,
            synthetic_pairs,
            triples_from_dataset,
        )
        from ragtune.finetune.rerankers.training import train_reranker, validation_chooser
        from ragtune.generate.registry import make_generator
        from ragtune.retrieve.rerank import reranker_store

        for key, value in (("limit", limit), ("synthetic", synthetic)):
            if value < 1:
                raise ConfigError(f"--{key} must be at least 1, got {value}")
        if validation < 0:
            raise ConfigError(f"--validation must be at least 0, got {validation}")
        with engine(data_dir) as rt:
            rt.collection(collection)  # NotFoundError before any model loads
            store = reranker_store(rt.settings.data_dir, name or collection)
            with ProgressBars() as bars:
                if dataset is not None:
                    from ragtune.evaluate.datasets import load_dataset

                    ds = load_dataset(dataset, rt.settings.resolved_cache_dir / "packages")
                    train_half = sorted(hash_split(ds.queries)[0])
                    qids = train_half[:limit]
                    held = ds.positives(train_half[limit:limit + validation])
                    triples = triples_from_dataset(rt, ds, collection, qids, negatives_per_query=negatives,
                                                   progress=bars)
                    source: dict[str, Any] = {"dataset": dataset, "questions": len(qids)}
                    split = (f"{HASH_SPLIT}; the first {len(qids)} of the 'train' half (by id) trained on, the "
                             f"next {len(held)} held out to choose the fusion weight")
                else:
                    gen = make_generator(generator, rt.settings)
                    pairs = synthetic_pairs(rt, collection, gen, limit=synthetic + validation,
                                            progress=bars)
                    # the last questions written are held out (too few: all train, no choice)
                    cut = len(pairs) - validation if len(pairs) >= 2 * validation else len(pairs)
                    pairs, held = pairs[:cut], pairs[cut:]
                    triples = mine_triples(rt, collection, pairs, negatives_per_query=negatives,
                                           progress=bars)
                    source = {"synthetic": len(pairs), "generator": getattr(gen, "name", generator)}
                    split = (f"generated questions in order: the last {len(held)} held out to choose the fusion "
                             "weight" if held else "every generated question trained on (too few to hold any out)")
                artifact = train_reranker(triples, store, epochs=epochs, batch_size=batch_size,
                                          learning_rate=learning_rate, seed=seed,
                                          choose=validation_chooser(rt, collection, held) if held else None,
                                          progress=bars, source=source, split=split,
                                          fields={"collection": collection})
        data, metrics = artifact.manifest["data"], artifact.manifest["metrics"]
        console.print(f"reranker [bold]{artifact.name}[/] v{artifact.version}: {data['rows']} triples from "
                      f"{data['queries']} questions, trained in {metrics['train_seconds']:.0f}s -> {artifact.path}")
        if metrics.get("validation"):
            scores = ", ".join(f"{k} {v:.3f}" for k, v in metrics["validation"]["ndcg@10"].items())
            console.print(f"validation nDCG@10 by fusion weight ({metrics['validation']['questions']} questions): "
                          f"{scores}; chosen {artifact.thresholds['fusion_weight']}")

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
        from ragtune.retrieve.rerank import RERANKER, reranker_store
        from ragtune.store.artefacts import names

        root = load_settings(data_dir).data_dir
        folder = root / RERANKER.root
        artifacts = [a for n in ([name] if name else names(root, RERANKER)) for a in reranker_store(root, n).versions()]
        if as_json:
            print(json.dumps([{"name": a.name, "version": a.version, "path": str(a.path), "manifest": a.manifest}
                              for a in artifacts], indent=2))
            return
        table = Table(title=f"{len(artifacts)} reranker version(s) in {folder}")
        for col in ("name", "version", "created", "triples", "questions", "weight", "epochs", "lr", "seconds"):
            table.add_column(col)
        for a in artifacts:
            m, h = a.manifest, a.manifest["hyperparameters"]
            data, metrics = m["data"], m["metrics"]
            table.add_row(a.name, f"v{a.version}", str(m.get("created_at", "")), str(data.get("rows", "")),
                          str(data.get("queries", "")), str(a.thresholds.get("fusion_weight", "")),
                          str(h.get("epochs", "")), str(h.get("learning_rate", "")),
                          f"{metrics.get('train_seconds') or 0:.0f}")
        console.print(table)

    run_command(body)
