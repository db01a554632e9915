"""A cross-encoder reranker: reads (query, chunk) pairs jointly and rescores the first hits.

The model is one ragtune trained itself (``ragtune.finetune.reranker``): no pretrained
cross-encoder ships in any package on these machines. A trained reranker is a folder with a
sentence-transformers ``CrossEncoder`` and ragtune's ``manifest.json``; a folder without the
manifest is refused, so a bi-encoder folder (which would load with a random head) cannot be used
by mistake.

Scores are the model's raw logits, not sigmoid probabilities: a sigmoid saturates to exactly 1.0
in float32 for confident pairs and would tie them. Only the first ``top_n`` hits are rescored;
the rest follow in their original order with their original scores (and no ``rerank`` entry).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ragtune.errors import ConfigError, ModelError
from ragtune.models import Hit

MANIFEST = "manifest.json"
KIND = "ragtune-reranker"
DEFAULT_TOP_N = 20


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a trained reranker folder, or ``ModelError`` naming the folder."""
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"reranker folder {path} does not exist")
    file = path / MANIFEST
    if not file.is_file():
        raise ModelError(f"{path} is not a trained ragtune reranker (no {MANIFEST}); "
                         "train one with `ragtune rerank train`")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{file}: unreadable reranker manifest ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise ModelError(f"{file} is not a ragtune reranker manifest (kind must be {KIND!r})")
    return manifest


@contextlib.contextmanager
def quiet_model_loading() -> Iterator[None]:
    """Silence the load reports and progress bars transformers and sentence-transformers print
    for every model load and save (e.g. the new head of a base model); errors still raise."""
    from transformers.utils import logging as hf_logging

    st_logger = logging.getLogger("sentence_transformers")
    hf_level, st_level = hf_logging.get_verbosity(), st_logger.level
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    st_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hf_logging.set_verbosity(hf_level)
        st_logger.setLevel(st_level)
        if bars_were_on:
            hf_logging.enable_progress_bar()


class CrossEncoderReranker:
    """The ``Reranker`` protocol over a trained cross-encoder folder; loads the model on first use."""

    def __init__(self, path: str | Path, *, top_n: int = DEFAULT_TOP_N, batch_size: int = 32,
                 device: str = "cpu") -> None:
        if top_n < 1:
            raise ConfigError(f"reranker top_n must be at least 1, got {top_n}")
        if batch_size < 1:
            raise ConfigError(f"reranker batch_size must be at least 1, got {batch_size}")
        self.path = Path(path).expanduser()
        self.manifest = read_manifest(self.path)  # cheap: a small JSON file, no model
        self.top_n = top_n
        self.batch_size = batch_size
        self.device = device
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return f"{self.manifest.get('name', self.path.parent.name)}/v{self.manifest.get('version', '?')}"

    @property
    def model(self) -> Any:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._load()
        return self._model

    def _load(self) -> Any:
        from torch import nn

        try:
            from sentence_transformers import CrossEncoder

            with quiet_model_loading():
                model = CrossEncoder(str(self.path), device=self.device, local_files_only=True,
                                     activation_fn=nn.Identity())
        except Exception as exc:  # a broken folder fails in many library-specific ways
            raise ModelError(f"cannot load the reranker in {self.path}: {type(exc).__name__}: {exc}") from exc
        if model.num_labels != 1:
            raise ModelError(f"{self.path} is not a reranker: its model has {model.num_labels} labels, expected 1")
        model.eval()
        return model

    def score(self, query: str, texts: list[str]) -> list[float]:
        """Raw relevance logits of ``(query, text)`` pairs, higher is more relevant."""
        if not texts:
            return []
        scores = self.model.predict([(query, t) for t in texts], batch_size=self.batch_size,
                                    show_progress_bar=False, convert_to_numpy=True)
        return [float(s) for s in scores.reshape(-1)]

    def rerank(self, query: str, hits: list[Hit]) -> list[Hit]:
        head, tail = hits[: self.top_n], hits[self.top_n:]
        scores = self.score(query, [h.chunk.text for h in head])
        # Stable on ties: equal scores keep the retriever's order.
        order = sorted(range(len(head)), key=lambda i: -scores[i])
        out: list[Hit] = []
        for i in order:
            h = head[i]
            out.append(dataclasses.replace(h, score=scores[i], rank=len(out) + 1,
                                           scores_by_source={**h.scores_by_source, "rerank": scores[i]}))
        for h in tail:
            out.append(dataclasses.replace(h, rank=len(out) + 1))
        return out
