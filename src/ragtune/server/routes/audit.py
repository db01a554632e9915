"""The audit log (``govern.audit``) for a key with the ``audit`` scope: its events in order,
filtered, and the chain's check."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from ragtune.govern.audit import ACTIONS, parse_anchor
from ragtune.server.deps import Auditor, State

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("", summary="Audit events in order (who read or changed what, when, from where)")
def list_events(state: State, caller: Auditor,
                since: Annotated[datetime | None, Query(description="From this time (ISO 8601)")] = None,
                until: Annotated[datetime | None, Query(description="Before this time")] = None,
                principal: Annotated[str | None, Query(max_length=200)] = None,
                action: Annotated[str | None, Query(max_length=100, description=ACTIONS)] = None,
                collection: Annotated[str | None, Query(max_length=200)] = None,
                after_seq: Annotated[int, Query(ge=0, description="Page on after this event")] = 0,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
    return state.engine.audit.events(since=since, until=until, principal=principal, action=action,
                                     collection=collection, after_seq=after_seq, limit=limit)


@router.get("/verify", summary="Recompute the hash chain; names the first broken link")
def verify(state: State, caller: Auditor,
           anchor: Annotated[str | None, Query(description="SEQ:HASH of a row seen earlier (a head "
                                                           "`verify` returned): catches rows cut from the end")]
           = None) -> dict[str, Any]:
    return state.engine.audit.verify(anchor=parse_anchor(anchor) if anchor else None).to_dict()
