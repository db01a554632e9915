"""One plugin mechanism for every kind of part: a typed ``Registry`` per kind, filled by plugins.

A plugin is a callable ``register(plugins: Plugins) -> None`` (or a module holding one). ragtune's
own parts come in through exactly the same hook: the modules in ``BUILTIN_PLUGINS`` are loaded
first, then every entry point of the group ``ragtune.plugins`` that installed packages declare::

    [project.entry-points."ragtune.plugins"]
    myformat = "my_package.ragtune_plugin"      # a module with register(plugins), or a callable

Kinds and their factories (one signature per kind):

- ``loaders``: a file suffix (``.pdf``; ``""`` for none) -> ``factory(options) -> Loader``;
- ``chunkers``: a name -> ``factory(counter, budget) -> Chunker``;
- ``embedders``: a spec -> ``factory(argument, cache_dir) -> Embedder``;
- ``generators``, ``rerankers``: a spec -> ``factory(argument, settings) -> part``;
- ``connectors``: a URI scheme (``s3``) -> ``factory(uri, settings) -> Connector``
  (``ragtune.ingest.connectors``): a remote source ``Ragtune.sync_source`` reads;
- ``pii_recognizers``: an entity type (``EMPLOYEE_ID``) -> ``factory() -> presidio EntityRecognizer``
  (``ragtune.govern.pii``): what a PII policy may name beside Presidio's own types.

For the kinds named by a spec, a name ``x`` matches the spec ``x`` (the argument is ``x``); a name
ending in ``:`` matches ``x:ARGUMENT`` (the argument is what follows); the name ``*`` takes any
spec that names a folder (a path: it exists, or is written with ``/``, ``.`` or ``~``).

One rule for duplicates, every kind alike: a name registered twice is a ``ConfigError`` naming both
plugins, unless the second registration asks to ``replace`` it (a plugin that overrides a
built-in on purpose). Later issues add kinds (tools, span exporters) as more ``Registry`` fields.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ragtune.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

    from ragtune.ingest.chunker import ChunkBudget, OffsetTokenizer
    from ragtune.ingest.connectors.base import Connector
    from ragtune.ingest.loaders.base import LoaderOptions
    from ragtune.protocols import Chunker, Embedder, Generator, Loader, Reranker
    from ragtune.settings import Settings

    LoaderFactory = Callable[[LoaderOptions], Loader]
    ChunkerFactory = Callable[[OffsetTokenizer, ChunkBudget], Chunker]
    EmbedderFactory = Callable[[str, Path], Embedder]
    GeneratorFactory = Callable[[str, Settings], Generator]
    RerankerFactory = Callable[[str, Settings], Reranker]
    ConnectorFactory = Callable[[str, Settings], Connector]
    PiiRecognizerFactory = Callable[[], Any]  # -> a presidio_analyzer EntityRecognizer

ENTRY_POINT_GROUP = "ragtune.plugins"
# ragtune's own parts, registered through the same hook third parties use.
BUILTIN_PLUGINS = ("ragtune.ingest.plugin", "ragtune.generate.plugin", "ragtune.retrieve.plugin",
                   "ragtune.finetune.plugin", "ragtune.govern.plugin")
ANY = "*"

F = TypeVar("F")


@dataclass(frozen=True)
class Registration(Generic[F]):
    name: str
    factory: F
    plugin: str  # who registered it: a built-in module or an entry point


class Registry(Generic[F]):
    """Named factories of one kind of part."""

    def __init__(self, kind: str, normalise: Callable[[str], str] | None = None) -> None:
        self.kind = kind
        self._normalise = normalise or _plain_name
        self._entries: dict[str, Registration[F]] = {}
        self.plugin = "?"  # set by Plugins while a plugin registers

    def register(self, name: str, factory: F, *, replace: bool = False) -> None:
        key = self._normalise(name)
        if not callable(factory):
            raise ConfigError(f"plugin {self.plugin}: the {self.kind} factory for {name!r} is not callable: "
                              f"{factory!r}")
        held = self._entries.get(key)
        if held is not None and not replace and held.factory is not factory:
            raise ConfigError(f"plugin {self.plugin} registers the {self.kind} {key!r}, which plugin {held.plugin} "
                              f"registered already; uninstall one of them, or have the later one pass replace=True")
        self._entries[key] = Registration(key, factory, self.plugin)

    def find(self, name: str) -> F | None:
        held = self._entries.get(self._normalise(name))
        return held.factory if held else None

    def get(self, name: str) -> F:
        found = self.find(name)
        if found is None:
            raise ConfigError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names()) or 'none'}")
        return found

    def resolve(self, spec: str) -> tuple[F, str]:
        """The factory for a spec and the argument it gets (see the module docstring)."""
        spec = spec.strip()
        exact = self._entries.get(spec)
        if exact is not None:
            return exact.factory, spec
        prefix, sep, rest = spec.partition(":")
        held = self._entries.get(prefix + ":") if sep else None
        if held is not None:
            if not rest.strip():
                raise ConfigError(f"{self.kind} {spec!r} names nothing after '{prefix}:'")
            return held.factory, rest.strip()
        fallback = self._entries.get(ANY)
        if fallback is None or not path_like(spec):
            also = ", or the path of a model folder" if fallback is not None else ""
            raise ConfigError(f"unknown {self.kind} {spec!r}; registered: {', '.join(self.names()) or 'none'}{also}")
        return fallback.factory, spec

    def source(self, name: str) -> str:
        return self._entries[self._normalise(name)].plugin

    def names(self) -> list[str]:
        return sorted(n for n in self._entries if n != ANY)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._normalise(name) in self._entries

    def __iter__(self) -> Iterator[Registration[F]]:
        return iter(self._entries.values())


def _plain_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip() or any(c.isspace() for c in name.strip()):
        raise ConfigError(f"a plugin part needs a name without spaces, got {name!r}")
    return name.strip()


def entity_type(name: str) -> str:
    """A PII entity type as Presidio spells them: ``EMPLOYEE_ID``."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Z][A-Z0-9_]{1,63}", name.strip()):
        raise ConfigError(f"a PII entity type is upper-case letters, digits and '_' (EMPLOYEE_ID), got {name!r}")
    return name.strip()


