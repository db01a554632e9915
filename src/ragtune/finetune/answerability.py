"""Training the answerability model (``ragtune.generate.answerability``) on SQuAD 2.0.

SQuAD 2.0 is the public set with questions written to be unanswerable from a paragraph that
looks relevant, so it is what the model learns from: (question, its paragraph, answerable?).
Examples are split by article, never by question, so no held-out question shares a paragraph
with a training one. After training, the abstention threshold is chosen on held-out articles
(highest abstention F1, ties to the lower threshold) and published with the model in the artefact
store (``generate.answerability.answerability_store``): the threshold in the manifest's thresholds,
the precision, recall and ROC AUC measured there in its metrics, the examples' hash and split rule
in its training data.

Progress (``protocols.Progress``): "training", the optimiser steps done of all (epochs × batches),
with the step's loss in ``metrics["loss"]`` and ``detail``.

Honest limits: trained for minutes on a CPU from MiniLM, it learns the easy part of the task;
``benchmarks/abstention.py`` reports what it catches in the full ask path.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.errors import ConfigError, DatasetError
from ragtune.finetune.minilm import base_model_path, base_model_record, warmup_then_linear
from ragtune.generate.answerability import ANSWERABILITY, SPLIT_RULE, AnswerabilityNet
from ragtune.progress import emit
from ragtune.protocols import Progress
from ragtune.store.artefacts import Artefact, ArtefactStore, TrainingData


@dataclass(frozen=True)
class AnswerabilityExample:
    question: str
    passage: str
    answerable: bool
    group: str  # what the split is by (the SQuAD article)


def squad_examples(dataset: Any) -> list[AnswerabilityExample]:
    """(question, paragraph it was written against, answerable) for every SQuAD 2.0 question."""
    if not dataset.unanswerable:
        raise DatasetError(f"dataset {dataset.name!r} has no unanswerable questions to learn abstention from; "
                           "use SQuAD 2.0")
    out = []
    for qid, question in dataset.queries.items():
        doc = dataset.corpus[next(iter(dataset.qrels[qid]))]
        out.append(AnswerabilityExample(question, doc.text, True, doc.title))
    for qid, question in dataset.unanswerable.items():
        doc = dataset.corpus[next(iter(dataset.unanswerable_qrels[qid]))]
        out.append(AnswerabilityExample(question, doc.text, False, doc.title))
    return out


def in_held_out_half(group: str, salt: str = "ragtune-answerability") -> bool:
    """``generate.answerability.SPLIT_RULE``, which the manifest records."""
    return hashlib.sha256(f"{salt}\x00{group}".encode()).digest()[0] % 2 == 1


def split_by_group(examples: Sequence[AnswerabilityExample]
                   ) -> tuple[list[AnswerabilityExample], list[AnswerabilityExample]]:
    """(train, held out): half of the groups each, by a hash of the group name."""
    train = [e for e in examples if not in_held_out_half(e.group)]
    held_out = [e for e in examples if in_held_out_half(e.group)]
    return train, held_out


def abstention_prf(probabilities: Sequence[float], answerable: Sequence[bool], threshold: float
                   ) -> tuple[float, float, float]:
    """Precision, recall and F1 of abstaining (probability below ``threshold``) on unanswerables."""
    abstain = [p < threshold for p in probabilities]
    tp = sum(1 for a, ok in zip(abstain, answerable, strict=True) if a and not ok)
    n_abstain, n_unanswerable = sum(abstain), sum(1 for ok in answerable if not ok)
    p = tp / n_abstain if n_abstain else 0.0
    r = tp / n_unanswerable if n_unanswerable else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def choose_threshold(probabilities: Sequence[float], answerable: Sequence[bool]) -> dict[str, float]:
    grid = [round(0.05 * i, 2) for i in range(1, 20)]
    best = max(grid, key=lambda t: (abstention_prf(probabilities, answerable, t)[2], -t))
    p, r, f1 = abstention_prf(probabilities, answerable, best)
    return {"threshold": best, "precision": round(p, 4), "recall": round(r, 4), "f1": round(f1, 4),
            "roc_auc": round(roc_auc(probabilities, answerable), 4)}


def roc_auc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Probability that a random answerable example scores above a random unanswerable one."""
    pos = sorted(s for s, y in zip(scores, positive, strict=True) if y)
    neg = sorted(s for s, y in zip(scores, positive, strict=True) if not y)
    if not pos or not neg:
        return float("nan")
    wins = sum(bisect.bisect_left(neg, s) + 0.5 * (bisect.bisect_right(neg, s) - bisect.bisect_left(neg, s))
               for s in pos)
    return wins / (len(pos) * len(neg))


