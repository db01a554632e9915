"""Generation from a GGUF file with llama.cpp, through ``llama-cpp-python`` (optional: it builds
from source, about 12 minutes on 2 cores, and then runs the packaged SmolLM2 GGUF about 5x faster
than transformers).

Concessions: every call streams internally (``create_chat_completion(stream=True)``), so ``on_token``
and ``max_time`` work the same with or without a callback. llama-cpp-python reports no usage for
streamed chat completions: ``completion_tokens`` is counted by tokenising the answer with the
model's own tokenizer, and ``prompt_tokens`` stays 0, meaning *not reported* (the same convention as
:mod:`ragtune.generate.openai_compat`). The model is loaded on first use; one generation runs at a
time per model (a llama.cpp context is not thread-safe).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ragtune.errors import ConfigError, GenerationError, ModelError
from ragtune.extras import check_installed, require
from ragtune.models import Completion, Message

PURPOSE = "llama.cpp generation"


class LlamaCppGenerator:
    """A :class:`~ragtune.protocols.Generator` over ``llama_cpp.Llama``.

    ``max_time`` bounds one generation in seconds; when hit, the completion ends with
    ``finish_reason="timeout"`` and the text so far. ``chat_format=None`` uses the chat template
    stored in the GGUF file.
    """

    def __init__(self, gguf_path: str | Path, *, n_ctx: int = 2048, n_threads: int | None = None,
                 max_time: float | None = None, temperature: float = 0.0, name: str | None = None,
                 chat_format: str | None = None) -> None:
        self.path = Path(gguf_path).expanduser()
        checks = [("n_ctx", n_ctx, n_ctx > 0), ("n_threads", n_threads, n_threads is None or n_threads > 0),
                  ("max_time", max_time, max_time is None or max_time > 0),
                  ("temperature", temperature, temperature >= 0)]
        for key, value, ok in checks:
            if not ok:
                raise ConfigError(f"invalid {key}={value!r} for the llama.cpp generator")
        if not self.path.is_file():
            raise ModelError(f"no GGUF file at {self.path}; set `generator` to 'llamacpp:/path/to/model.gguf'")
        check_installed("llama_cpp", "llamacpp", PURPOSE)
        self.name = name or self.path.stem
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.max_time = max_time
        self.temperature = temperature
        self.chat_format = chat_format
        self._llm: Any = None
        self._lock = threading.Lock()

    @property
    def llm(self) -> Any:
        if self._llm is None:
            llama_cpp = require("llama_cpp", "llamacpp", PURPOSE)
            try:
                self._llm = llama_cpp.Llama(model_path=str(self.path), n_ctx=self.n_ctx, n_threads=self.n_threads,
                                            chat_format=self.chat_format, verbose=False)
            except Exception as exc:
                raise ModelError(f"llama.cpp cannot load {self.path}: {exc}") from exc
        return self._llm

    @property
    def context_window(self) -> int:
        return int(self.llm.n_ctx())

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)) if text else 0

    def generate(self, messages: Sequence[Message], *, max_tokens: int = 256,
                 on_token: Callable[[str], None] | None = None) -> Completion:
        llm = self.llm
        pieces: list[str] = []
        finish: str | None = None
        with self._lock:
            started = time.perf_counter()
            try:
                chunks = iter(llm.create_chat_completion(
                    messages=[{"role": m.role, "content": m.content} for m in messages],
                    max_tokens=max_tokens, temperature=self.temperature, stream=True))
            except ValueError as exc:  # e.g. the prompt does not fit in n_ctx
                raise GenerationError(f"{self.name}: {exc}") from exc
            try:
                while True:
                    try:
                        chunk = next(chunks)
                    except StopIteration:
                        break
                    except (ValueError, RuntimeError) as exc:
                        raise GenerationError(f"{self.name}: llama.cpp failed: {exc}") from exc
                    choice = (chunk.get("choices") or [{}])[0]
                    content = (choice.get("delta") or {}).get("content")
                    if isinstance(content, str) and content:
                        pieces.append(content)
                        if on_token is not None:
                            on_token(content)
                    if choice.get("finish_reason"):
                        finish = str(choice["finish_reason"])
                    if self.max_time and time.perf_counter() - started >= self.max_time and finish is None:
                        finish = "timeout"
                        break
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()  # stops decoding when we leave early
            seconds = time.perf_counter() - started
        text = "".join(pieces)  # exactly what on_token saw, unstripped
        return Completion(text=text, model=self.name, prompt_tokens=0, completion_tokens=self.count_tokens(text),
                          seconds=seconds, finish_reason=finish or "stop")
