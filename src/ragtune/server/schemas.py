"""Request bodies shared by several routers, and the JSON views of core objects."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ragtune.errors import QueryError
from ragtune.models import Hit, Message, SearchResult
from ragtune.retrieve.filters import Filter, parse_scalar

Scalar = str | int | float | bool


class FilterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str = Field(min_length=1, max_length=200)
    op: Literal["eq", "ne", "in", "gt", "gte", "lt", "lte"] = "eq"
    value: Scalar | list[Scalar]


# {"key": value or [any of values]}, or a list of "key>=3" strings / {key, op, value} objects.
Filters = dict[str, Scalar | list[Scalar]] | list[str | FilterIn]


def to_filters(filters: Filters | None) -> list[Filter]:
    """Metadata filters only: they are ANDed with the ACL condition and cannot widen it."""
    if not filters:
        return []
    if isinstance(filters, dict):
        return [Filter(k, "in", list(v)) if isinstance(v, list) else Filter(k, "eq", v) for k, v in filters.items()]
    out = []
    for f in filters:
        if isinstance(f, str):
            out.append(Filter.parse(f))
            continue
        value: Any = f.value
        if f.op in ("gt", "gte", "lt", "lte"):
            if isinstance(value, list | bool):
                raise QueryError(f"filter {f.key} {f.op}: a range needs a number or an ISO date, got {value!r}")
            if isinstance(value, str):
                value = parse_scalar(value)
        out.append(Filter(f.key, f.op, value))
    return out


RERANK = ("true: rerank with the server's configured reranker, or the collection's latest trained one; "
          "false: no reranking; absent: the server's reranker setting")
ANSWERABILITY = ("true: also abstain by the configured answerability model, or the latest trained one; "
                 "false: not; absent: the server's answerability setting")


class SearchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1, max_length=4000)
    top_k: int = 10
    mode: Literal["dense", "bm25", "hybrid"] | None = None
    fusion: Literal["convex", "rrf"] | None = None
    filters: Filters | None = None
    rerank: bool | None = Field(default=None, description=RERANK)


class HistoryMessage(BaseModel):
    """One earlier turn of the conversation an ask follows up."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1, max_length=20_000)


HISTORY = ("The conversation so far, oldest first: retrieval reads the question as its follow-up (the "
           "server's [retrieval] conversation method); the answer is to the question itself")


class AskIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1, max_length=4000)
    top_k: int | None = None
    mode: Literal["dense", "bm25", "hybrid"] | None = None
    filters: Filters | None = None
    generator: str | None = Field(default=None, max_length=200,
                                  description="extractive, reader, or the server's configured generator")
    max_tokens: int | None = None
    stream: bool = Field(default=False, description="Server-Sent Events: token events, then the answer")
    rerank: bool | None = Field(default=None, description=RERANK)
    answerability: bool | None = Field(default=None, description=ANSWERABILITY)
    history: list[HistoryMessage] | None = Field(default=None, max_length=200, description=HISTORY)


def history_messages(history: list[HistoryMessage] | None) -> list[Message] | None:
    return None if history is None else [Message(m.role, m.content) for m in history]


def hit_json(h: Hit) -> dict[str, Any]:
    return {"rank": h.rank, "score": h.score, "scores": h.scores_by_source, "uri": h.uri,
            "document_id": h.document_id, "chunk_id": h.chunk.id, "start": h.chunk.start, "end": h.chunk.end,
            "heading": h.chunk.heading, "text": h.chunk.text, "metadata": h.metadata}


def search_json(result: SearchResult) -> dict[str, Any]:
    return {"query": result.query, "mode": result.mode, "trace_id": result.trace_id,
            "timings_ms": result.timings_ms, "hits": [hit_json(h) for h in result.hits]}
