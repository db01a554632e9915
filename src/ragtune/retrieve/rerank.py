"""A cross-encoder reranker: reads (query, chunk) pairs jointly and rescores the first hits.

The model is one ragtune trained itself (``ragtune.finetune.rerankers``): no pretrained
cross-encoder ships in any package on these machines. Its network is MiniLM reading
``[CLS] query [SEP] chunk [SEP]`` jointly; the score is the cosine of the mean-pooled query
tokens and the mean-pooled chunk tokens, times a learned scale. That head needs no new weights,
so an untrained model already ranks like a (cross-attending) bi-encoder and training starts from
sense rather than from a random head (a random linear head did not learn in the CPU steps
afforded here: nDCG@10 fell from 0.89 to 0.29 on SQuAD).

A trained reranker is a version in the artefact store (``ragtune.store.artefacts``,
``<data_dir>/rerankers/<name>/v<N>/``): the encoder, its tokenizer, ``head.json`` and the
manifest, read and checked by the store's one reader; a folder without the manifest is refused,
so a bi-encoder folder cannot be used by mistake. When the manifest's thresholds hold a
``fusion_weight`` w (chosen on validation questions at training time), the new order is
z(retriever score) + w * z(rerank score) over the rescored hits (w = 0: the order is kept and the
model never runs); without it, the rerank score alone.
Only the first ``top_n`` hits are rescored; the rest follow in their original order with their
original scores (and no ``rerank`` entry).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import threading
from pathlib import Path
from typing import Any

from ragtune.errors import ConfigError, ModelError
from ragtune.ingest.quiet import quiet_model_loading
from ragtune.models import Hit
from ragtune.retrieve import fusion
from ragtune.store.artefacts import ArtefactKind, ArtefactStore, read_manifest

DEFAULT_TOP_N = 20
SPLIT_NOT_RECORDED = "not recorded (trained before the artefact store)"


def _upgrade(manifest: dict[str, Any]) -> dict[str, Any]:
    """A reranker manifest written before the artefact store (its counts, hash, source, losses and
    fusion weight at the top) in today's sections."""
    moved = ("triples", "queries", "triples_sha256", "source", "train_seconds", "train_loss", "loss_curve",
             "validation", "fusion_weight", "hyperparameters")
    source, validation = manifest.get("source"), manifest.get("validation") or {}
    split = source.get("split") if isinstance(source, dict) else None
    return {
        **{k: v for k, v in manifest.items() if k not in moved},
        "data": {"sha256": manifest.get("triples_sha256"), "rows": manifest.get("triples", 0),
                 "held_out": validation.get("questions"), "source": source, "split": split or SPLIT_NOT_RECORDED,
                 "queries": manifest.get("queries")},
        "metrics": {k: manifest[k] for k in ("train_seconds", "train_loss", "loss_curve", "validation")
                    if k in manifest},
        "thresholds": {"fusion_weight": manifest.get("fusion_weight")},
        "hyperparameters": manifest.get("hyperparameters") or {},
    }


RERANKER = ArtefactKind(
    kind="ragtune-reranker",
    format=2,  # 1 was a sentence-transformers CrossEncoder with a linear head
    root="rerankers",
    noun="reranker",
    train_command="ragtune rerank train",
    upgrade=_upgrade,
)


def reranker_store(data_dir: str | Path, name: str) -> ArtefactStore:
    """The versions of the reranker ``name`` (by default a collection's name) in a data folder."""
    return ArtefactStore.of(data_dir, RERANKER, name)


HEAD = "head.json"


class PairScorer:
    """MiniLM over (query, text) pairs, scored by the scaled cosine of the two segments'
    mean-pooled token states. Used for training (gradients on) and for reranking."""

    def __init__(self, encoder: Any, tokenizer: Any, *, log_scale: float, max_length: int) -> None:
        import torch

        self.encoder = encoder
        self.tokenizer = tokenizer
        self.log_scale = torch.nn.Parameter(torch.tensor(float(log_scale)))
        self.max_length = max_length

    @classmethod
    def load(cls, path: Path, *, max_length: int | None = None) -> PairScorer:
        from transformers import AutoModel, AutoTokenizer

        head: dict[str, Any] = {"log_scale": math.log(20.0), "max_length": 128}
        if (path / HEAD).is_file():
            head.update(json.loads((path / HEAD).read_text(encoding="utf-8")))
        with quiet_model_loading():
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            encoder = AutoModel.from_pretrained(str(path), local_files_only=True)
        return cls(encoder, tokenizer, log_scale=float(head["log_scale"]),
                   max_length=int(max_length or head["max_length"]))

    def save(self, path: Path) -> None:
        with quiet_model_loading():
            self.encoder.save_pretrained(str(path))
            self.tokenizer.save_pretrained(str(path))
        (path / HEAD).write_text(json.dumps({"log_scale": float(self.log_scale.item()),
                                             "max_length": self.max_length}) + "\n", encoding="utf-8")

    def __call__(self, queries: list[str], texts: list[str]) -> Any:
        import torch

        batch = self.tokenizer(queries, texts, truncation="only_second", max_length=self.max_length,
                               padding=True, return_tensors="pt")
        states = self.encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        second = batch["token_type_ids"].unsqueeze(-1).to(states.dtype)
        q_mask, t_mask = mask * (1 - second), mask * second
        q_vec = (states * q_mask).sum(1) / q_mask.sum(1).clamp(min=1)
        t_vec = (states * t_mask).sum(1) / t_mask.sum(1).clamp(min=1)
        return torch.nn.functional.cosine_similarity(q_vec, t_vec) * self.log_scale.exp()

    def score(self, query: str, texts: list[str], batch_size: int = 32) -> list[float]:
        import torch

        self.encoder.eval()
        out: list[float] = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                part = texts[start:start + batch_size]
                out.extend(float(s) for s in self([query] * len(part), part))
        return out


