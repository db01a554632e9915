"""Ingest jobs: their status, progress and per-file errors (a caller sees its own jobs; admin all)."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

import anyio
from anyio import to_thread
from fastapi import APIRouter, Path, Query

from ragtune.models import Principal
from ragtune.server.deps import Reader, ServerState, State
from ragtune.server.jobs import IngestJob

router = APIRouter(prefix="/ingest-jobs", tags=["ingest jobs"])


async def wait_for(state: ServerState, job_id: int, principal: Principal, seconds: float) -> IngestJob:
    """The job once it is done, or as it is after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        job = await to_thread.run_sync(state.jobs.get, job_id, principal)
        if job.done or time.monotonic() >= deadline:
            return job
        await anyio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


@router.get("", summary="List ingest jobs, newest first")
def list_jobs(state: State, caller: Reader,
              status: Annotated[Literal["queued", "running", "succeeded", "failed"] | None, Query()] = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[dict[str, Any]]:
    return [j.public() for j in state.jobs.listing(caller.principal, status=status, limit=limit)]


@router.get("/{job_id}", summary="Show an ingest job (wait=N long-polls until it is done)")
async def get_job(job_id: Annotated[int, Path(ge=1, le=2**63 - 1)], state: State, caller: Reader,
                  wait: Annotated[float, Query(ge=0, le=60)] = 0) -> dict[str, Any]:
    job = await wait_for(state, job_id, caller.principal, wait)
    return job.public()
