"""Structural protocols: anything with the right method plugs in (one required method each).

The optional capabilities a part may have (a tokenizer and window, a token budget, a warm-up) are
protocols of their own, checked with ``isinstance`` where they are used: a part without them still
works, with the documented fallback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ragtune.models import (
    Chunk,
    Completion,
    Hit,
    Lineage,
    LoadedDocument,
    Message,
    ProgressEvent,
    PromptFormat,
)


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


@runtime_checkable
class Progress(Protocol):
    """Where long work reports how far it has got: the one progress protocol of every producer
    (ingest, evaluation, training, mining, dataset imports, searches). The CLI draws bars from the
    events, the server stores counts on the job; library code never takes a console.

    Called on the producer's threads (ingest also calls from its writer thread, one event at a
    time); it should return quickly, and an exception it raises stops the work."""

    def __call__(self, event: ProgressEvent) -> None: ...


# -- optional capabilities -------------------------------------------------------------------------
@runtime_checkable
class RerankWindow(Protocol):
    """A reranker that rescores only its first ``top_n`` hits: the engine retrieves at least that
    many candidates, and widens the window when a search asks for more (``top_k`` > ``top_n``)."""

    top_n: int

    def widened(self, top_n: int) -> RerankWindow: ...


@runtime_checkable
class TokenizedEmbedder(Embedder, Protocol):
    """An embedder whose tokenizer the chunker measures chunks with, and the window it reads:
    chunks are cut to fit. Without one the engine cannot chunk (ingest needs it)."""

    tokenizer: Any
    max_seq_length: int


@runtime_checkable
class TokenBudget(Protocol):
    """A generator that counts its own tokens and knows its context window: the prompt's sources
    are packed to fit. Without one, 3 characters count as a token and ``context_tokens`` is the budget."""

    @property
    def context_window(self) -> int: ...

    def count_tokens(self, text: str) -> int: ...


@runtime_checkable
class DescribesLineage(Protocol):
    """A generator that says which base model and adapter it serves (``models.Lineage``), also
    when an answer needed no generation. Its completions carry the lineage of the model that wrote
    them (``Completion.lineage``). Without either, an answer's lineage names the generator only."""

    def lineage(self) -> Lineage: ...


@runtime_checkable
class DeclaresPromptFormat(Protocol):
    """A tuned generator that knows the prompt format it was trained on (``generate.prompt``);
    None: not recorded. ``ask`` prompts it in that format or refuses a mismatch."""

    def prompt_format(self) -> PromptFormat | None: ...


@runtime_checkable
class WarmsUp(Protocol):
    """A part that is slow on first use: the server calls ``warm_up`` before it listens."""

    def warm_up(self) -> None: ...
