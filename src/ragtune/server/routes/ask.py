"""Ask a collection: a cited answer (or an abstention), as JSON or streamed as Server-Sent Events.

Streaming (``"stream": true`` or ``Accept: text/event-stream``) sends ``token`` events
(``{"text": ...}``) as the generator writes, then one ``answer`` event with the whole answer
(citations, sentences and their support, sources, trace id), or one ``error`` event holding a
problem object if generation failed after the stream had started.

``generator`` chooses among the generators the server serves (the configured one, ``extractive``,
``reader`` and the setting ``server.generators``; the rule is in ``ragtune.server.generators``).
``lineage`` says which model wrote the answer (the generator spec, the base model, the adapter
with its registry version and content hash), without server folders.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ragtune.errors import LimitError
from ragtune.generate.answer import answer_fields
from ragtune.server.auth import Caller
from ragtune.server.deps import Reader, ServerState, State
from ragtune.server.generators import served_generator
from ragtune.server.problems import problem_payload
from ragtune.server.schemas import AskIn, history_messages, to_filters
from ragtune.server.streaming import sse, stream_tokens

router = APIRouter(tags=["ask"])

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def check_max_tokens(state: ServerState, max_tokens: int | None) -> None:
    limit = state.settings.generation.max_new_tokens
    if max_tokens is not None and not 1 <= max_tokens <= limit:
        raise LimitError(f"max_tokens must be between 1 and {limit} (max_new_tokens), got {max_tokens}",
                         "max_new_tokens")


def ask_call(state: ServerState, collection: str, body: AskIn, caller: Caller
             ) -> Callable[[Callable[[str], None] | None], Any]:
    """Validate everything that can be refused before answering; returns the call that answers."""
    state.check_top_k(body.top_k)
    check_max_tokens(state, body.max_tokens)
    generator = served_generator(state, body.generator)
    filters = to_filters(body.filters)
    # a missing collection, or one holding nothing the caller may read, is a 404, not an error event
    state.engine.visible_collection(collection, caller.principal)

    def call(on_token: Callable[[str], None] | None) -> Any:
        return state.engine.ask(body.question, collection=collection, top_k=body.top_k, mode=body.mode,
                                filters=filters, principal=caller.principal, generator=generator,
                                max_tokens=body.max_tokens, on_token=on_token, reranker=body.rerank,
                                answerability=body.answerability, history=history_messages(body.history))

    return call


@router.post("/collections/{collection}/ask", summary="A cited answer from the collection (SSE with stream=true)",
             responses={200: {"content": {"text/event-stream": {}}}})
async def ask(collection: str, body: AskIn, request: Request, state: State, caller: Reader) -> Any:
    call = await to_thread.run_sync(ask_call, state, collection, body, caller)
    if body.stream or "text/event-stream" in request.headers.get("accept", ""):
        return StreamingResponse(_events(call), media_type="text/event-stream", headers=_SSE_HEADERS)
    answer = await to_thread.run_sync(call, None)
    return JSONResponse(answer_fields(answer, paths=False))


async def _events(call: Callable[[Callable[[str], None] | None], Any]) -> AsyncIterator[str]:
    async for kind, value in stream_tokens(call):
        if kind == "token":
            yield sse({"text": value}, "token")
        elif kind == "done":
            yield sse(answer_fields(value, paths=False), "answer")
        else:
            yield sse(problem_payload(value), "error")