def examples_hash(examples: Sequence[AnswerabilityExample]) -> str:
    """sha256 of the examples as trained on (question, passage, label, group), in order."""
    rows = [[e.question, e.passage, e.answerable, e.group] for e in examples]
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()


def train_answerability(examples: Sequence[AnswerabilityExample], store: ArtefactStore, *,
                        validation: Sequence[AnswerabilityExample], epochs: int = 1, batch_size: int = 16,
                        learning_rate: float = 3e-5, max_length: int = 192, warmup_ratio: float = 0.1,
                        seed: int = 0, base_model: str | Path | None = None, progress: Progress | None = None,
                        source: Any = None, split: str = SPLIT_RULE, fields: Mapping[str, Any] | None = None
                        ) -> Artefact:
    """Train on ``examples``, choose the threshold on ``validation`` and publish the next version in
    ``store`` (``answerability_store(data_dir)``). ``split`` is how ``validation`` was kept out of
    ``examples`` (``split_by_group`` by default); ``source`` where they came from."""
    if store.kind is not ANSWERABILITY:
        raise ConfigError(f"train_answerability publishes answerability models, not {store.kind.noun}s "
                          f"({store.folder})")
    hyper = {"epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate, "max_length": max_length,
             "warmup_ratio": warmup_ratio, "seed": seed}
    checks = {"epochs": epochs >= 1, "batch_size": batch_size >= 1, "learning_rate": learning_rate > 0,
              "max_length": 16 <= max_length <= 512, "warmup_ratio": 0 <= warmup_ratio < 1}
    for key, ok in checks.items():
        if not ok:
            raise ConfigError(f"invalid answerability training setting {key}={hyper[key]!r}")
    for name, rows in (("training", examples), ("validation", validation)):
        labels = {e.answerable for e in rows}
        if labels != {True, False}:
            raise DatasetError(f"the {name} examples need both answerable and unanswerable questions "
                               f"({len(rows)} examples, labels {sorted(labels)})")
    base = Path(base_model) if base_model is not None else base_model_path()
    started = time.perf_counter()
    net, losses = _fit(examples, base, hyper, progress)
    seconds = time.perf_counter() - started
    probabilities = net.probabilities([e.question for e in validation], [e.passage for e in validation])
    chosen = choose_threshold(probabilities, [e.answerable for e in validation])
    threshold = chosen.pop("threshold")
    data = TrainingData(sha256=examples_hash(examples), rows=len(examples), source=source, split=split,
                        held_out=len(validation),
                        counts={"unanswerable": sum(not e.answerable for e in examples)})
    return store.publish(net.save, data=data, hyperparameters=hyper, thresholds={"abstain_below": threshold},
                         metrics={"train_seconds": round(seconds, 1), "train_loss": losses, "held_out": chosen},
                         fields={"base_model": base_model_record(base), **(fields or {})})


def _fit(examples: Sequence[AnswerabilityExample], base: Path, hyper: dict[str, Any], progress: Progress | None
         ) -> tuple[AnswerabilityNet, dict[str, float]]:
    import torch

    torch.manual_seed(hyper["seed"])
    order = list(examples)
    net = AnswerabilityNet.fresh(base, max_length=hyper["max_length"])
    optimizer = torch.optim.AdamW(net.parameters(), lr=hyper["learning_rate"])
    bs = hyper["batch_size"]
    per_epoch = (len(order) + bs - 1) // bs
    total = per_epoch * hyper["epochs"]
    scheduler = warmup_then_linear(optimizer, hyper["warmup_ratio"], total)
    net.encoder.train()
    step, first, last = 0, float("nan"), float("nan")
    for epoch in range(hyper["epochs"]):
        random.Random(hyper["seed"] + epoch).shuffle(order)
        for start in range(0, len(order), bs):
            part = order[start:start + bs]
            logits = net([e.question for e in part], [e.passage for e in part])
            target = torch.tensor([1.0 if e.answerable else 0.0 for e in part])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            value = float(loss.item())
            first = value if step == 1 else first
            last = value if step == 1 else 0.9 * last + 0.1 * value
            emit(progress, "training", step, total, detail=f"loss {value:.3f}", metrics={"loss": value})
    return net, {"first": round(first, 4), "last_smoothed": round(last, 4), "steps": step}
