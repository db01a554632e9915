"""Generation through any OpenAI-compatible chat endpoint (vLLM, llama.cpp server, Ollama, OpenAI),
spoken over plain httpx: ``POST {base_url}/chat/completions`` and ``GET {base_url}/models``.

Concessions and conventions, stated once:

* **Usage.** Streamed requests ask for ``stream_options: {"include_usage": true}``; a server that
  rejects that field (HTTP 400 naming it) is asked again without it. When a server reports no usage
  the token counts stay 0, meaning *not reported*; nothing is estimated.
* **Time.** ``timeout`` is the deadline of one ``generate`` call, retries and back-off included, and
  also the default read timeout (the longest silence tolerated from the server). The deadline is
  checked between streamed lines, so a stalled read can overrun it by at most ``read_timeout``.
  A timeout before any text arrived raises :class:`GenerationTimeoutError`; once streamed text has
  arrived (and was handed to ``on_token``), the call returns a :class:`Completion` with
  ``finish_reason="timeout"`` and that partial text instead. Likewise a stream that breaks off or
  reports an error after text arrived returns the partial text with ``finish_reason="error"``.
* **Retries.** Connection failures, HTTP 429 and 5xx are retried up to ``retries`` times with
  exponential back-off and jitter, honouring ``Retry-After`` (or ``retry-after-ms``). Other 4xx are
  never retried, and nothing is retried once a successful response has started.
* **Secrets.** The API key is only ever sent in the ``Authorization`` header; it is scrubbed from
  every message this module raises or logs, including text echoed back by the server.
* ``seconds`` in the returned completion is the time of the successful attempt (request to last byte).
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import httpx

from ragtune.errors import ConfigError, GenerationError, GenerationTimeoutError, ModelError
from ragtune.models import Completion, Message

log = logging.getLogger(__name__)

_RETRY_STATUS = frozenset({429}) | frozenset(range(500, 600))
_FINISH_ALIASES = {"eos": "stop", "eos_token": "stop", "stop_sequence": "stop", "max_tokens": "length"}


class OpenAICompatibleGenerator:
    """A :class:`~ragtune.protocols.Generator` backed by an OpenAI-compatible HTTP server.

    ``api_key`` wins over the environment variable named by ``api_key_env``; with neither, requests
    go out without ``Authorization`` (local servers usually need none). ``temperature=None`` leaves
    the server default; the default 0.0 keeps answers reproducible like the local generator.
    """

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", timeout: float = 120.0, connect_timeout: float = 10.0,
                 read_timeout: float | None = None, retries: int = 2, backoff: float = 0.5,
                 max_backoff: float = 30.0, temperature: float | None = 0.0,
                 extra_headers: Mapping[str, str] | None = None, include_usage: bool = True) -> None:
        base = (base_url or "").strip().rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise ConfigError(f"openai_base_url must be an http:// or https:// URL, got {base_url!r}")
        if not model or not model.strip():
            raise ConfigError(f"an OpenAI-compatible generator needs a model name, got {model!r}")
        checks = [("timeout", timeout, timeout > 0), ("connect_timeout", connect_timeout, connect_timeout > 0),
                  ("read_timeout", read_timeout, read_timeout is None or read_timeout > 0),
                  ("retries", retries, 0 <= retries <= 10), ("backoff", backoff, backoff >= 0),
                  ("max_backoff", max_backoff, max_backoff >= 0)]
        for name, value, ok in checks:
            if not ok:
                raise ConfigError(f"invalid {name}={value!r} for the OpenAI-compatible generator")
        self.base_url = base
        self.model = model.strip()
        self.name = self.model
        self.api_key_env = api_key_env
        self._key_from_env = api_key is None
        self._api_key = api_key if api_key is not None else (os.environ.get(api_key_env) or None)
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout) if read_timeout is not None else float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.temperature = temperature
        self.include_usage = include_usage
        self._extra_headers = dict(extra_headers or {})
        self._client: httpx.Client | None = None
        self._client_lock = threading.Lock()

    def __repr__(self) -> str:  # never the key
        return f"OpenAICompatibleGenerator(base_url={self.base_url!r}, model={self.model!r})"

    # -- plumbing ------------------------------------------------------------------------------
    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    headers = {"Accept": "application/json", "User-Agent": "ragtune", **self._extra_headers}
                    if self._api_key:
                        headers["Authorization"] = f"Bearer {self._api_key}"
                    self._client = httpx.Client(headers=headers)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> OpenAICompatibleGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _redact(self, text: str) -> str:
        if self._api_key and len(self._api_key) >= 4:
            text = text.replace(self._api_key, "***")
        return text

    def _how_to_configure(self) -> str:
        return ("set [generation] openai_base_url in ragtune.toml (or RAGTUNE_GENERATION_OPENAI_BASE_URL) to the "
                "server's API root, e.g. http://127.0.0.1:8000/v1 for vLLM or http://127.0.0.1:11434/v1 for Ollama, "
                f"and put its API key, if it needs one, in the environment variable {self.api_key_env} "
                "([generation] openai_api_key_env)")

    def _auth_hint(self) -> str:
        if not self._key_from_env:
            return "check the api_key given to OpenAICompatibleGenerator"
        if not self._api_key:
            return f"no API key was sent: the environment variable {self.api_key_env} is not set"
        return f"check the API key in the environment variable {self.api_key_env}"

    def _timeout(self, deadline: float) -> httpx.Timeout:
        remaining = max(0.001, deadline - time.monotonic())
        return httpx.Timeout(connect=min(self.connect_timeout, remaining), read=min(self.read_timeout, remaining),
                             write=min(self.read_timeout, remaining), pool=min(self.connect_timeout, remaining))

    def _send(self, method: str, path: str, *, body: dict[str, Any] | None, deadline: float) -> httpx.Response:
        """One logical request with bounded retries; returns an open 2xx response (the caller closes it)."""
        url = f"{self.base_url}{path}"
        attempt = 0
        while True:
            timeout = self._timeout(deadline)
            request = self.client.build_request(method, url, json=body, timeout=timeout)
            retry_after: float | None = None
            try:
                response = self.client.send(request, stream=True)
            except (httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                failure = f"connection timed out after {timeout.connect:.3g} s ({type(exc).__name__})"
                unreachable = True
            except httpx.TimeoutException as exc:
                raise GenerationTimeoutError(
                    f"{url} gave no response within the read timeout of {timeout.read:.3g} s "
                    f"(model {self.model!r}; raise [generation] timeout for slow servers)") from exc
            except httpx.TransportError as exc:
                failure = self._redact(f"{type(exc).__name__}: {exc}")
                unreachable = True
            else:
                if response.status_code < 400:
                    return response
                if response.status_code not in _RETRY_STATUS:
                    if (response.status_code == 400 and body is not None and "stream_options" in body
                            and "stream_options" in _server_message(response)):
                        response.close()
                        log.info("%s does not accept stream_options; asking again without usage", url)
                        body = {k: v for k, v in body.items() if k != "stream_options"}
                        continue
                    self._raise_for_status(response, path, deadline)
                retry_after = _retry_after(response.headers)
                failure = f"HTTP {response.status_code}: {self._redact(_server_message(response))}"
                unreachable = False
                response.close()
            if attempt >= self.retries:
                raise self._give_up(url, failure, attempt + 1, unreachable)
            wait = retry_after if retry_after is not None else self._backoff(attempt)
            if time.monotonic() + wait >= deadline:
                raise self._give_up(url, f"{failure}; the next retry (in {wait:.3g} s) would pass the "
                                         f"{self.timeout:.3g} s deadline", attempt + 1, unreachable)
            attempt += 1
            log.warning("%s %s failed (%s); retry %d of %d in %.2f s", method, url, failure, attempt,
                        self.retries, wait)
            time.sleep(wait)

    def _backoff(self, attempt: int) -> float:
        cap = min(self.max_backoff, self.backoff * (2 ** attempt))
        return cap / 2 + random.uniform(0, cap / 2)  # "equal jitter": never zero, never synchronised

    def _give_up(self, url: str, failure: str, attempts: int, unreachable: bool) -> GenerationError:
        tried = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        if unreachable:
            return GenerationError(f"cannot reach the OpenAI-compatible endpoint {self.base_url} ({url}: {failure}; "
                                   f"{tried}). Is the server running? {self._how_to_configure()}")
        return GenerationError(f"{url} kept failing for model {self.model!r} ({failure}; {tried})")

    def _raise_for_status(self, response: httpx.Response, path: str, deadline: float) -> None:
        status, url = response.status_code, str(response.request.url)
        message = self._redact(_server_message(response))
        response.close()
        if status in (401, 403):
            raise GenerationError(f"{url} refused the credentials (HTTP {status}: {message}); {self._auth_hint()}")
        if status == 404 and path == "/chat/completions":
            models = self._try_list_models(deadline)
            if models is not None and self.model not in models:
                raise ModelError(f"unknown model {self.model!r} at {self.base_url}; it serves: "
                                 f"{_preview(models)}")
            if models is None and "model" in message.lower():
                raise ModelError(f"model {self.model!r} not found at {self.base_url} ({message})")
        if status == 404:
            raise GenerationError(f"{url} answered HTTP 404 ({message}); is {self.base_url} the API root "
                                  f"(usually ending in /v1)? {self._how_to_configure()}")
        raise GenerationError(f"{url} rejected the request for model {self.model!r} (HTTP {status}: {message})")

    # -- models --------------------------------------------------------------------------------
    def list_models(self) -> list[str]:
        """The model ids the server offers (``GET /models``)."""
        return self._list_models(time.monotonic() + self.timeout)

    def _list_models(self, deadline: float) -> list[str]:
        response = self._send("GET", "/models", body=None, deadline=deadline)
        url = str(response.request.url)
        try:
            data = _read_json(response, url)
        finally:
            response.close()
        items = data.get("data") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise GenerationError(f"{url} did not return a model list (no 'data' array)")
        return [str(item.get("id")) for item in items if isinstance(item, dict) and item.get("id")]

    def check_model(self) -> None:
        """Raise :class:`ModelError` naming the model and what is served if the server lacks it."""
        models = self.list_models()
        if self.model not in models:
            raise ModelError(f"unknown model {self.model!r} at {self.base_url}; it serves: {_preview(models)}")

    def _try_list_models(self, deadline: float) -> list[str] | None:
        if deadline - time.monotonic() <= 0:
            return None
        try:
            return self._list_models(deadline)
        except GenerationError:
            return None

    # -- generation ----------------------------------------------------------------------------
    def generate(self, messages: Sequence[Message], *, max_tokens: int = 256,
                 on_token: Callable[[str], None] | None = None) -> Completion:
        if max_tokens < 1:
            raise ConfigError(f"max_tokens must be at least 1, got {max_tokens}")
        deadline = time.monotonic() + self.timeout
        stream = on_token is not None
        body: dict[str, Any] = {"model": self.model, "max_tokens": int(max_tokens), "stream": stream,
                                "messages": [{"role": m.role, "content": m.content} for m in messages]}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if stream and self.include_usage:
            body["stream_options"] = {"include_usage": True}
        response = self._send("POST", "/chat/completions", body=body, deadline=deadline)
        started = time.monotonic()
        if on_token is None:
            return self._read_completion(response, started)
        if response.headers.get("content-type", "").startswith("application/json"):
            completion = self._read_completion(response, started)  # a server that ignores "stream"
            if completion.text:
                on_token(completion.text)
            return completion
        return self._read_stream(response, on_token, started, deadline)

    def _read_completion(self, response: httpx.Response, started: float) -> Completion:
        url = str(response.request.url)
        try:
            data = _read_json(response, url, self.read_timeout)
        finally:
            response.close()
        choices = data.get("choices") if isinstance(data, dict) else None
        if not choices or not isinstance(choices[0], dict):
            if isinstance(data, dict) and data.get("error"):
                raise GenerationError(f"{url} reported an error: {self._redact(_error_text(data['error']))}")
            raise GenerationError(f"{url} returned no choices for model {self.model!r}")
        choice = choices[0]
        message = choice.get("message") or {}
        prompt_tokens, completion_tokens = _usage(data.get("usage"))
        return Completion(text=_content_text(message.get("content")), model=str(data.get("model") or self.model),
                          prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                          seconds=time.monotonic() - started, finish_reason=_finish(choice.get("finish_reason")))

    def _read_stream(self, response: httpx.Response, on_token: Callable[[str], None], started: float,
                     deadline: float) -> Completion:
        url = str(response.request.url)
        pieces: list[str] = []
        finish: str | None = None
        usage: Any = None
        model = self.model
        problem: str | None = None  # why the stream ended early
        timed_out = False
        events = SSEDecoder()
        try:
            for line in response.iter_lines():
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                for data in events.feed(line):
                    if data == "[DONE]":
                        finish = finish or "stop"
                        raise _StreamDone
                    try:
                        chunk = _parse_chunk(data)
                    except GenerationError as exc:
                        problem = str(exc)
                        raise _StreamDone from None
                    if chunk.get("error"):
                        problem = f"the server reported an error mid-stream: {_error_text(chunk['error'])}"
                        raise _StreamDone
                    if isinstance(chunk.get("usage"), dict):
                        usage = chunk["usage"]
                    model = str(chunk.get("model") or model)
                    for choice in chunk.get("choices") or ():
                        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                            continue
                        content = (choice.get("delta") or {}).get("content")
                        if isinstance(content, str) and content:
                            pieces.append(content)
                            on_token(content)
                        if choice.get("finish_reason"):
                            finish = _finish(choice["finish_reason"])
        except _StreamDone:
            pass
        except httpx.TimeoutException:
            timed_out = True
        except httpx.TransportError as exc:
            problem = f"the stream broke off ({type(exc).__name__}: {exc})"
        finally:
            response.close()
        text = "".join(pieces)
        seconds = time.monotonic() - started
        if timed_out:
            if not pieces:
                raise GenerationTimeoutError(f"{url} streamed no text for model {self.model!r} within the "
                                             f"{self.timeout:.3g} s timeout (read timeout {self.read_timeout:.3g} s)")
            log.warning("%s: timed out after %.1f s; returning %d streamed characters", url, seconds, len(text))
            finish = "timeout"
        elif problem is not None:
            problem = self._redact(problem)
            if not pieces:
                raise GenerationError(f"{url}: {problem} (model {self.model!r})")
            log.warning("%s: %s; returning %d streamed characters", url, problem, len(text))
            finish = "error"
        prompt_tokens, completion_tokens = _usage(usage)
        return Completion(text=text, model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                          seconds=seconds, finish_reason=finish or "stop")


class _StreamDone(Exception):
    """Internal: leave the SSE loop (``[DONE]`` or an error event)."""


class SSEDecoder:
    """Server-sent events to their ``data`` payloads, line by line.

    Comment lines (``:``, keep-alives) and ``event:``/``id:``/``retry:`` fields are skipped; several
    ``data:`` lines form one payload. Servers that omit the blank line between events still work:
    a payload is emitted as soon as the collected data is a complete JSON value or ``[DONE]``.
    """

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> Iterator[str]:
        line = line.rstrip("\r\n")
        if not line:
            yield from self.flush()
            return
        if line.startswith(":"):
            return
        field, sep, value = line.partition(":")
        if field != "data":
            return
        if sep and value.startswith(" "):
            value = value[1:]
        self._data.append(value)
        payload = "\n".join(self._data)
        if payload.strip() == "[DONE]" or _is_json(payload):
            self._data.clear()
            yield payload.strip()

    def flush(self) -> Iterator[str]:
        if self._data:
            payload = "\n".join(self._data).strip()
            self._data.clear()
            if payload:
                yield payload


def iter_sse_data(lines: Iterable[str]) -> Iterator[str]:
    """Every ``data`` payload in ``lines`` (see :class:`SSEDecoder`)."""
    decoder = SSEDecoder()
    for line in lines:
        yield from decoder.feed(line)
    yield from decoder.flush()


# -- small parsing helpers -----------------------------------------------------------------------
def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _parse_chunk(data: str) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except ValueError as exc:
        raise GenerationError(f"the server streamed an event that is not JSON: {data[:200]!r}") from exc
    return chunk if isinstance(chunk, dict) else {}


def _read_json(response: httpx.Response, url: str, read_timeout: float | None = None) -> Any:
    try:
        response.read()
    except httpx.TimeoutException as exc:
        limit = f" of {read_timeout:.3g} s" if read_timeout else ""
        raise GenerationTimeoutError(f"{url} did not finish its answer within the read timeout{limit}") from exc
    except httpx.TransportError as exc:
        raise GenerationError(f"{url}: the response broke off ({type(exc).__name__}: {exc})") from exc
    try:
        return response.json()
    except ValueError as exc:
        raise GenerationError(f"{url} did not answer with JSON: {response.text[:200]!r}") from exc


def _server_message(response: httpx.Response) -> str:
    """The error text a server sent (OpenAI ``{"error": {"message"}}``, FastAPI ``detail``, or raw text)."""
    try:
        response.read()
    except httpx.HTTPError:
        return f"HTTP {response.status_code}"
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    if isinstance(data, dict):
        for key in ("error", "detail", "message"):
            if data.get(key):
                return _error_text(data[key])[:300]
    return json.dumps(data)[:300]


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error.get("detail") or json.dumps(error))
    return str(error)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _finish(reason: Any) -> str:
    if not reason:
        return "stop"
    return _FINISH_ALIASES.get(str(reason), str(reason))


def _usage(usage: Any) -> tuple[int, int]:
    if not isinstance(usage, dict):
        return 0, 0
    return _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))


def _int(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def _retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait from ``retry-after-ms``, or ``Retry-After`` (seconds or an HTTP date)."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _preview(names: list[str], limit: int = 20) -> str:
    if not names:
        return "(no models)"
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
