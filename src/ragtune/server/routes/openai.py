"""OpenAI-compatible endpoints: the official clients work against ``/v1`` unchanged.

* ``POST /v1/chat/completions`` answers the last user message with retrieval over a collection.
  ``model`` names the model: a generator the server serves (``GET /v1/models``; the rule is in
  ``ragtune.server.generators``), e.g. ``registry:acme@production``, with the collection in the
  extra body field ``collection`` (default: the default collection), or both at once as
  ``MODEL+kb:COLLECTION`` (``registry:acme@production+kb:acmekb``). As before, ``ragtune`` means the
  configured generator, and any other name is taken for a collection's (the generator then comes
  from the extra field ``generator``, default the configured one). A served generator's spec wins
  over a collection of the same name; a name that is neither is a 404 that names it. The response's
  ``model`` is the request's (for ``ragtune``, the collection, as before). The cited sources come
  back in the extra field ``sources`` (in the last chunk when streaming), and ``ragtune`` holds the
  trace id, abstention, groundedness, the collection and the ``lineage`` of the answer (generator
  spec, base model, adapter with its registry version and content hash). Extra fields ``top_k``,
  ``mode``, ``filters``, ``generator``, ``rerank`` and ``answerability`` work as in
  ``/collections/{c}/ask``.
* ``POST /v1/embeddings`` embeds with the server's embedder (``model``: its name or ``ragtune``),
  as floats or base64 (little-endian float32, what the Python client asks for by default).
* ``GET /v1/models`` lists, told apart by ``ragtune_kind``: the generators a request may choose
  (``generator``: the configured one first, with ``ragtune_default``; a registered model's entry
  also has ``ragtune_registry``, the version its alias points at now and its adapter's hash), the
  collections the caller may read (``collection``) and the embedder (``embedder``).

The last user message is the question; the messages before it are the conversation it follows up,
which retrieval reads it by (``[retrieval] conversation``, as ``history`` in ``/collections/{c}/ask``;
tool calls and results are left out, a ``developer`` message counts as a system one). Concessions:
the prompt is ragtune's numbered-sources prompt, so earlier turns and system messages do not reach
the generator; one choice (``n=1``); sampling parameters are accepted and ignored; token arrays as
embedding input are not accepted.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import numpy as np
from anyio import to_thread
from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ragtune.errors import LimitError, NotFoundError, QueryError, RagtuneError
from ragtune.models import Answer, Message
from ragtune.protocols import DescribesLineage
from ragtune.server.auth import Caller
from ragtune.server.deps import Reader, ServerState, State
from ragtune.server.generators import REGISTRY, find_served, model_key, served_generator, served_specs
from ragtune.server.problems import problem_payload
from ragtune.server.routes.ask import check_max_tokens
from ragtune.server.schemas import ANSWERABILITY, RERANK, Filters, to_filters
from ragtune.server.streaming import sse, stream_tokens

router = APIRouter(prefix="/v1", tags=["openai"])
DEFAULT_MODEL = "ragtune"
KB = "+kb:"  # MODEL+kb:COLLECTION
_MAX_INPUT_CHARS = 100_000


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str = Field(max_length=50)
    content: str | list[dict[str, Any]] | None = None


class ChatIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessage] = Field(min_length=1, max_length=200)
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int | None = None
    # ragtune's extra fields
    collection: str | None = Field(default=None, max_length=200)
    top_k: int | None = None
    mode: Literal["dense", "bm25", "hybrid"] | None = None
    filters: Filters | None = None
    generator: str | None = Field(default=None, max_length=200)
    rerank: bool | None = Field(default=None, description=RERANK)
    answerability: bool | None = Field(default=None, description=ANSWERABILITY)


class EmbeddingsIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    input: str | list[str]
    model: str = Field(min_length=1, max_length=200)
    encoding_format: Literal["float", "base64"] | None = "float"
    dimensions: int | None = None


def _text(content: str | list[dict[str, Any]] | None) -> str:
    if isinstance(content, list):  # content parts: keep the text ones
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content or ""


def _question(body: ChatIn) -> str:
    for message in reversed(body.messages):
        if message.role == "user":
            text = _text(message.content).strip()
            if text:
                return text[:4000]
    raise QueryError("messages hold no user message with text to answer")


def _history(body: ChatIn) -> list[Message] | None:
    """The messages before the question (the last user message with text), as the conversation so
    far; None when there are none."""
    last = max(i for i, m in enumerate(body.messages) if m.role == "user" and _text(m.content).strip())
    turns = []
    for message in body.messages[:last]:
        role = "system" if message.role == "developer" else message.role
        text = _text(message.content).strip()
        if role in ("system", "user", "assistant") and text:  # not tool calls and their results
            turns.append(Message(role, text))
    return turns or None


def _target(state: ServerState, body: ChatIn) -> tuple[str, str, bool]:
    """The generator spec and the collection the request names, and whether the collection came
    from ``model`` taken as a collection's name (the old form)."""
    model, kb = body.model.strip(), None
    if KB in model:
        model, kb = (part.strip() for part in model.rsplit(KB, 1))
        if not kb:
            raise QueryError(f"model {body.model!r} names no collection after {KB!r}")
    if kb is not None and body.collection and kb != body.collection:
        raise QueryError(f"model {body.model!r} names collection {kb!r} and the field collection names "
                         f"{body.collection!r}: name it once")
    collection = kb or body.collection
    if model in ("", DEFAULT_MODEL):
        return served_generator(state, body.generator), collection or state.settings.default_collection, False
    spec = find_served(state.settings, model)
    if spec is not None:
        if body.generator and find_served(state.settings, body.generator) != spec:
            raise QueryError(f"model {model!r} and generator {body.generator!r} name different generators: "
                             "name it once")
        return spec, collection or state.settings.default_collection, False
    if kb is not None or ":" in model:  # no collection's name has a ':'
        raise NotFoundError(f"model {model!r} is not served here; GET /v1/models lists the served ones "
                            "(an operator serves more with server.generators)")
    return served_generator(state, body.generator), collection or model, collection is None


