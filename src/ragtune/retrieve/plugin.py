"""ragtune's own rerankers, registered through the hook every plugin uses (``ragtune.plugins``): a
trained cross-encoder folder (``ragtune rerank train`` writes them) by its path."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ragtune.plugins import ANY, Plugins

if TYPE_CHECKING:
    from ragtune.protocols import Reranker
    from ragtune.settings import Settings


def register(plugins: Plugins) -> None:
    plugins.rerankers.register(ANY, _folder)


def _folder(path: str, settings: Settings) -> Reranker:
    from ragtune.retrieve.rerank import CrossEncoderReranker

    return CrossEncoderReranker(path)
