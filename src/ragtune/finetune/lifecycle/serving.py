"""Serving and exporting registered model versions (``finetune.lifecycle.registry`` keeps the books).

``registry:NAME`` (the production alias), ``registry:NAME@ALIAS`` or ``registry:NAME/VERSION`` is a
generator spec (``generate.registry``): :class:`RegistryGenerator` resolves the reference on every
request (one indexed query on the alias), so a promotion or rollback takes effect on the next
request; the base model + adapter of a version are loaded once and kept (the last two used).
A version's base model is the folder it was trained on (the packaged SmolLM2 is converted again
if its cache is gone), checked against the base hash recorded at training.

``export_model`` merges a version's adapter into its base with PEFT's ``merge_and_unload`` and saves
a standalone Hugging Face folder (plus ``ragtune_model.json``, its provenance).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from ragtune.errors import ConfigError, ModelError
from ragtune.extras import needs
from ragtune.finetune.data.lengths import PACKAGED_BASES
from ragtune.finetune.lifecycle.refs import PRODUCTION, ModelRef, ModelVersionInfo
from ragtune.finetune.lifecycle.registry import ModelRegistry
from ragtune.finetune.lora.runs import now
from ragtune.generate.decoding import DecodingControls
from ragtune.generate.lineage import adapter_hash, model_hash
from ragtune.generate.local import TransformersGenerator, packaged_smollm2
from ragtune.models import AdapterLineage, Completion, Lineage, Message
from ragtune.settings import Settings


def base_folder(info: ModelVersionInfo, cache_dir: Path) -> Path:
    """The version's base model folder, checked against the hash it was trained on."""
    path = Path(info.base_path)
    if not (path / "config.json").is_file():
        if info.base.lower() not in PACKAGED_BASES:
            raise ModelError(f"the base model of {info.name} version {info.version} is gone from {path}")
        path = packaged_smollm2(cache_dir)
    if info.base_hash and model_hash(path) != info.base_hash:
        raise ModelError(f"the base model at {path} is not the one {info.name} version {info.version} was "
                         f"trained on (hash {info.base_hash[:12]})")
    return path


def export_model(registry: ModelRegistry, ref: str | ModelRef, out: Path) -> Path:
    """Merge the version's adapter into its base (PEFT ``merge_and_unload``) and save a
    standalone Hugging Face model folder at ``out`` (which must not exist or be empty)."""
    info = registry.resolve(ref)
    base = base_folder(info, registry.settings.resolved_cache_dir)
    with needs("train", "exporting a model"):
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer
    out = Path(out).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not empty; choose another folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
        merged = PeftModel.from_pretrained(model, info.adapter).merge_and_unload()
        merged.save_pretrained(str(tmp), safe_serialization=True)
        AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(tmp))
        (tmp / "ragtune_model.json").write_text(json.dumps({
            "model": info.name, "version": info.version, "run_id": info.run_id, "base": info.base,
            "base_hash": info.base_hash, "dataset": info.dataset, "dataset_hash": info.dataset_hash,
            "exported_at": now()}, indent=2), encoding="utf-8")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


class RegistryGenerator:
    """A generator that serves whatever version ``ref`` points at when a request arrives; its
    completions carry the lineage of the version that wrote them (name/version, the alias asked
    for, the run, the base and its hash, the adapter and its hash)."""

    def __init__(self, ref: str | ModelRef, registry: ModelRegistry, *, keep: int = 2) -> None:
        self.ref = ModelRef.parse(ref) if isinstance(ref, str) else ref
        self.registry = registry
        self.keep = keep
        self.name = f"registry:{self.ref}"
        # version -> (its TransformersGenerator, what the registry knows of it), most recently used last
        self._loaded: dict[int, tuple[TransformersGenerator, ModelVersionInfo]] = {}
        self._lock = threading.Lock()

    def current(self) -> TransformersGenerator:
        """The generator of the version the reference points at now (loaded once per version)."""
        return self._current()[0]

    def _current(self) -> tuple[TransformersGenerator, ModelVersionInfo]:
        if self.ref.version is not None:
            version = self.ref.version
        else:
            version = int(self.registry.by_alias(self.ref.name, self.ref.alias or PRODUCTION).version)
        with self._lock:
            loaded = self._loaded.pop(version, None)
            if loaded is None:
                info = self.registry.version(self.ref.name, version)
                if not info.servable:
                    raise ModelError(f"{self.ref} points at version {version}, whose run did not complete")
                settings = self.registry.settings
                generator = TransformersGenerator(
                    base_folder(info, settings.resolved_cache_dir), adapter=info.adapter,
                    name=f"{self.ref.name}/{version}", max_time=settings.generation.timeout,
                    controls=DecodingControls.of(settings.generation))
                loaded = (generator, info)
            self._loaded[version] = loaded
            while len(self._loaded) > self.keep:
                self._loaded.pop(next(iter(self._loaded)))
        self.name = f"registry:{self.ref} ({self.ref.name}/{version})"
        return loaded

    def lineage(self, info: ModelVersionInfo | None = None) -> Lineage:
        """The lineage of ``info``, by default of the version the reference points at now (resolved,
        not loaded)."""
        info = info or self.registry.resolve(self.ref)
        label = f"{info.name}/{info.version}"
        return Lineage(generator=f"registry:{self.ref}", base=info.base or None, base_sha256=info.base_hash or None,
                       adapter=AdapterLineage(path=info.adapter, sha256=adapter_hash(Path(info.adapter)), label=label,
                                              registry=label, alias=self.ref.alias, run_id=info.run_id or None))

    def generate(self, messages: Sequence[Message], *, max_tokens: int = 256,
                 on_token: Callable[[str], None] | None = None) -> Completion:
        generator, info = self._current()
        completion = generator.generate(messages, max_tokens=max_tokens, on_token=on_token)
        return dataclasses.replace(completion, lineage=self.lineage(info))

    def count_tokens(self, text: str) -> int:
        return int(self.current().count_tokens(text))

    def render(self, messages: Sequence[Message]) -> str:
        return str(self.current().render(messages))

    @property
    def context_window(self) -> int:
        return int(self.current().context_window)


def registry_generator(ref: str, settings: Settings) -> RegistryGenerator:
    """The ``registry:`` generator spec's factory (``generate.registry``)."""
    return RegistryGenerator(ref, ModelRegistry(settings))