def _chat_call(state: ServerState, body: ChatIn, caller: Caller) -> tuple[str, str, Callable[..., Answer]]:
    """Validate everything that can be refused before answering; the response's ``model``, the
    collection and the call that answers."""
    if body.n not in (None, 1):
        raise QueryError(f"only n=1 is supported, got n={body.n}")
    generator, collection, by_model = _target(state, body)
    state.check_top_k(body.top_k)
    max_tokens = body.max_completion_tokens or body.max_tokens
    check_max_tokens(state, max_tokens)
    question = _question(body)
    history = _history(body)
    filters = to_filters(body.filters)
    try:
        state.engine.visible_collection(collection, caller.principal)  # 404 before any streaming
    except (NotFoundError, QueryError) as exc:
        if not by_model:
            raise
        # the same words for a collection that is hidden from the caller as for one that does not exist
        raise NotFoundError(f"no collection named {collection!r}, and no model of that name is served here; "
                            "GET /v1/models lists both") from exc

    def call(on_token: Callable[[str], None] | None) -> Answer:
        answer: Answer = state.engine.ask(question, collection=collection, top_k=body.top_k, mode=body.mode,
                                          filters=filters, principal=caller.principal, max_tokens=max_tokens,
                                          generator=generator, on_token=on_token, reranker=body.rerank,
                                          answerability=body.answerability, history=history)
        return answer

    return (collection if body.model.strip() == DEFAULT_MODEL else body.model), collection, call


def _sources(answer: Answer) -> list[dict[str, Any]]:
    return [{"number": c.number, "uri": c.uri, "document_id": c.document_id, "chunk_id": c.chunk_id,
             "start": c.start, "end": c.end, "text": c.text} for c in answer.citations]


def _ragtune(answer: Answer, collection: str) -> dict[str, Any]:
    return {"trace_id": answer.trace_id, "abstained": answer.abstained, "grounded": answer.grounded,
            "generator": answer.model, "error": answer.error, "collection": collection,
            "lineage": None if answer.lineage is None else answer.lineage.to_dict(paths=False)}


