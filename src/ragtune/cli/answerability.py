"""``ragtune answerability train``: train the model that decides when the documents cannot answer;
``ask --answerability`` uses it (the engine resolves it: ``Ragtune.answerability_model``)."""

from __future__ import annotations

import json
import random
from typing import Annotated

import typer

from ragtune.cli.common import AsJson, DataDir, ProgressBars, console, engine, run_command

app = typer.Typer()  # answerability train


@app.command("train")
def train(
    limit: Annotated[int | None, typer.Option(help="Training questions (default: every question of the "
                                              "training half of the SQuAD 2.0 dev articles).")] = None,
    validation: Annotated[int, typer.Option(help="Held-out questions used to choose the threshold.")] = 1000,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training questions.")] = 1,
    batch_size: Annotated[int, typer.Option(min=1, help="Question-passage pairs per step.")] = 16,
    learning_rate: Annotated[float, typer.Option(help="AdamW learning rate.")] = 3e-5,
    max_length: Annotated[int, typer.Option(help="Tokens of question + passage.")] = 192,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Train on SQuAD 2.0 dev (answerable vs unanswerable questions, split by article) and store the
    model with the abstention threshold chosen on held-out articles."""
    def body() -> None:
        from ragtune.evaluate.datasets import load_dataset
        from ragtune.finetune.answerability import split_by_group, squad_examples, train_answerability
        from ragtune.generate.answerability import answerability_store

        with engine(data_dir) as rt:
            dataset = load_dataset("squad", rt.settings.resolved_cache_dir / "packages")
            train_rows, held_out = split_by_group(squad_examples(dataset))
            rng = random.Random(0)
            rng.shuffle(train_rows)
            rng.shuffle(held_out)
            train_rows = train_rows[:limit] if limit else train_rows
            with ProgressBars() as bars:
                artefact = train_answerability(train_rows, answerability_store(rt.settings.data_dir),
                                               validation=held_out[:validation], epochs=epochs,
                                               batch_size=batch_size, learning_rate=learning_rate,
                                               max_length=max_length, progress=bars, source="squad-2.0-dev")
        manifest = artefact.manifest
        if as_json:
            print(json.dumps({"path": str(artefact.path), **manifest}, indent=2))
            return
        data, metrics = manifest["data"], manifest["metrics"]
        held = metrics["held_out"]
        console.print(f"trained {artefact.path} on {data['rows']} questions in {metrics['train_seconds']:.0f}s; "
                      f"threshold {artefact.thresholds['abstain_below']} on {data['held_out']} held-out questions: "
                      f"abstention precision {held['precision']:.3f}, recall {held['recall']:.3f}, "
                      f"ROC AUC {held['roc_auc']:.3f}")
        console.print("use it: `ragtune ask --answerability latest ...`")

    run_command(body)
