"""Which generators a request may choose (``generator`` in ``/collections/{c}/ask`` and
``/v1/chat/completions``, ``model`` in the latter), and how ``/v1/models`` lists them.

The rule, narrow on purpose: the configured generator, ``extractive``, ``reader``, and the specs the
operator lists in ``server.generators`` (``registry:support@production``, ``openai:MODEL`` ...) —
nothing else. Every spec a server answers with is loaded on first use and kept, so a caller that
could name any registered version or alias could fill the server's memory with models, and could
reach versions nobody meant to serve; an operator who wants ``registry:acme/3`` or
``registry:acme@staging`` served lists it. A registry reference is matched by what it means, not
how it is spelled (``registry:acme``, ``registry:acme@production``): the request then gets the spec
as the operator wrote it, so the two spellings share one loaded generator. A registered version is
still checked when it serves (a failed run's version never does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ragtune.errors import ConfigError
from ragtune.finetune.lifecycle.refs import ModelRef
from ragtune.generate.answer import EXTRACTIVE, READER_GENERATOR
from ragtune.server.auth import parse_list
from ragtune.settings import Settings

if TYPE_CHECKING:
    from ragtune.server.deps import ServerState

REGISTRY = "registry:"


def model_key(spec: str) -> str:
    """What a spec means: ``registry:NAME@ALIAS`` / ``registry:NAME/VERSION`` for a registry
    reference (``registry:NAME`` is ``registry:NAME@production``), else the spec itself."""
    spec = spec.strip()
    if spec.startswith(REGISTRY):
        try:
            return REGISTRY + str(ModelRef.parse(spec))
        except ConfigError:
            return spec
    return spec


def served_specs(settings: Settings) -> list[str]:
    """The generator specs a request may name, as configured: the ``generator`` setting first, then
    ``server.generators``, ``extractive`` and ``reader`` (one spelling per meaning)."""
    out: list[str] = []
    seen: set[str] = set()
    for spec in (settings.generation.generator.strip(), *parse_list(settings.server.generators),
                 EXTRACTIVE, READER_GENERATOR):
        if spec and model_key(spec) not in seen:
            seen.add(model_key(spec))
            out.append(spec)
    return out


def find_served(settings: Settings, requested: str) -> str | None:
    """The served spec that means what ``requested`` means, or None."""
    key = model_key(requested)
    return next((spec for spec in served_specs(settings) if model_key(spec) == key), None)


def served_generator(state: ServerState, requested: str | None) -> str:
    """The generator to use: the configured one unless the request names another served one."""
    if requested is None or not requested.strip():
        return state.settings.generation.generator.strip()
    found = find_served(state.settings, requested)
    if found is None:
        raise ConfigError(f"generator {requested.strip()!r} is not served here; use one of "
                          f"{served_specs(state.settings)} (an operator serves more with server.generators)")
    return found