def _usage(answer: Answer) -> dict[str, int]:
    prompt = int(answer.usage.get("prompt_tokens", 0))
    completion = int(answer.usage.get("completion_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


@router.post("/chat/completions", summary="OpenAI chat completions, answered with retrieval over a collection",
             responses={200: {"content": {"text/event-stream": {}}}})
async def chat_completions(body: ChatIn, state: State, caller: Reader) -> Any:
    model, collection, call = await to_thread.run_sync(_chat_call, state, body, caller)
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    if body.stream:
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        return StreamingResponse(_chunks(call, completion_id, model, collection, include_usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    answer = await to_thread.run_sync(call, None)
    if answer.trace_id:  # the answer's trace names it: POST /feedback takes this id
        completion_id = f"chatcmpl-{answer.trace_id}"
    return JSONResponse({
        "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": _usage(answer), "sources": _sources(answer), "ragtune": _ragtune(answer, collection),
    })


async def _chunks(call: Callable[..., Answer], completion_id: str, model: str, collection: str,
                  include_usage: bool) -> AsyncIterator[str]:
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        payload: dict[str, Any] = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                                   "model": model, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                                "finish_reason": finish}], **extra}
        if include_usage:
            payload.setdefault("usage", None)
        return sse(payload)

    yield chunk({"role": "assistant", "content": ""})
    streamed = False
    async for kind, value in stream_tokens(call):
        if kind == "token":
            streamed = True
            yield chunk({"content": value})
        elif kind == "done":
            if not streamed and value.text:  # an abstention is not streamed token by token
                yield chunk({"content": value.text})
            yield chunk({}, "stop", sources=_sources(value), ragtune=_ragtune(value, collection))
            if include_usage:
                yield sse({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                           "model": model, "choices": [], "usage": _usage(value)})
        else:
            problem = problem_payload(value)
            yield sse({"error": {"message": problem["detail"], "type": "server_error", "param": None,
                                 "code": problem["code"]}})
    yield "data: [DONE]\n\n"


def _embedder_names(state: ServerState) -> set[str]:
    return {DEFAULT_MODEL, state.settings.ingest.embedder, state.engine.embedder.name}


@router.post("/embeddings", summary="OpenAI embeddings with the server's embedder")
def embeddings(body: EmbeddingsIn, state: State, caller: Reader) -> dict[str, Any]:
    names = _embedder_names(state)
    if body.model not in names:
        raise NotFoundError(f"model {body.model!r} is not an embedder served here; use one of {sorted(names)}")
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    limit = state.settings.server.max_embedding_inputs
    if not texts:
        raise QueryError("input is empty: give a string or a list of strings")
    if len(texts) > limit:
        raise LimitError(f"at most {limit} inputs per request (server.max_embedding_inputs), got {len(texts)}",
                         "max_embedding_inputs")
    long = next((i for i, t in enumerate(texts) if len(t) > _MAX_INPUT_CHARS), None)
    if long is not None:
        raise LimitError(f"input[{long}] is over {_MAX_INPUT_CHARS} characters", "embedding_input_chars")
    embedder = state.engine.embedder
    if body.dimensions is not None and body.dimensions != embedder.dimension:
        raise QueryError(f"dimensions={body.dimensions}: this embedder makes {embedder.dimension}-d vectors only")
    vectors = np.asarray(embedder.embed_batch(texts), dtype=np.float32)
    tokens = _count_tokens(embedder, texts)
    data = []
    for i, vec in enumerate(vectors):
        value: Any = (base64.b64encode(vec.astype("<f4").tobytes()).decode("ascii")
                      if body.encoding_format == "base64" else [float(x) for x in vec])
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {"object": "list", "data": data, "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _count_tokens(embedder: Any, texts: list[str]) -> int:
    """Tokens the embedder read: each text's own, cut at its window, plus [CLS] and [SEP]. Through
    ``count_tokens``, which is safe while other threads embed (a tokenizer's settings are state)."""
    counter = getattr(embedder, "count_tokens", None)
    if counter is None:
        return 0
    window = int(getattr(embedder, "max_seq_length", 0) or 0)
    try:
        counts = [counter(t) + 2 for t in texts]
    except Exception:  # a counter with another interface: usage is informative only
        return 0
    return sum(min(n, window) if window else n for n in counts)


@router.get("/models", summary="The generators a request may choose, the collections the caller may read and "
                               "the embedder")
def list_models(state: State, caller: Reader) -> dict[str, Any]:
    created = int(time.time())

    def entry(model_id: str, kind: str, **extra: Any) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": created, "owned_by": "ragtune", "ragtune_kind": kind,
                **extra}

    configured = model_key(state.settings.generation.generator)
    # a registry reference by what it means (registry:acme -> registry:acme@production): any spelling is taken
    data = [entry(model_key(spec), "generator", ragtune_default=model_key(spec) == configured,
                  **_registered(state, spec)) for spec in served_specs(state.settings)]
    data += [entry(c.name, "collection") for c in state.engine.collections(principal=caller.principal)]
    data.append(entry(state.settings.ingest.embedder, "embedder"))
    return {"object": "list", "data": data}


def _registered(state: ServerState, spec: str) -> dict[str, Any]:
    """For a registry reference, the version it points at now and its adapter's hash (resolved in
    the registry, not loaded); ``error`` says why there is none (no version has the alias yet, the
    registry is not installed ...)."""
    if not spec.startswith(REGISTRY):
        return {}
    try:
        generator = state.engine.generator(spec)  # built once (cheap), loaded only when it answers
        if not isinstance(generator, DescribesLineage):
            return {}
        lineage = generator.lineage()
    except RagtuneError as exc:
        return {"ragtune_registry": {"version": None, "error": str(exc)}}
    adapter = lineage.adapter
    if adapter is None or adapter.registry is None:
        return {}
    name, version = adapter.registry.rsplit("/", 1)
    return {"ragtune_registry": {"name": name, "version": int(version), "alias": adapter.alias,
                                 "run_id": adapter.run_id, "base": lineage.base, "adapter_sha256": adapter.sha256}}
