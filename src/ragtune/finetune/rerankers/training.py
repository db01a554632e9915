"""Train a cross-encoder reranker on mined triples (``mining``) and publish it in the artefact store.

The reranker starts from the packaged MiniLM weights (``finetune.minilm``), scored by the cosine of
its two segments (see ``ragtune.retrieve.rerank``), and learns from (query, positive, hard
negative) triples. Training is a plain torch loop on CPU in fp32 with fixed seeds: a listwise
softmax cross-entropy over each query's positive and its negatives, the embeddings and the lowest
layers frozen (half the backward pass on 2 cores). A validation set of questions not trained on
then picks the weight with which the rerank score is added to the retriever's (``fusion_weight``,
a threshold of the manifest).

A version is published through the artefact store (``ragtune.store.artefacts``): trained, saved
into the store's temporary folder and renamed to ``<data_dir>/rerankers/<name>/v<N>/`` with its
manifest (the triples' hash, source and split rule, losses, validation nDCG, the fusion weight,
hyperparameters), so concurrent trainings never share a folder and a reader never sees half a
version.

Progress (``protocols.Progress``): "training", the optimiser steps done of all (epochs × batches of
questions), with the step's loss in ``metrics["loss"]`` and ``detail``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ragtune.errors import ConfigError, DatasetError, ModelError
from ragtune.evaluate.metrics import doc_run_from_chunks, retrieval_metrics
from ragtune.finetune.minilm import base_model_path, base_model_record
from ragtune.finetune.rerankers.mining import Triple, triples_hash
from ragtune.models import Principal
from ragtune.progress import emit
from ragtune.protocols import Progress
from ragtune.retrieve.rerank import RERANKER, PairScorer, fused_order
from ragtune.store.artefacts import Artefact, ArtefactStore, TrainingData

LOSSES = ("listwise",)
FUSION_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0)
Chooser = Callable[[PairScorer], dict[str, Any]]


def train_reranker(triples: Sequence[Triple], store: ArtefactStore, *, epochs: int = 1, batch_size: int = 4,
                   learning_rate: float = 3e-5, seed: int = 0, loss: str = "listwise", max_length: int = 128,
                   warmup_ratio: float = 0.1, frozen_layers: int = 2, base_model: str | Path | None = None,
                   choose: Chooser | None = None, progress: Progress | None = None, source: Any = None,
                   split: str | None = None, fields: Mapping[str, Any] | None = None) -> Artefact:
    """Train a reranker on ``triples`` and publish it as the next version in ``store``
    (``retrieve.rerank.reranker_store(data_dir, name)``). ``batch_size`` counts questions (each with
    its positive and negatives). ``choose`` (see ``validation_chooser``) sees the trained model and
    returns the ``fusion_weight`` and the ``validation`` it was chosen on. ``source`` (where the
    triples came from) and ``split`` (how held-out questions were kept out of them) go into the
    manifest's training data; ``fields`` are stored as they are (``collection``)."""
    if store.kind is not RERANKER:
        raise ConfigError(f"train_reranker publishes rerankers, not {store.kind.noun}s ({store.folder})")
    hyper = {"epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate, "seed": seed,
             "loss": loss, "max_length": max_length, "warmup_ratio": warmup_ratio, "frozen_layers": frozen_layers}
    checks = {"epochs": epochs >= 1, "batch_size": batch_size >= 1, "learning_rate": learning_rate > 0,
              "max_length": 16 <= max_length <= 512, "warmup_ratio": 0 <= warmup_ratio < 1, "loss": loss in LOSSES,
              "frozen_layers": 0 <= frozen_layers <= 12}
    for key, ok in checks.items():
        if not ok:
            raise ConfigError(f"invalid reranker training setting {key}={hyper[key]!r}"
                              + (f"; use one of {', '.join(LOSSES)}" if key == "loss" else ""))
    if not triples:
        raise DatasetError("no training triples: nothing to train a reranker on")
    base = Path(base_model) if base_model is not None else base_model_path()
    started = time.perf_counter()
    scorer, train_loss = _fit(triples, base, hyper, progress)
    seconds = time.perf_counter() - started
    chosen = choose(scorer) if choose is not None else {}
    validation = chosen.get("validation")
    data = TrainingData(
        sha256=triples_hash(triples), rows=len(triples), source=source,
        split=split or ("every given triple trained on" + (
            "; separate validation questions chose the fusion weight" if validation else "; nothing held out")),
        held_out=validation["questions"] if validation else None,
        counts={"queries": len({t.query for t in triples})})
    metrics = {"train_seconds": round(seconds, 2), "train_loss": train_loss["mean"],
               "loss_curve": train_loss["curve"],  # [step, mean loss since the previous point]
               **({"validation": validation} if validation else {})}
    return store.publish(scorer.save, data=data, metrics=metrics,
                         thresholds={"fusion_weight": chosen.get("fusion_weight")}, hyperparameters=hyper,
                         fields={"base_model": base_model_record(base), **(fields or {})})


