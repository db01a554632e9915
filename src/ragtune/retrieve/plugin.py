"""ragtune's own rerankers, registered through the hook every plugin uses (``ragtune.plugins``): a
version of a trained cross-encoder in the artefact store (``trained:NAME[@vN]``, the latest without
``@``; ``ragtune rerank train`` writes them, one name per collection), or such a folder by its path."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ragtune.errors import ConfigError
from ragtune.plugins import ANY, Plugins

if TYPE_CHECKING:
    from ragtune.protocols import Reranker
    from ragtune.settings import Settings


def register(plugins: Plugins) -> None:
    plugins.rerankers.register("trained:", _trained)
    plugins.rerankers.register(ANY, _folder)


def _trained(spec: str, settings: Settings) -> Reranker:
    from ragtune.retrieve.rerank import load_reranker

    name, _, version = spec.partition("@")
    if version and not (version.startswith("v") and version[1:].isdigit()):
        raise ConfigError(f"reranker 'trained:{spec}': the version is written vN, e.g. @v2")
    return load_reranker(settings.data_dir, name.strip(), int(version[1:]) if version else None)


def _folder(path: str, settings: Settings) -> Reranker:
    from ragtune.retrieve.rerank import CrossEncoderReranker

    return CrossEncoderReranker(path)
