"""Scheduled syncs (admin only): create, list, delete. The job worker runs each due schedule as an
ingest job (``GET /ingest-jobs`` lists its runs with their progress and report).

A schedule names a remote source (``s3://bucket/prefix``) or a folder the server reads. A request
may name a folder only under ``server.sync_roots`` (empty by default: none), and only with an admin
key: the server never reads a path a request chose outside the folders its operator opened.
"""

from __future__ import annotations

from pathlib import Path as FsPath
from pathlib import PurePosixPath
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from ragtune.engine import MAX_SCHEDULE_INTERVAL_S
from ragtune.errors import PermissionDeniedError, QueryError
from ragtune.retrieve.filters import bad_text
from ragtune.server.auth import check_groups, parse_list
from ragtune.server.deps import Admin, State
from ragtune.server.guards import json_problem
from ragtune.store.repository import COLLECTION_NAME
from ragtune.store.schedules import Schedule

router = APIRouter(prefix="/schedules", tags=["schedules"])


class ScheduleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = Field(min_length=1, max_length=2000,
                        description="A folder on the server (absolute path), or s3://bucket/prefix")
    collection: str = Field(min_length=1, max_length=200, pattern=COLLECTION_NAME)
    interval_s: int = Field(ge=1, le=MAX_SCHEDULE_INTERVAL_S, description="Seconds from the end of a run to the next")
    acl: list[Annotated[str, Field(max_length=100)]] | None = Field(
        default=None, max_length=100, description="Groups allowed to read ([]: public). Not sent: stored documents "
                                                  "keep their ACL, new ones take their folder's.")
    metadata: dict[str, Any] | None = Field(default=None, description="Stored with every document. Not sent: "
                                                                      "stored documents keep theirs.")
    change_acl: bool = False


@router.post("", status_code=201, summary="Create a scheduled sync of a folder or remote source (admin)")
async def create_schedule(body: ScheduleIn, state: State, caller: Admin) -> dict[str, Any]:
    if (bad := bad_text(body.source)) is not None:
        raise QueryError(f"the source holds {bad}")
    acl = check_groups(body.acl) if body.acl is not None else None
    if body.metadata is not None and (problem := json_problem(body.metadata, "metadata")) is not None:
        raise QueryError(f"the schedule's {problem}")

    def make() -> Schedule:
        if "://" not in body.source:  # (in a thread: resolving a path touches the disk)
            _check_folder(body.source, parse_list(state.settings.server.sync_roots))
        return state.engine.add_schedule(body.source, every_s=body.interval_s, collection=body.collection,
                                         metadata=body.metadata, acl=acl, change_acl=body.change_acl,
                                         principal=caller.principal)

    schedule = await to_thread.run_sync(make)
    state.worker.wake()  # the first run is due now
    return schedule.public()


def _check_folder(source: str, roots: list[str]) -> None:
    """A folder a request may name: an absolute path under one of ``server.sync_roots``, links
    resolved (a link out of a root does not count as in it)."""
    if not PurePosixPath(source).is_absolute():
        raise QueryError(f"a schedule's folder must be an absolute path on the server, got {source!r}")
    if not roots:
        raise PermissionDeniedError("this server syncs no folders named over HTTP (server.sync_roots is empty); "
                                    "schedule a remote source, or a folder with `ragtune schedules add`")
    folder = FsPath(source).resolve()
    if not any(folder.is_relative_to(FsPath(root).expanduser().resolve()) for root in roots):
        raise PermissionDeniedError(f"the folder {source!r} is not under server.sync_roots")


@router.get("", summary="List scheduled syncs with their last run (admin)")
def list_schedules(state: State, caller: Admin) -> list[dict[str, Any]]:
    return [s.public() for s in state.engine.schedules()]


@router.delete("/{schedule_id}", status_code=204, summary="Delete a scheduled sync: no more runs (admin)")
def delete_schedule(schedule_id: Annotated[int, Path(ge=1, le=2**63 - 1)], state: State, caller: Admin) -> Response:
    state.engine.delete_schedule(schedule_id, principal=caller.principal)
    return Response(status_code=204)
