"""Generators by name. Built-ins register through the same hook a plugin would use.

Specs (``generator`` in ragtune.toml or ``--generator``):

* ``smollm2``: the packaged SmolLM2-135M-Instruct (converted once to safetensors in the cache);
* ``openai:MODEL``: any OpenAI-compatible server at ``openai_base_url`` (vLLM, llama.cpp server,
  Ollama, OpenAI), key read from the environment variable named by ``openai_api_key_env``;
* ``llamacpp:FILE.gguf``: llama-cpp-python, an optional extra;
* a Hugging Face model folder (``hf:PATH`` or just ``PATH``);
* ``registry:NAME[@ALIAS|/VERSION]``: a registered fine-tuned version (base + LoRA adapter), by
  default the one the ``production`` alias points at, resolved again on every request.

``generator_adapter`` applies a PEFT LoRA adapter to a transformers generator. ``extractive`` is
not a generator (no model at all); the engine handles it before reaching this registry. There is no
fallback: an unknown or broken spec is an error that says how to configure one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ragtune.errors import ConfigError
from ragtune.protocols import Generator
from ragtune.settings import Settings

GeneratorFactory = Callable[[str, Settings], Generator]
_REGISTRY: dict[str, GeneratorFactory] = {}
_PREFIXES: dict[str, GeneratorFactory] = {}
_HOW = ("set `generator` (ragtune.toml, RAGTUNE_GENERATOR or --generator) to 'smollm2', 'extractive', "
        "'openai:MODEL', 'llamacpp:FILE.gguf' or a Hugging Face model folder")


def register_generator(name: str, factory: GeneratorFactory, *, prefix: bool = False) -> None:
    """``prefix=True`` registers ``name:ARGUMENT`` specs (``openai:gpt-4o-mini``)."""
    (_PREFIXES if prefix else _REGISTRY)[name] = factory


def available_generators() -> list[str]:
    return sorted([*_REGISTRY, *(f"{p}:..." for p in _PREFIXES), "extractive"])


def make_generator(spec: str, settings: Settings) -> Generator:
    spec = spec.strip()
    if spec == "extractive":
        raise ConfigError("'extractive' answers without a model; this step needs a generator: " + _HOW)
    if spec in _REGISTRY:
        return _REGISTRY[spec](spec, settings)
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in _PREFIXES:
        if not rest:
            raise ConfigError(f"generator {spec!r} names no model after '{prefix}:'; " + _HOW)
        return _PREFIXES[prefix](rest, settings)
    path = Path(spec).expanduser()
    if path.exists() or "/" in spec or spec.startswith((".", "~")):
        return _transformers(str(path), settings)
    raise ConfigError(f"unknown generator {spec!r}; " + _HOW)


def _packaged(_: str, settings: Settings) -> Generator:
    from ragtune.generate.local import TransformersGenerator

    return TransformersGenerator.packaged(settings.resolved_cache_dir, adapter=settings.generator_adapter,
                                          max_time=settings.generation_timeout)


def _transformers(path: str, settings: Settings) -> Generator:
    from ragtune.generate.local import TransformersGenerator

    return TransformersGenerator(path, adapter=settings.generator_adapter, max_time=settings.generation_timeout)


def _openai(model: str, settings: Settings) -> Generator:
    from ragtune.generate.openai_compat import OpenAICompatibleGenerator

    return OpenAICompatibleGenerator(settings.openai_base_url, model, api_key_env=settings.openai_api_key_env,
                                     timeout=settings.generation_timeout, retries=settings.generation_retries)


def _registry(ref: str, settings: Settings) -> Generator:
    from ragtune.finetune.serving import registry_generator

    return registry_generator(ref, settings)


def _llamacpp(path: str, settings: Settings) -> Generator:
    from ragtune.generate.llamacpp import LlamaCppGenerator

    return LlamaCppGenerator(path, max_time=settings.generation_timeout)


for _name in ("smollm2", "smollm2-135m-instruct"):
    register_generator(_name, _packaged)
register_generator("hf", _transformers, prefix=True)
register_generator("openai", _openai, prefix=True)
register_generator("llamacpp", _llamacpp, prefix=True)
register_generator("registry", _registry, prefix=True)
