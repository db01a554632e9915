"""ragtune's own generators, registered through the hook every plugin uses (``ragtune.plugins``).

* ``smollm2``: the packaged SmolLM2-135M-Instruct (converted once to safetensors in the cache);
* ``openai:MODEL``: any OpenAI-compatible server at ``openai_base_url`` (vLLM, llama.cpp server,
  Ollama, OpenAI), key read from the environment variable named by ``openai_api_key_env``;
* ``llamacpp:FILE.gguf``: llama-cpp-python, an optional extra;
* a Hugging Face model folder (``hf:PATH`` or just ``PATH``).

``generator_adapter`` applies a PEFT LoRA adapter to a transformers generator. Fine-tuned versions
(``registry:NAME``) come from ``ragtune.finetune.plugin``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ragtune.plugins import ANY, Plugins

if TYPE_CHECKING:
    from ragtune.protocols import Generator
    from ragtune.settings import Settings

HOW = ("set [generation] generator (ragtune.toml, RAGTUNE_GENERATION_GENERATOR or --generator) to 'smollm2', "
       "'extractive', 'openai:MODEL', 'llamacpp:FILE.gguf' or a Hugging Face model folder")


def register(plugins: Plugins) -> None:
    for name in ("smollm2", "smollm2-135m-instruct"):
        plugins.generators.register(name, _packaged)
    plugins.generators.register("hf:", _transformers)
    plugins.generators.register("openai:", _openai)
    plugins.generators.register("llamacpp:", _llamacpp)
    plugins.generators.register(ANY, _folder)


def _packaged(_: str, settings: Settings) -> Generator:
    from ragtune.generate.decoding import DecodingControls
    from ragtune.generate.local import TransformersGenerator

    return TransformersGenerator.packaged(settings.resolved_cache_dir, adapter=settings.generation.generator_adapter,
                                          max_time=settings.generation.timeout,
                                          controls=DecodingControls.of(settings.generation))


def _transformers(path: str, settings: Settings) -> Generator:
    from ragtune.generate.decoding import DecodingControls
    from ragtune.generate.local import TransformersGenerator

    g = settings.generation
    return TransformersGenerator(path, adapter=g.generator_adapter, max_time=g.timeout,
                                 controls=DecodingControls.of(g))


def _folder(spec: str, settings: Settings) -> Generator:
    from pathlib import Path

    return _transformers(str(Path(spec).expanduser()), settings)


def _openai(model: str, settings: Settings) -> Generator:
    from ragtune.generate.openai_compat import OpenAICompatibleGenerator

    g = settings.generation
    return OpenAICompatibleGenerator(g.openai_base_url, model, api_key_env=g.openai_api_key_env, timeout=g.timeout,
                                     retries=g.retries)


def _llamacpp(path: str, settings: Settings) -> Generator:
    from ragtune.generate.llamacpp import LlamaCppGenerator

    return LlamaCppGenerator(path, max_time=settings.generation.timeout)
