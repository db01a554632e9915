"""Real, small stand-ins for tests and demos (no mocks): a deterministic generator here, and in
:mod:`ragtune.testing.openai_server` an OpenAI-protocol server that serves any generator.

Nothing here imports FastAPI; the server module does, and needs ``pip install 'ragtune[server]'``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence

from ragtune.errors import GenerationError
from ragtune.models import Completion, Message

__all__ = ["EchoGenerator"]

_WORD = re.compile(r"\S+\s*")


class EchoGenerator:
    """A deterministic :class:`~ragtune.protocols.Generator`: answers with the last user message,
    one word (with its trailing whitespace) per token. ``max_tokens`` truncates (``finish_reason``
    "length"); ``token_delay_s`` sleeps before each token, to stand in for a slow model;
    ``fail_after=N`` raises :class:`GenerationError` after N tokens, to stand in for a crash.

    Token counts are word counts: the prompt's are the words of all messages.
    """

    def __init__(self, name: str = "echo", *, token_delay_s: float = 0.0, fail_after: int | None = None) -> None:
        if token_delay_s < 0:
            raise ValueError(f"token_delay_s must be >= 0, got {token_delay_s}")
        if fail_after is not None and fail_after < 0:
            raise ValueError(f"fail_after must be >= 0, got {fail_after}")
        self.name = name
        self.token_delay_s = token_delay_s
        self.fail_after = fail_after

    def tokens(self, messages: Sequence[Message]) -> list[str]:
        last = next((m.content for m in reversed(messages) if m.role == "user"), "")
        return _WORD.findall(last.strip())

    def generate(self, messages: Sequence[Message], *, max_tokens: int = 256,
                 on_token: Callable[[str], None] | None = None) -> Completion:
        started = time.perf_counter()
        tokens = self.tokens(messages)
        out = tokens[:max_tokens]
        for i, token in enumerate(out):
            if self.fail_after is not None and i >= self.fail_after:
                raise GenerationError(f"{self.name}: failing after {self.fail_after} tokens, as asked")
            if self.token_delay_s:
                time.sleep(self.token_delay_s)
            if on_token is not None:
                on_token(token)
        prompt_tokens = sum(len(_WORD.findall(m.content)) for m in messages)
        return Completion(text="".join(out), model=self.name, prompt_tokens=prompt_tokens,
                          completion_tokens=len(out), seconds=time.perf_counter() - started,
                          finish_reason="length" if len(tokens) > max_tokens else "stop")