def fused_order(retriever: list[float], rerank: list[float], weight: float | None) -> list[float]:
    """The scores hits are re-sorted by: the rerank score alone, or z(retriever) + w * z(rerank)."""
    if weight is None:
        return list(rerank)
    fused = fusion.convex({"retriever": dict(enumerate(retriever)), "rerank": dict(enumerate(rerank))},
                          {"retriever": 1.0, "rerank": weight})
    return [fused[i] for i in range(len(rerank))]


class CrossEncoderReranker:
    """The ``Reranker`` protocol over a trained cross-encoder folder; loads the model on first use."""

    def __init__(self, path: str | Path, *, top_n: int = DEFAULT_TOP_N, batch_size: int = 32) -> None:
        if top_n < 1:
            raise ConfigError(f"reranker top_n must be at least 1, got {top_n}")
        if batch_size < 1:
            raise ConfigError(f"reranker batch_size must be at least 1, got {batch_size}")
        self.path = Path(path).expanduser()
        self.manifest = read_manifest(self.path, RERANKER)  # cheap: a small JSON file, no model
        self.top_n = top_n
        self.batch_size = batch_size
        # one slot, shared with the copies ``widened`` makes, so the model loads once for all
        self._loaded: list[PairScorer] = []
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return f"{self.manifest.get('name', self.path.parent.name)}/v{self.manifest.get('version', '?')}"

    @property
    def model(self) -> PairScorer:
        if not self._loaded:
            with self._lock:
                if not self._loaded:
                    self._loaded.append(self._load())
        return self._loaded[0]

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory (it loads on first use)."""
        return bool(self._loaded)

    def widened(self, top_n: int) -> CrossEncoderReranker:
        """This reranker rescoring at least ``top_n`` hits, sharing its (loaded or not) model."""
        if top_n <= self.top_n:
            return self
        wider = copy.copy(self)
        wider.top_n = top_n
        return wider

    @property
    def fusion_weight(self) -> float | None:
        weight = self.manifest["thresholds"].get("fusion_weight")
        return None if weight is None else float(weight)

    def _load(self) -> PairScorer:
        try:
            return PairScorer.load(self.path)
        except Exception as exc:  # a broken folder fails in many library-specific ways
            raise ModelError(f"cannot load the reranker in {self.path}: {type(exc).__name__}: {exc}") from exc

    def score(self, query: str, texts: list[str]) -> list[float]:
        """Raw relevance scores of ``(query, text)`` pairs, higher is more relevant."""
        if not texts:
            return []
        return self.model.score(query, texts, self.batch_size)

    def rerank(self, query: str, hits: list[Hit]) -> list[Hit]:
        if self.fusion_weight == 0:
            # validation found the reranker no help on this collection: keep the order, skip the model
            return [dataclasses.replace(h, rank=i) for i, h in enumerate(hits, start=1)]
        head, tail = hits[: self.top_n], hits[self.top_n:]
        scores = self.score(query, [h.chunk.text for h in head])
        final = fused_order([h.score for h in head], scores, self.fusion_weight) if head else []
        # Stable on ties: equal scores keep the retriever's order.
        order = sorted(range(len(head)), key=lambda i: -final[i])
        out: list[Hit] = []
        for i in order:
            h = head[i]
            out.append(dataclasses.replace(h, score=final[i], rank=len(out) + 1,
                                           scores_by_source={**h.scores_by_source, "rerank": scores[i]}))
        for h in tail:
            out.append(dataclasses.replace(h, rank=len(out) + 1))
        return out


def load_reranker(data_dir: str | Path, name: str, version: int | None = None, **options: Any
                  ) -> CrossEncoderReranker:
    """A ``CrossEncoderReranker`` for a version of ``name`` (the latest by default); the model loads
    on first use."""
    return CrossEncoderReranker(reranker_store(data_dir, name).get(version).path, **options)
