"""Erasure (``govern.erasure``), for admins: documents by id or URI pattern, or a subject, with
every copy of them; an earlier erasure checked again. A subject travels in the request body, never
in a URL (URLs end up in access logs)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from ragtune.server.deps import Admin, State

router = APIRouter(prefix="/erasures", tags=["governance"])


class ErasureIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    document_ids: list[int] = Field(default_factory=list, max_length=10_000)
    uri: str | None = Field(None, max_length=2000, description="A URI pattern: * any characters, ? one")
    subject: str | None = Field(None, max_length=1000, description="Every document holding this string")
    collection: str | None = Field(None, max_length=200)
    dry_run: bool = False


class VerifyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subject: str | None = Field(None, max_length=1000, description="A subject erasure's subject, given again")


@router.post("", summary="Erase documents or a subject with every copy, and check nothing is left (admin; audited)")
def erase(body: ErasureIn, state: State, caller: Admin) -> dict[str, Any]:
    return state.engine.erase(document_ids=body.document_ids, uri=body.uri, subject=body.subject,
                              collection=body.collection, dry_run=body.dry_run,
                              principal=caller.principal).to_dict()


@router.post("/{erasure_id}/verify", summary="Check an earlier erasure again: every table searched (admin)")
def verify(erasure_id: int, body: VerifyIn, state: State, caller: Admin) -> dict[str, Any]:
    return state.engine.verify_erasure(erasure_id, subject=body.subject).to_dict()