def file_suffix(suffix: str) -> str:
    """``pdf`` / ``.PDF`` -> ``.pdf``; ``""`` is files without a suffix (README, changelog)."""
    if not isinstance(suffix, str) or any(c.isspace() or c in "/\\" for c in suffix):
        raise ConfigError(f"a loader suffix must look like '.pdf' (or '' for no suffix), got {suffix!r}")
    suffix = suffix.lower()
    return suffix if not suffix or suffix.startswith(".") else f".{suffix}"


@dataclass
class Plugins:
    """Every registry, as the loaded plugins filled them."""

    loaders: Registry[LoaderFactory] = field(default_factory=lambda: Registry("loader", file_suffix))
    chunkers: Registry[ChunkerFactory] = field(default_factory=lambda: Registry("chunker"))
    embedders: Registry[EmbedderFactory] = field(default_factory=lambda: Registry("embedder"))
    generators: Registry[GeneratorFactory] = field(default_factory=lambda: Registry("generator"))
    rerankers: Registry[RerankerFactory] = field(default_factory=lambda: Registry("reranker"))
    connectors: Registry[ConnectorFactory] = field(default_factory=lambda: Registry("connector"))
    pii_recognizers: Registry[PiiRecognizerFactory] = field(
        default_factory=lambda: Registry("PII entity type", entity_type))
    loaded: list[str] = field(default_factory=list)  # the plugins, in the order they registered

    def registries(self) -> list[Registry[Any]]:
        return [self.loaders, self.chunkers, self.embedders, self.generators, self.rerankers, self.connectors,
                self.pii_recognizers]

    def add(self, name: str, register: Callable[[Plugins], None]) -> None:
        """Run one plugin's ``register`` with its name on everything it registers."""
        for registry in self.registries():
            registry.plugin = name
        try:
            register(self)
        finally:
            for registry in self.registries():
                registry.plugin = "?"
        self.loaded.append(name)

    @classmethod
    def load(cls, *, builtins: tuple[str, ...] = BUILTIN_PLUGINS, entry_points: bool = True) -> Plugins:
        plugins = cls()
        for module in builtins:
            plugins.add(module, _hook(importlib.import_module(module), module))
        if entry_points:
            from importlib.metadata import entry_points as installed

            for ep in sorted(installed(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
                name = f"{ep.name} ({ep.value})"
                try:
                    target = ep.load()
                except Exception as exc:  # an installed plugin that cannot be imported: name it
                    raise ConfigError(f"plugin {name} cannot be loaded: {type(exc).__name__}: {exc}") from exc
                plugins.add(name, _hook(target, name))
        return plugins


def _hook(target: Any, name: str) -> Callable[[Plugins], None]:
    register = getattr(target, "register", target)
    if not callable(register):
        raise ConfigError(f"plugin {name} has no register(plugins) function")
    hook: Callable[[Plugins], None] = register
    return hook


@lru_cache(maxsize=1)
def default_plugins() -> Plugins:
    """The built-ins and the installed plugins, loaded once per process."""
    return Plugins.load()


def path_like(spec: str) -> bool:
    """Whether a spec names a folder: it exists, or is written as a path."""
    from pathlib import Path

    return "/" in spec or spec.startswith((".", "~")) or Path(spec).expanduser().exists()
