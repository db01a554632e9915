"""Serving and exporting registered model versions (``finetune.lifecycle.registry`` keeps the books).

``registry:NAME`` (the production alias), ``registry:NAME@ALIAS`` or ``registry:NAME/VERSION`` is a
generator spec (``generate.registry``): :class:`RegistryGenerator` resolves the reference on every
request (one indexed query on the alias), so a promotion or rollback takes effect on the next
request; the base model + adapter of a version are loaded once and kept (the last two used).
A version's base model is the folder it was trained on (the packaged SmolLM2 is converted again
if its cache is gone), checked against the base hash recorded at training.

``export_model`` merges a version's adapter into its base with PEFT's ``merge_and_unload`` and saves
a standalone model: a Hugging Face safetensors folder in fp32, fp16 or bf16, or one GGUF file
(``gguf_export``) in f32, f16 or bf16, plus ``ragtune_model.json`` (provenance, files, and the
check below). Every export is checked before it is kept: the written files are loaded back with
transformers and compared with the merged fp32 model on fixed prompts (largest logit difference,
greedy tokens, and for GGUF its tokenizer); one that does not match within its dtype's tolerance is
an error and leaves nothing behind (it is written to a temporary folder and renamed at the end).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ragtune.errors import ConfigError, ModelError
from ragtune.extras import needs
from ragtune.finetune.data.lengths import PACKAGED_BASES
from ragtune.finetune.lifecycle import gguf_export
from ragtune.finetune.lifecycle.refs import PRODUCTION, ModelRef, ModelVersionInfo
from ragtune.finetune.lifecycle.registry import ModelRegistry
from ragtune.finetune.lora.runs import now
from ragtune.generate.decoding import DecodingControls
from ragtune.generate.lineage import adapter_hash, model_hash
from ragtune.generate.local import TransformersGenerator, packaged_gguf, packaged_smollm2
from ragtune.models import AdapterLineage, Completion, Lineage, Message, PromptFormat
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


EXPORT_FORMATS = ("safetensors", "gguf")
EXPORT_DTYPES = ("fp32", "fp16", "bf16")
# Unit roundoff of each storage type: what rounding the weights once does, relative to their size.
_UNIT_ROUNDOFF = {"fp32": 2.0**-24, "fp16": 2.0**-11, "bf16": 2.0**-8}
# The tolerance on logits is this many unit roundoffs of the largest reference logit. On SmolLM2 with
# merged adapters, rounding moved logits by 2 to 4 of them (fp16 0.04-0.06, bf16 0.29-0.43 at logits
# up to 38; benchmarks/results/export_formats.json); a lost rope permutation moved them by 31.
_ROUNDOFFS_ALLOWED = 10
_MIN_TOLERANCE = 1e-4  # fp32: the same weights, the same kernels; room for summation order only
# Fixed check prompts: chat turns (rendered with the base's own template) and plain text.
CHECK_CHATS = ("What is the capital of France?", "Write a Python function that reverses a string.",
               "Summarise in one sentence: the meeting moved to Thursday because the room was booked.")
CHECK_TEXTS = ("The quick brown fox jumps over the",)


@dataclasses.dataclass(frozen=True)
class ExportCheck:
    """The written export loaded back with transformers (weights upcast to fp32, so this measures
    what the format's rounding does to the model, not one runtime's arithmetic) against the merged
    fp32 model it was written from, over every position of the check prompts."""

    loaded_with: str
    prompts: int
    positions: int
    max_abs_logit_diff: float
    logit_scale: float  # the largest |logit| of the merged model: the tolerance scales with it
    tolerance: float
    greedy_agreement: float  # share of positions where both pick the same next token
    next_tokens_equal: bool  # at the end of every prompt
    # Prompts ending on another greedy token although the merged model's lead there is over twice
    # the tolerance: rounding within tolerance cannot flip those. Closer calls are counted in
    # next_tokens_equal and greedy_agreement but do not fail a bf16 export on a near-tie.
    decisive_flips: int
    tokenizer_equal: bool | None = None  # GGUF: its own tokenizer encodes the prompts as the base's does

    def problems(self) -> list[str]:
        out = []
        if self.max_abs_logit_diff > self.tolerance:
            out.append(f"max |logit difference| {self.max_abs_logit_diff:.4g} is over the tolerance "
                       f"{self.tolerance:.4g}")
        if self.decisive_flips:
            out.append(f"{self.decisive_flips} of {self.prompts} prompt(s) end on another greedy token than the "
                       "merged model's, by more than rounding explains")
        if self.tokenizer_equal is False:
            out.append("its own tokenizer encodes the check prompts differently from the base's or has another "
                       "chat template")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "passed": not self.problems()}


def check_export_options(format: str, dtype: str) -> None:
    """Refuse an unknown format or dtype before anything is loaded."""
    if format not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if dtype not in EXPORT_DTYPES:
        raise ConfigError(f"unknown export dtype {dtype!r}; choose one of {', '.join(EXPORT_DTYPES)} "
                          "(quantised GGUF types such as q4_0 or q8_0: run llama.cpp's llama-quantize on an fp16 "
                          "GGUF export)")


def export_model(registry: ModelRegistry, ref: str | ModelRef, out: Path, *, dtype: str = "fp32",
                 format: str = "safetensors") -> Path:
    """Export a registered version (:func:`export_merged` of its base and adapter), with its
    provenance in ``ragtune_model.json``."""
    check_export_options(format, dtype)
    info = registry.resolve(ref)
    base = base_folder(info, registry.settings.resolved_cache_dir)
    return export_merged(base, Path(info.adapter), out, dtype=dtype, format=format, base_name=info.base,
                         stem=f"{info.name}-v{info.version}", label=f"{info.name} version {info.version}",
                         provenance={"model": info.name, "version": info.version, "run_id": info.run_id,
                                     "base": info.base, "base_hash": info.base_hash, "dataset": info.dataset,
                                     "dataset_hash": info.dataset_hash})


def export_merged(base: Path, adapter: Path, out: Path, *, dtype: str = "fp32", format: str = "safetensors",
                  base_name: str, stem: str, label: str, provenance: dict[str, Any]) -> Path:
    """Merge ``adapter`` into the model at ``base`` (PEFT ``merge_and_unload``), save it at ``out``
    (which must not exist or be empty) as a Hugging Face safetensors folder or one GGUF file
    (``{stem}-{type}.gguf``) in ``dtype``, and check it (:class:`ExportCheck`, written with
    ``provenance`` to ``ragtune_model.json``); an export that does not match raises
    :class:`ModelError` and leaves nothing at ``out``."""
    check_export_options(format, dtype)
    # GGUF tokenizer metadata comes from the packaged SmolLM2 GGUF; another base is refused by gguf_export
    tokenizer_gguf = packaged_gguf() if format == "gguf" and base_name.lower() in PACKAGED_BASES else None
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
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        merged.eval()
        tokenizer = AutoTokenizer.from_pretrained(str(base))
        if format == "gguf":  # refused here, before the slow parts, when it cannot be written
            gguf_export.check_supported(merged.config, tokenizer_gguf, base_name)
        reference = _reference(merged, tokenizer, torch)
        manifest: dict[str, Any] = {"format": format, "dtype": dtype}
        if format == "gguf":
            gtype, ftype = gguf_export.GGUF_TYPES[dtype]
            file = tmp / f"{stem}-{gtype.lower()}.gguf"
            gguf_export.write_gguf(merged, file, dtype=dtype, tokenizer_gguf=tokenizer_gguf, base=base_name,
                                   name=stem, description=f"{label}: {base_name} with a LoRA adapter merged, "
                                                          "exported by ragtune")
            del merged, model
            manifest["gguf"] = {"file": file.name, "tensor_type": gtype, "file_type": ftype}
            check = _check_gguf(tmp, file.name, tokenizer, reference, dtype, torch)
        else:
            torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
            merged.to(torch_dtype).save_pretrained(str(tmp), safe_serialization=True)
            tokenizer.save_pretrained(str(tmp))
            del merged, model
            loaded = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.float32)
            check = _compare(reference, loaded, dtype, torch, loaded_with=_loaded_with("from_pretrained(folder)"))
        problems = check.problems()
        if problems:
            raise ModelError(f"the {format} {dtype} export of {label} does not match the merged model: "
                             f"{'; '.join(problems)}; nothing was written to {out}")
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / "ragtune_model.json").write_text(json.dumps({
            **provenance, **manifest, "files": files, "check": check.to_dict(), "exported_at": now()}, indent=2),
            encoding="utf-8")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def export_manifest(folder: Path) -> dict[str, Any]:
    """The ``ragtune_model.json`` of an export folder."""
    return dict(json.loads((Path(folder) / "ragtune_model.json").read_text(encoding="utf-8")))


def _check_prompts(tokenizer: Any) -> list[str]:
    chats = list(CHECK_CHATS)
    if getattr(tokenizer, "chat_template", None):
        chats = [str(tokenizer.apply_chat_template([{"role": "user", "content": c}], tokenize=False,
                                                   add_generation_prompt=True)) for c in chats]
    return chats + list(CHECK_TEXTS)


def _reference(model: Any, tokenizer: Any, torch: Any) -> list[tuple[str, Any, Any]]:
    """(prompt, its token ids, the merged model's fp32 logits at every position) per check prompt."""
    out = []
    with torch.inference_mode():
        for text in _check_prompts(tokenizer):
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            out.append((text, ids, model(ids).logits[0].float()))
    return out


def _loaded_with(how: str) -> str:
    import transformers

    return f"transformers {transformers.__version__} AutoModelForCausalLM.{how}, dtype=float32"


def _check_gguf(folder: Path, name: str, tokenizer: Any, reference: list[tuple[str, Any, Any]], dtype: str,
                torch: Any) -> ExportCheck:
    """Load the GGUF file back as generate/local.py loads the packaged one (``gguf_file=``): its
    model against the reference, and its own tokenizer against the base's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name, dtype=torch.float32)
    check = _compare(reference, model, dtype, torch, loaded_with=_loaded_with("from_pretrained(gguf_file=...)"))
    if check.problems():
        return check  # failed already; reading the tokenizer back (seconds) would change nothing
    del model
    loaded_tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=name)
    same = loaded_tokenizer.chat_template == tokenizer.chat_template and all(
        loaded_tokenizer(text, add_special_tokens=False)["input_ids"] == ids[0].tolist() for text, ids, _ in reference)
    return dataclasses.replace(check, tokenizer_equal=same)


def _compare(reference: list[tuple[str, Any, Any]], model: Any, dtype: str, torch: Any, *, loaded_with: str,
             tokenizer_equal: bool | None = None) -> ExportCheck:
    scale = max(float(logits.abs().max()) for _, _, logits in reference)
    tolerance = max(_MIN_TOLERANCE, _ROUNDOFFS_ALLOWED * _UNIT_ROUNDOFF[dtype] * scale)
    worst, agree, positions, ends_equal, decisive = 0.0, 0, 0, True, 0
    model.eval()
    with torch.inference_mode():
        for _, ids, expected in reference:
            got = model(ids).logits[0].float()
            diff = float((got - expected).abs().max())
            worst = max(worst, math.inf if math.isnan(diff) else diff)  # max() would drop a NaN
            same = got.argmax(-1) == expected.argmax(-1)
            agree, positions = agree + int(same.sum()), positions + int(same.numel())
            if not bool(same[-1]):
                ends_equal = False
                lead = expected[-1].topk(2).values
                decisive += int(float(lead[0] - lead[1]) > 2 * tolerance)
    return ExportCheck(loaded_with=loaded_with, prompts=len(reference), positions=positions,
                       max_abs_logit_diff=worst, logit_scale=scale, tolerance=tolerance,
                       greedy_agreement=agree / positions, next_tokens_equal=ends_equal, decisive_flips=decisive,
                       tokenizer_equal=tokenizer_equal)


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

    def prompt_format(self) -> PromptFormat | None:
        """The prompt format of the version the reference points at now."""
        return self.current().prompt_format()

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
