"""What a search embeds its query with (``[retrieval] query_embedder``).

By default a query is embedded by the collection's own embedder. With ``"int8"`` it is embedded by the
int8 ONNX build of the same model (``OnnxInt8Embedder``), which loads ONNX Runtime and the ``tokenizers``
library only: no torch, no transformers, no sentence-transformers, whose imports are most of the 8 s a
``ragtune search`` in dense or hybrid mode otherwise takes to start. On a collection embedded in fp32
this is a trade (int8 query vectors against fp32 document vectors), measured in
``benchmarks/query_int8.py`` as within noise (SQuAD 2.0 dev nDCG@10: dense +0.0006, hybrid
-0.0008), so ``"auto"``, the default, takes it whenever the embedder has an int8 build. On a
collection built with the int8 backend it is no trade at all: that embedder is already the int8 one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ragtune.errors import ConfigError, ModelError
from ragtune.ingest.embedders import OnnxInt8Embedder, SentenceTransformerEmbedder
from ragtune.protocols import Embedder


class QueryStandIn:
    """Embeds with ``runner`` on behalf of ``embedder``: a collection is checked against (and so
    must have been built by) ``embedder``, whose name and dimension this carries; the vectors are
    ``runner``'s."""

    def __init__(self, embedder: Embedder, runner: Embedder) -> None:
        if runner.dimension != embedder.dimension:
            raise ConfigError(f"query embedder {runner.name!r} makes {runner.dimension}-d vectors, "
                              f"the collection's embedder {embedder.name!r} {embedder.dimension}-d")
        self.embedder = embedder
        self.runner = runner
        self.name: str = embedder.name
        self.dimension: int = embedder.dimension

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        return self.runner.embed_batch(texts)

    def warm_up(self) -> None:
        self.runner.embed_batch(["warm up"])


def query_embedder(spec: str, embedder: Embedder, cache_dir: str | Path) -> Embedder:
    """The embedder queries are embedded with, for collections built by ``embedder``."""
    chosen = spec.strip().lower()
    if chosen in ("", "embedder"):
        return embedder
    if chosen not in ("int8", "auto"):
        raise ConfigError(f"[retrieval] query_embedder must be 'auto', 'int8' or 'embedder', got {spec!r}")
    if isinstance(embedder, OnnxInt8Embedder):
        return embedder
    if chosen == "auto":  # int8 where the embedder has an int8 build, else the embedder itself
        if not isinstance(embedder, SentenceTransformerEmbedder):
            return embedder
        try:
            return QueryStandIn(embedder, OnnxInt8Embedder(embedder.model_path, cache_dir=cache_dir))
        except (ModelError, ConfigError):
            return embedder
    if not isinstance(embedder, SentenceTransformerEmbedder):
        raise ConfigError(f"[retrieval] query_embedder = 'int8' needs a sentence-transformers embedder; "
                          f"{embedder.name!r} is not one: set query_embedder = 'embedder'")
    try:
        runner = OnnxInt8Embedder(embedder.model_path, cache_dir=cache_dir)
    except ModelError as exc:
        raise ConfigError(f"[retrieval] query_embedder = 'int8' cannot be used with {embedder.name!r}: {exc}; "
                          f"set query_embedder = 'embedder'") from exc
    return QueryStandIn(embedder, runner)