def _groups(triples: Sequence[Triple]) -> list[tuple[str, list[str]]]:
    """(query, [positive, *its negatives]) in first-seen order."""
    groups: dict[tuple[str, str], list[str]] = {}
    for t in triples:
        groups.setdefault((t.query, t.positive), []).append(t.negative)
    return [(q, [p, *negs]) for (q, p), negs in groups.items()]


def _fit(triples: Sequence[Triple], base: Path, hyper: dict[str, Any], progress: Progress | None
         ) -> tuple[PairScorer, dict[str, Any]]:
    import torch
    from transformers import get_linear_schedule_with_warmup, set_seed

    set_seed(hyper["seed"])
    try:
        scorer = PairScorer.load(base, max_length=hyper["max_length"])
    except Exception as exc:
        raise ModelError(f"cannot load the reranker base model {base}: {type(exc).__name__}: {exc}") from exc
    encoder = scorer.encoder
    frozen = [encoder.embeddings, *encoder.encoder.layer[: hyper["frozen_layers"]]]
    for module in frozen:
        for param in module.parameters():
            param.requires_grad = False
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": trainable, "lr": hyper["learning_rate"]},
                                   {"params": [scorer.log_scale], "lr": 1e-2}], weight_decay=0.01)
    groups = _groups(triples)
    per_epoch = math.ceil(len(groups) / hyper["batch_size"])
    total = per_epoch * hyper["epochs"]
    schedule = get_linear_schedule_with_warmup(optimizer, round(hyper["warmup_ratio"] * total), total)
    order = random.Random(hyper["seed"])
    every = max(1, total // 20)
    curve: list[list[float]] = []
    window: list[float] = []
    losses: list[float] = []
    encoder.train()
    step = 0
    for _ in range(hyper["epochs"]):
        order.shuffle(groups)
        for start in range(0, len(groups), hyper["batch_size"]):
            batch = groups[start:start + hyper["batch_size"]]
            queries = [q for q, docs in batch for _ in docs]
            texts = [d for _, docs in batch for d in docs]
            scores = scorer(queries, texts)
            loss = torch.stack([
                # the positive is first in each group
                torch.nn.functional.cross_entropy(part.unsqueeze(0), torch.zeros(1, dtype=torch.long))
                for part in torch.split(scores, [len(docs) for _, docs in batch])
            ]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            window.append(float(loss.item()))
            losses.append(window[-1])
            if step % every == 0 or step == total:
                curve.append([step, round(sum(window) / len(window), 4)])
                window = []
            emit(progress, "training", step, total, detail=f"loss {losses[-1]:.3f}", metrics={"loss": losses[-1]})
    encoder.eval()
    return scorer, {"mean": round(sum(losses) / len(losses), 6) if losses else None, "curve": curve}


def validation_chooser(rt: Any, collection: str, pairs: Sequence[tuple[str, set[str]]], *, top_n: int = 20,
                       weights: Sequence[float] = FUSION_WEIGHTS, principal: Principal | None = None) -> Chooser:
    """A ``choose`` for ``train_reranker``: on validation questions (not trained on) with their
    positive document uris, the fusion weight whose reranked hybrid top ``top_n`` has the best
    nDCG@10; ties go to the smaller weight (0 keeps the retriever's order: a reranker that does
    not help on validation is not allowed to hurt)."""
    principal = principal or Principal.system()
    pairs = [(q, set(p)) for q, p in pairs if q.strip() and p]

    def choose(scorer: PairScorer) -> dict[str, Any]:
        if not pairs:
            return {}
        qrels = {str(i): {uri: 1 for uri in positives} for i, (_, positives) in enumerate(pairs)}
        runs: dict[float | None, dict[str, dict[str, float]]] = {w: {} for w in [None, *weights]}
        vectors = rt.embedder.embed_batch([q for q, _ in pairs])
        for i, ((query, _), vector) in enumerate(zip(pairs, vectors, strict=True)):
            hits = rt.search(query, collection=collection, top_k=top_n, mode="hybrid", principal=principal,
                             query_vector=vector).hits
            rerank = scorer.score(query, [h.chunk.text for h in hits]) if hits else []
            for weight, run in runs.items():
                final = fused_order([h.score for h in hits], rerank, weight) if hits else []
                run.update(doc_run_from_chunks({str(i): [(h.uri, f) for h, f in zip(hits, final, strict=True)]}))
        ndcg = {w: retrieval_metrics(qrels, run)["nDCG@10"] for w, run in runs.items()}
        best = max(weights, key=lambda w: (round(ndcg[w], 6), -w))
        return {"fusion_weight": best, "validation": {
            "questions": len(pairs), "top_n": top_n,
            "ndcg@10": {("rerank alone" if w is None else str(w)): round(v, 4) for w, v in ndcg.items()}}}

    return choose
