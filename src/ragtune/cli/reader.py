"""``ragtune reader train``: train the extractive reader that answers for ``-g reader`` and decides
abstention for every generator (the engine resolves it: ``Ragtune.reader_model``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ragtune.cli.common import AsJson, DataDir, ProgressBars, console, engine, run_command

if TYPE_CHECKING:  # the training modules load torch: imported when a command runs, not at start
    from ragtune.finetune.reader_synthetic import SyntheticRun
    from ragtune.protocols import Progress

app = typer.Typer()  # reader train | list


@app.command("train")
def train(
    examples: Annotated[list[Path] | None, typer.Option(
        "--examples", help="Your own examples: JSON lines {question, answer, context} (answer \"\" when the "
                           "context does not answer). Repeatable.")] = None,
    public: Annotated[bool, typer.Option(
        "--public/--no-public", help="Also train on the training half of SQuAD 2.0 dev (split by article) and of "
                                     "HotpotQA dev (split by question).")] = True,
    hotpotqa: Annotated[bool, typer.Option("--hotpotqa/--no-hotpotqa", help="Include HotpotQA.")] = True,
    collection: Annotated[str | None, typer.Option(
        "--collection", "-c", help="With --synthetic: the collection whose chunks the questions are written "
                                   "from.")] = None,
    synthetic: Annotated[int, typer.Option(
        min=0, help="Also train on N questions a generator writes about answers found in the chunks of --collection "
                    "(a date, number, name or quoted term of a sentence), plus unanswerable pairings with other "
                    "chunks for half of them.")] = 0,
    generator: Annotated[str, typer.Option(help="Generator writing the --synthetic questions.")] = "smollm2",
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many training examples.")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training windows.")] = 2,
    max_steps: Annotated[int | None, typer.Option(min=1, help="Stop after this many optimiser steps.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Windows per step.")] = 32,
    learning_rate: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-4,
    max_length: Annotated[int, typer.Option(help="Tokens of question + passage per window.")] = 256,
    stride: Annotated[int, typer.Option(help="Tokens two windows of a long passage share.")] = 96,
    frozen_layers: Annotated[int, typer.Option(min=0, max=6, help="Lowest transformer layers left as they are.")] = 0,
    calibration: Annotated[int, typer.Option(min=20, help="Validation questions that choose the thresholds.")] = 1200,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Fine-tune MiniLM for extractive question answering (span + no-answer, SQuAD 2.0 style) and store
    it with the abstention thresholds chosen on held-out questions. With --synthetic N -c COLLECTION
    a generator also writes questions about answers found in the collection's own chunks."""
    def body() -> None:
        import random

        from ragtune.errors import ConfigError, DatasetError
        from ragtune.finetune.reader import (
            SPLIT_RULE,
            CalibrationQuestion,
            calibration_questions,
            public_split,
            train_reader,
            user_examples,
        )
        from ragtune.finetune.reader_synthetic import SOURCE as SYNTHETIC
        from ragtune.generate.reader import reader_store

        if synthetic and collection is None:
            raise ConfigError("--synthetic needs --collection NAME: the collection whose chunks the questions "
                              "are written from")
        if collection is not None and not synthetic:
            raise ConfigError(f"--collection {collection} is only read for --synthetic N; give the number of "
                              "questions to write")
        if not public and not examples and not synthetic:
            raise DatasetError("nothing to train on: give --examples FILE, --synthetic N -c COLLECTION or keep "
                               "--public")
        with engine(data_dir) as rt:
            if collection is not None:
                rt.collection(collection)  # NotFoundError before any model loads
            cache = rt.settings.resolved_cache_dir / "packages"
            # Calibration always asks the public validation questions: the rule needs answerable,
            # unanswerable and out-of-collection questions, which a user's examples rarely hold.
            split = public_split(cache, hotpotqa=hotpotqa and public)
            own = [e for path in examples or [] for e in user_examples(path)]
            embedder, analyzer = rt.embedder, rt.analyzer

            def calibrate(net: object) -> list[CalibrationQuestion]:
                return calibration_questions(net, split, embedder, analyzer,  # type: ignore[arg-type]
                                             limit=calibration, out_limit=calibration // 2)

            source: dict[str, Any] = {
                "public": ["squad-2.0-dev", *(["hotpotqa-dev"] if hotpotqa else [])] if public else [],
                "examples": [str(p) for p in examples or []]}
            split_rule = SPLIT_RULE + ("; your examples: all trained on" if own else "")
            with ProgressBars() as bars:
                written = _synthetic(rt, collection, synthetic, generator, bars) if collection else None
                rows = (split.train if public else []) + own + (written[0].examples if written else [])
                random.Random(0).shuffle(rows)
                rows = rows[:limit] if limit else rows
                if written is not None:
                    kept = [e for e in rows if e.source == SYNTHETIC]  # what --limit left of them
                    source["synthetic"] = {
                        "collection": collection, "generator": written[1],
                        "answerable": sum(1 for e in kept if e.answer_start is not None),
                        "unanswerable": sum(1 for e in kept if e.answer_start is None),
                        "candidates_tried": written[0].tried}
                    split_rule += f"; synthetic examples of collection {collection}: all trained on"
                artefact = train_reader(rows, reader_store(rt.settings.data_dir), calibration=[],
                                        calibration_fn=calibrate, epochs=epochs, max_steps=max_steps,
                                        batch_size=batch_size, learning_rate=learning_rate, max_length=max_length,
                                        stride=stride, frozen_layers=frozen_layers, progress=bars, source=source,
                                        split=split_rule)
        manifest = artefact.manifest
        if as_json:
            print(json.dumps({"path": str(artefact.path), **manifest}, indent=2))
            return
        metrics, thresholds = manifest["metrics"], manifest["thresholds"]
        held = metrics["validation"]
        console.print(f"trained {artefact.path} on {manifest['data']['rows']} examples in "
                      f"{metrics['train_seconds']:.0f}s; on {held['questions']} validation questions: overall F1 "
                      f"{held['overall_f1']:.3f}, answerable F1 {held['has_answer_f1']:.3f}, no-answer ROC AUC "
                      f"{held['no_answer_roc_auc_in_collection']:.3f}; abstains below support "
                      f"{thresholds['support_below']} or above no-answer {thresholds['no_answer_above']}")
        synthetic_source = manifest["data"]["source"].get("synthetic")
        if synthetic_source:
            console.print(f"synthetic examples of {synthetic_source['collection']} by {synthetic_source['generator']}: "
                          f"{synthetic_source['answerable']} questions ({synthetic_source['candidates_tried']} "
                          f"answer candidates tried), {synthetic_source['unanswerable']} unanswerable pairings")
        console.print("use it: `ragtune ask -g reader ...` (every generator now abstains by its rule)")

    run_command(body)


def _synthetic(rt: Any, collection: str, n: int, spec: str, progress: Progress) -> tuple[SyntheticRun, str]:
    """N synthetic examples of ``collection`` and the name of the generator that wrote them (resolved
    by the engine, as ``ask`` resolves one)."""
    from ragtune.errors import ConfigError
    from ragtune.finetune.reader_synthetic import write_synthetic

    generator = rt.generator(spec)
    if generator is None:
        raise ConfigError(f"--generator {spec} writes no text; give a generator that does (smollm2, openai:MODEL, "
                          "llamacpp:FILE.gguf or a model folder)")
    return write_synthetic(rt, collection, generator, limit=n, progress=progress), str(getattr(generator, "name", spec))


@app.command("list")
def list_versions(as_json: AsJson = False, data_dir: DataDir = None) -> None:
    """The trained readers of this project, newest last."""
    def body() -> None:
        from ragtune.generate.reader import reader_store

        with engine(data_dir) as rt:
            versions = reader_store(rt.settings.data_dir).versions()
        rows = [{"version": a.version, "path": str(a.path), "created_at": a.manifest.get("created_at"),
                 "thresholds": a.thresholds, "validation": (a.manifest.get("metrics") or {}).get("validation")}
                for a in versions]
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        if not rows:
            console.print("no reader trained yet: `ragtune reader train`")
        for row in rows:
            console.print(f"v{row['version']}  {row['created_at']}  {row['path']}  {row['thresholds']}")

    run_command(body)


@app.command("calibrate")
def calibrate_command(
    reader: Annotated[str, typer.Option(help="The reader to calibrate: latest, vN or a folder.")] = "latest",
    calibration: Annotated[int, typer.Option(min=20, help="Validation questions that choose the thresholds.")] = 1200,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Choose a trained reader's abstention thresholds again, by today's rule, without training: the
    same network is published as the next version with the new thresholds."""
    def body() -> None:
        from ragtune.errors import NotFoundError
        from ragtune.finetune.reader import calibration_questions, public_split, recalibrate_reader
        from ragtune.generate.reader import reader_store

        with engine(data_dir) as rt:
            chosen = rt.reader_model(reader)
            if chosen is None:
                raise NotFoundError(f"no reader {reader!r} to calibrate: train one with `ragtune reader train`")
            split = public_split(rt.settings.resolved_cache_dir / "packages", hotpotqa=False)
            with ProgressBars() as bars:
                questions = calibration_questions(chosen.net, split, rt.embedder, rt.analyzer, limit=calibration,
                                                  out_limit=calibration // 2)
                artefact = recalibrate_reader(chosen, reader_store(rt.settings.data_dir), questions, progress=bars)
        manifest = artefact.manifest
        if as_json:
            print(json.dumps({"path": str(artefact.path), **manifest}, indent=2))
            return
        held, thresholds = manifest["metrics"]["validation"], manifest["thresholds"]
        console.print(f"calibrated {chosen.name} -> {artefact.path}: abstains below support "
                      f"{thresholds['support_below']} or above no-answer {thresholds['no_answer_above']}; on "
                      f"{held['questions']} validation questions {held['answerable_answered']:.1%} of answerable "
                      f"ones answered, {held['out_of_collection_recall']:.1%} of out-of-collection ones abstained")

    run_command(body)
