"""``ragtune answerability train``: train the model that decides when the documents cannot answer;
``ask --answerability`` loads it through ``resolve_answerability``."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ragtune.cli.common import AsJson, DataDir, console, engine, progress_bar, run_command

if TYPE_CHECKING:
    from ragtune.engine import Ragtune
    from ragtune.generate.answerability import AnswerabilityModel

app = typer.Typer()  # answerability train


def resolve_answerability(rt: Ragtune, spec: str) -> AnswerabilityModel:
    """``latest`` (the newest trained in the project) or a model folder, as an ``AnswerabilityModel``."""
    from ragtune.finetune.answerability import latest_answerability
    from ragtune.generate.answerability import AnswerabilityModel

    path = latest_answerability(rt.settings.data_dir) if spec == "latest" else Path(spec)
    return AnswerabilityModel(path)


@app.command("train")
def train(
    limit: Annotated[int | None, typer.Option(help="Training questions (default: every question of the "
                                              "training half of the SQuAD 2.0 dev articles).")] = None,
    validation: Annotated[int, typer.Option(help="Held-out questions used to choose the threshold.")] = 1000,
    epochs: Annotated[int, typer.Option(min=1)] = 1,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    learning_rate: Annotated[float, typer.Option()] = 3e-5,
    max_length: Annotated[int, typer.Option(help="Tokens of question + passage.")] = 192,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Train on SQuAD 2.0 dev (answerable vs unanswerable questions, split by article) and store the
    model with the abstention threshold chosen on held-out articles."""
    def body() -> None:
        from ragtune.evaluate.datasets import load_dataset
        from ragtune.finetune.answerability import (
            answerability_dir,
            split_by_group,
            squad_examples,
            train_answerability,
        )
        from ragtune.generate.answerability import read_manifest

        with engine(data_dir) as rt:
            dataset = load_dataset("squad", rt.settings.resolved_cache_dir / "packages")
            train_rows, held_out = split_by_group(squad_examples(dataset))
            rng = random.Random(0)
            rng.shuffle(train_rows)
            rng.shuffle(held_out)
            train_rows = train_rows[:limit] if limit else train_rows
            with progress_bar() as progress:
                task = progress.add_task("training", total=None)

                def update(step: int, total: int, loss: float) -> None:
                    progress.update(task, completed=step, total=total, description=f"training (loss {loss:.3f})")

                path = train_answerability(train_rows, answerability_dir(rt.settings.data_dir),
                                           validation=held_out[:validation], epochs=epochs, batch_size=batch_size,
                                           learning_rate=learning_rate, max_length=max_length, progress=update,
                                           extra={"source": "squad-2.0-dev"})
        manifest = read_manifest(path)
        if as_json:
            print(json.dumps({"path": str(path), **manifest}, indent=2))
            return
        v = manifest["validation"]
        console.print(f"trained {path} on {manifest['examples']} questions in {manifest['train_seconds']:.0f}s; "
                      f"threshold {v['threshold']} on {manifest['validation_examples']} held-out questions: "
                      f"abstention precision {v['precision']:.3f}, recall {v['recall']:.3f}, "
                      f"ROC AUC {v['roc_auc']:.3f}")
        console.print("use it: `ragtune ask --answerability latest ...`")

    run_command(body)
