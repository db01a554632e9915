"""OpenAICompatibleGenerator against a real OpenAI-protocol server running as a separate process
(``python -m ragtune.testing.openai_server`` under uvicorn), over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from ragtune.errors import ConfigError, GenerationError, GenerationTimeoutError, ModelError
from ragtune.generate.openai_compat import OpenAICompatibleGenerator, iter_sse_data
from ragtune.models import Message

KEY = "sk-ragtune-test-7f3a9c2e51"
MESSAGES = [Message("system", "Repeat after me."), Message("user", "the quick brown fox jumps")]
WORDS = ["the ", "quick ", "brown ", "fox ", "jumps"]
PROMPT_WORDS = 3 + 5  # EchoGenerator counts words as tokens


@dataclass
class Server:
    proc: subprocess.Popen[str]
    root: str  # http://127.0.0.1:PORT

    @property
    def api(self) -> str:
        return f"{self.root}/v1"

    def stats(self) -> dict[str, int]:
        return httpx.get(f"{self.root}/ragtune/stats", timeout=10).json()

    def client(self, model: str = "echo", **options: Any) -> OpenAICompatibleGenerator:
        options.setdefault("api_key", KEY)
        options.setdefault("timeout", 30)
        options.setdefault("backoff", 0.05)
        return OpenAICompatibleGenerator(self.api, model, **options)


@contextmanager
def openai_server(*args: str, startup_timeout: float = 60.0) -> Iterator[Server]:
    """Start the server process, wait for its ``listening on`` line, kill it at the end."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryFile(mode="w+") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "ragtune.testing.openai_server", "--port", "0", *args],
                                stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        lines: queue.Queue[str | None] = queue.Queue()

        def drain() -> None:  # keeps the pipe from filling up, and hands us the first line
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=drain, daemon=True).start()
        try:
            try:
                line = lines.get(timeout=startup_timeout)
            except queue.Empty:
                line = None
            match = re.search(r"listening on (http://\S+)", line or "")
            if match is None:
                stderr.seek(0)
                pytest.fail(f"the server did not start (first line {line!r}); stderr:\n{stderr.read()[-3000:]}")
            yield Server(proc, match.group(1))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture(scope="module")
def echo_server() -> Iterator[Server]:
    with openai_server("--api-key", KEY) as server:
        yield server


@pytest.fixture(scope="module")
def slow_server() -> Iterator[Server]:
    """0.4 s per token, with keep-alive comments in between."""
    with openai_server("--api-key", KEY, "--token-delay", "0.4", "--keepalive", "0.1") as server:
        yield server


@pytest.fixture(scope="module")
def late_server() -> Iterator[Server]:
    """Waits 3 s before answering anything."""
    with openai_server("--api-key", KEY, "--delay", "3") as server:
        yield server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- construction ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "named"), [
    ({"base_url": "localhost:8000/v1"}, "localhost:8000/v1"),
    ({"model": " "}, "model"),
    ({"timeout": 0}, "timeout=0"),
    ({"retries": -1}, "retries=-1"),
    ({"backoff": -0.5}, "backoff=-0.5"),
])
def test_constructor_rejects_bad_values_naming_them(kwargs: dict[str, Any], named: str) -> None:
    args = {"base_url": "http://127.0.0.1:1/v1", "model": "m", **kwargs}
    with pytest.raises(ConfigError, match=re.escape(named)):
        OpenAICompatibleGenerator(**args)


def test_repr_and_name_hide_the_key() -> None:
    gen = OpenAICompatibleGenerator("http://127.0.0.1:1/v1/", "some-model", api_key=KEY)
    assert gen.name == "some-model"
    assert gen.base_url == "http://127.0.0.1:1/v1"
    assert KEY not in repr(gen)


# -- the SSE decoder, on the shapes real servers send ------------------------------------------------
@pytest.mark.parametrize(("lines", "payloads"), [
    (['data: {"a":1}', "", "data: [DONE]", ""], ['{"a":1}', "[DONE]"]),
    (['data:{"a":1}', ""], ['{"a":1}']),  # no space after the colon
    ([": keep-alive", "", "event: message", "id: 7", 'data: {"a":1}', ""], ['{"a":1}']),
    (['data: {"a":', "data: 1}", ""], ['{"a":\n1}']),  # one event over two data lines
    (['data: {"a":1}', 'data: {"b":2}', "data: [DONE]"], ['{"a":1}', '{"b":2}', "[DONE]"]),  # no blank lines
    (['data: {"a":1}\r', "\r", ": OPENROUTER PROCESSING", ""], ['{"a":1}']),
])
def test_sse_decoder(lines: list[str], payloads: list[str]) -> None:
    assert list(iter_sse_data(lines)) == payloads


