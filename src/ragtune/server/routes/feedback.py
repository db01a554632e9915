"""Feedback on answers (``observe.feedback``): keyed by the answer's response id (its ``trace_id``,
or a non-streamed completion's ``chatcmpl-`` id), from the caller who asked. An answer the caller
may not see is a 404 like a missing one; one it may see but did not ask is a 403."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from anyio import to_thread
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from ragtune.server.deps import Reader, State

router = APIRouter(tags=["feedback"])

Text = Annotated[str | None, Field(max_length=10_000)]


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    response_id: str = Field(max_length=64, description="The answer's trace_id, or a chatcmpl- completion id")
    thumbs: Literal["up", "down"] | None = None
    score: Annotated[float | None, Field(ge=0.0, le=1.0)] = None
    label: Annotated[str | None, Field(max_length=200)] = None
    comment: Text = None
    correction: Text = None


@router.post("/feedback", status_code=201, summary="Feedback on an answer: thumbs, score, label, comment, "
             "correction")
async def give_feedback(body: FeedbackIn, state: State, caller: Reader) -> dict[str, Any]:
    thumbs = None if body.thumbs is None else (1 if body.thumbs == "up" else -1)

    def store() -> dict[str, Any]:
        return state.engine.feedback(body.response_id, principal=caller.principal, thumbs=thumbs, score=body.score,
                                     label=body.label, comment=body.comment, correction=body.correction)

    return await to_thread.run_sync(store)
