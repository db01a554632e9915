"""Generators by spec (``[generation] generator`` in ragtune.toml or ``--generator``), from the generator registry
of ``ragtune.plugins``: ``smollm2``, ``openai:MODEL``, ``llamacpp:FILE.gguf``, a Hugging Face model
folder (``ragtune.generate.plugin``), ``registry:NAME[@ALIAS|/VERSION]`` (``ragtune.finetune.plugin``),
and whatever installed plugins add.

``extractive`` is not a generator (no model at all); the engine handles it before reaching this
registry. There is no fallback: an unknown or broken spec is an error that says how to configure one.
"""

from __future__ import annotations

from ragtune.errors import ConfigError
from ragtune.generate.plugin import HOW
from ragtune.plugins import Plugins, default_plugins
from ragtune.protocols import Generator
from ragtune.settings import Settings

EXTRACTIVE = "extractive"


def available_generators(plugins: Plugins | None = None) -> list[str]:
    names = (plugins or default_plugins()).generators.names()
    return sorted([*(n + "..." if n.endswith(":") else n for n in names), EXTRACTIVE])


def make_generator(spec: str, settings: Settings, plugins: Plugins | None = None) -> Generator:
    spec = spec.strip()
    if spec == EXTRACTIVE:
        raise ConfigError("'extractive' answers without a model; this step needs a generator: " + HOW)
    try:
        factory, argument = (plugins or default_plugins()).generators.resolve(spec)
    except ConfigError as exc:
        raise ConfigError(f"{exc}; {HOW}") from None
    return factory(argument, settings)
