"""Fine-tuned versions as generators (``registry:NAME[@ALIAS|/VERSION]``: a registered version, base
+ LoRA adapter, by default the one the ``production`` alias points at, resolved again on every
request), registered through the hook every plugin uses (``ragtune.plugins``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ragtune.plugins import Plugins

if TYPE_CHECKING:
    from ragtune.protocols import Generator
    from ragtune.settings import Settings


def register(plugins: Plugins) -> None:
    plugins.generators.register("registry:", _registry)


def _registry(ref: str, settings: Settings) -> Generator:
    from ragtune.finetune.lifecycle.serving import registry_generator

    return registry_generator(ref, settings)
