"""Structural protocols: anything with the right method plugs in (one required method each)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ragtune.models import Chunk, Completion, Hit, LoadedDocument, Message


@runtime_checkable
class Loader(Protocol):
    def load(self, source: Path) -> Iterator[LoadedDocument]: ...


@runtime_checkable
class Chunker(Protocol):
    def split(self, document: LoadedDocument) -> list[Chunk]: ...


@runtime_checkable
class Embedder(Protocol):
    """``embed_batch`` returns float32, L2-normalised rows; ``name``/``dimension`` identify vectors."""

    name: str
    dimension: int

    def embed_batch(self, texts: list[str]) -> np.ndarray: ...


@runtime_checkable
class TokenCounter(Protocol):
    def count_tokens(self, text: str) -> int: ...


@runtime_checkable
class Generator(Protocol):
    """Turns chat messages into a completion. Streaming is a callback, so a streamed generation
    still returns its usage (token counts, time) like a blocking one."""

    name: str

    def generate(self, messages: Sequence[Message], *, max_tokens: int = 256,
                 on_token: Callable[[str], None] | None = None) -> Completion: ...


@runtime_checkable
class Reranker(Protocol):
    def rerank(self, query: str, hits: list[Hit]) -> list[Hit]: ...
