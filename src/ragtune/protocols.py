"""Structural protocols: anything with the right method plugs in (one required method each)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ragtune.models import Chunk, LoadedDocument


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