# -- protocol, against the echo server -------------------------------------------------------------
def test_lists_and_checks_models(echo_server: Server) -> None:
    gen = echo_server.client()
    assert gen.list_models() == ["echo"]
    gen.check_model()


def test_non_streaming(echo_server: Server) -> None:
    completion = echo_server.client().generate(MESSAGES)
    assert completion.text == "".join(WORDS)
    assert (completion.prompt_tokens, completion.completion_tokens) == (PROMPT_WORDS, len(WORDS))
    assert completion.finish_reason == "stop"
    assert completion.model == "echo"
    assert completion.seconds > 0


def test_streaming_tokens_in_order_with_usage(echo_server: Server) -> None:
    pieces: list[str] = []
    completion = echo_server.client().generate(MESSAGES, on_token=pieces.append)
    assert pieces == WORDS
    assert completion.text == "".join(pieces)
    assert (completion.prompt_tokens, completion.completion_tokens) == (PROMPT_WORDS, len(WORDS))
    assert completion.finish_reason == "stop"


@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_ends_with_length(echo_server: Server, stream: bool) -> None:
    pieces: list[str] = []
    completion = echo_server.client().generate(MESSAGES, max_tokens=2, on_token=pieces.append if stream else None)
    assert completion.text == "the quick "
    assert completion.finish_reason == "length"
    assert completion.completion_tokens == 2


def test_streaming_without_usage_reports_zero_tokens(echo_server: Server) -> None:
    pieces: list[str] = []
    completion = echo_server.client(include_usage=False).generate(MESSAGES, on_token=pieces.append)
    assert completion.text == "".join(WORDS) == "".join(pieces)
    assert (completion.prompt_tokens, completion.completion_tokens) == (0, 0)  # not reported, not guessed


