"""``ragtune reader train``: train the extractive reader that answers for ``-g reader`` and decides
abstention for every generator (the engine resolves it: ``Ragtune.reader_model``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ragtune.cli.common import AsJson, DataDir, ProgressBars, console, engine, run_command

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
    it with the abstention thresholds chosen on held-out questions."""
    def body() -> None:
        import random

        from ragtune.errors import DatasetError
        from ragtune.finetune.reader import (
            SPLIT_RULE,
            CalibrationQuestion,
            calibration_questions,
            public_split,
            train_reader,
            user_examples,
        )
        from ragtune.generate.reader import reader_store

        if not public and not examples:
            raise DatasetError("nothing to train on: give --examples FILE or keep --public")
        with engine(data_dir) as rt:
            cache = rt.settings.resolved_cache_dir / "packages"
            # Calibration always asks the public validation questions: the rule needs answerable,
            # unanswerable and out-of-collection questions, which a user's examples rarely hold.
            split = public_split(cache, hotpotqa=hotpotqa and public)
            own = [e for path in examples or [] for e in user_examples(path)]
            rows = (split.train if public else []) + own
            random.Random(0).shuffle(rows)
            rows = rows[:limit] if limit else rows
            embedder, analyzer = rt.embedder, rt.analyzer

            def calibrate(net: object) -> list[CalibrationQuestion]:
                return calibration_questions(net, split, embedder, analyzer,  # type: ignore[arg-type]
                                             limit=calibration, out_limit=calibration // 2)

            source = {"public": ["squad-2.0-dev", *(["hotpotqa-dev"] if hotpotqa else [])] if public else [],
                      "examples": [str(p) for p in examples or []]}
            with ProgressBars() as bars:
                artefact = train_reader(rows, reader_store(rt.settings.data_dir), calibration=[],
                                        calibration_fn=calibrate, epochs=epochs, max_steps=max_steps,
                                        batch_size=batch_size, learning_rate=learning_rate, max_length=max_length,
                                        stride=stride, frozen_layers=frozen_layers, progress=bars, source=source,
                                        split=SPLIT_RULE + ("; your examples: all trained on" if own else ""))
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
        console.print("use it: `ragtune ask -g reader ...` (every generator now abstains by its rule)")

    run_command(body)


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