def test_server_streams_the_exact_openai_chunk_format(echo_server: Server) -> None:
    body = {"model": "echo", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "hello world"}]}
    with httpx.stream("POST", f"{echo_server.api}/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {KEY}"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = list(response.iter_lines())
    assert lines[0].startswith(":")  # a comment, as some proxies send
    events = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"]["content"] for c in chunks[1:3]] == ["hello ", "world"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:3])
    assert chunks[3]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert chunks[4]["choices"] == []
    assert chunks[4]["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}


def test_a_4xx_is_not_retried(echo_server: Server) -> None:
    before = echo_server.stats()["chat_requests"]
    with pytest.raises(GenerationError, match="HTTP 400") as info:
        echo_server.client(retries=3).generate([Message("robot", "hi")])
    assert "role" in str(info.value)
    assert echo_server.stats()["chat_requests"] == before + 1


def test_unknown_model_is_named(echo_server: Server) -> None:
    gen = echo_server.client("no-such-model")
    with pytest.raises(ModelError, match=r"'no-such-model'.*'echo'"):
        gen.generate(MESSAGES)
    with pytest.raises(ModelError, match=r"'no-such-model'.*'echo'"):
        gen.generate(MESSAGES, on_token=lambda piece: None)
    with pytest.raises(ModelError, match="'no-such-model'"):
        gen.check_model()


def test_a_base_url_without_the_api_root_says_so(echo_server: Server) -> None:
    gen = OpenAICompatibleGenerator(echo_server.root, "echo", api_key=KEY, timeout=30)
    with pytest.raises(GenerationError, match=r"404.*/v1"):
        gen.generate(MESSAGES)


# -- authentication ------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["wrong-secret-4242", None])
def test_refused_key_names_the_variable_not_the_key(echo_server: Server, key: str | None,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    env = "RAGTUNE_TEST_OPENAI_KEY"
    if key is None:
        monkeypatch.delenv(env, raising=False)
    else:
        monkeypatch.setenv(env, key)
    gen = OpenAICompatibleGenerator(echo_server.api, "echo", api_key_env=env, timeout=30, retries=2)
    caplog.set_level(logging.DEBUG)
    for call in (lambda: gen.generate(MESSAGES), lambda: gen.generate(MESSAGES, on_token=print), gen.list_models):
        with pytest.raises(GenerationError, match="HTTP 401") as info:
            call()
        message = str(info.value)
        assert env in message
        assert ("is not set" in message) == (key is None)
        if key is not None:
            assert key not in message
    if key is not None:
        assert key not in caplog.text
    assert echo_server.stats()["requests"] > 0


def test_a_key_echoed_by_a_server_is_scrubbed(echo_server: Server) -> None:
    gen = echo_server.client(api_key="wrong-secret-4242")
    assert gen._redact("Incorrect API key provided: wrong-secret-4242.") == "Incorrect API key provided: ***."


# -- unreachable, retries, timeouts ----------------------------------------------------------------
def test_unreachable_endpoint_names_the_url_and_how_to_configure() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    gen = OpenAICompatibleGenerator(url, "echo", retries=1, backoff=0.01, timeout=10)
    for call in (lambda: gen.generate(MESSAGES), gen.list_models):
        with pytest.raises(GenerationError) as info:
            call()
        message = str(info.value)
        assert url in message
        assert "RAGTUNE_GENERATION_OPENAI_BASE_URL" in message and "[generation] openai_base_url" in message
        assert "OPENAI_API_KEY" in message
        assert "2 attempts" in message


def test_503s_are_retried_until_success() -> None:
    with openai_server("--api-key", KEY, "--fail-first", "2") as server:
        pieces: list[str] = []
        completion = server.client(retries=2).generate(MESSAGES, on_token=pieces.append)
        assert completion.text == "".join(WORDS) == "".join(pieces)
        assert server.stats()["chat_requests"] == 3


def test_503s_beyond_the_retries_fail() -> None:
    with openai_server("--api-key", KEY, "--fail-first", "2") as server:
        with pytest.raises(GenerationError, match=r"HTTP 503.*2 attempts"):
            server.client(retries=1).generate(MESSAGES)
        assert server.stats()["chat_requests"] == 2


def test_retry_after_is_respected() -> None:
    with openai_server("--api-key", KEY, "--fail-first", "1", "--retry-after", "1") as server:
        started = time.monotonic()
        completion = server.client(retries=1, backoff=0.001).generate(MESSAGES)
        assert time.monotonic() - started >= 0.95
        assert completion.text == "".join(WORDS)


@pytest.mark.parametrize("stream", [False, True])
def test_no_answer_within_the_timeout_raises(late_server: Server, stream: bool) -> None:
    gen = late_server.client(timeout=1.0, retries=2)
    started = time.monotonic()
    with pytest.raises(GenerationTimeoutError) as info:
        gen.generate(MESSAGES, on_token=(lambda piece: None) if stream else None)
    assert time.monotonic() - started < 2.5
    assert f"{late_server.api}/chat/completions" in str(info.value)
    assert "1 s" in str(info.value)


def test_tokens_arrive_while_the_model_generates(slow_server: Server) -> None:
    started = time.monotonic()
    arrivals: list[tuple[float, str]] = []
    completion = slow_server.client().generate(MESSAGES, on_token=lambda p: arrivals.append((time.monotonic(), p)))
    assert [p for _, p in arrivals] == WORDS  # keep-alive comments in between are skipped
    assert completion.text == "".join(WORDS)
    # five tokens 0.4 s apart: the first arrives long before the last
    assert arrivals[0][0] - started < arrivals[-1][0] - started - 1.0


def test_a_timeout_mid_stream_returns_the_partial_text(slow_server: Server) -> None:
    pieces: list[str] = []
    started = time.monotonic()
    completion = slow_server.client(timeout=1.0).generate(MESSAGES, on_token=pieces.append)
    assert time.monotonic() - started < 2.5
    assert completion.finish_reason == "timeout"
    assert pieces and completion.text == "".join(pieces)
    assert "".join(WORDS).startswith(completion.text) and completion.text != "".join(WORDS)


def test_a_generator_failing_mid_stream_returns_the_partial_text() -> None:
    with openai_server("--api-key", KEY, "--fail-after", "2") as server:
        pieces: list[str] = []
        completion = server.client().generate(MESSAGES, on_token=pieces.append)
        assert completion.finish_reason == "error"
        assert pieces == WORDS[:2] and completion.text == "the quick "
        with pytest.raises(GenerationError, match=r"HTTP 500.*failing after 2 tokens.*2 attempts"):
            server.client(retries=1).generate(MESSAGES)  # a 500 before any text: retried, then raised
        assert server.stats()["chat_requests"] == 3


# -- the real local model behind the server ---------------------------------------------------------
@pytest.mark.slow
def test_streams_an_answer_from_the_local_smollm2_through_the_server() -> None:
    from ragtune.settings import Settings

    cache = str(Settings().resolved_cache_dir)
    with openai_server("--generator", "smollm2", "--cache-dir", cache, startup_timeout=600) as server:
        gen = OpenAICompatibleGenerator(server.api, "smollm2-135m-instruct", timeout=300)
        gen.check_model()
        pieces: list[str] = []
        completion = gen.generate([Message("user", "What is the capital of France? Answer in one sentence.")],
                                  max_tokens=24, on_token=pieces.append)
    assert completion.text.strip()
    assert len(pieces) > 1
    assert "".join(pieces) == completion.text
    assert completion.prompt_tokens > 0
    assert 0 < completion.completion_tokens <= 24
    assert completion.finish_reason in ("stop", "length")
    assert completion.model == "smollm2-135m-instruct"
