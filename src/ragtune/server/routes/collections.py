"""Collections: list and show (read); create and delete (admin)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from ragtune.server.deps import Admin, Reader, State

router = APIRouter(prefix="/collections", tags=["collections"])


class CollectionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _json(info: Any) -> dict[str, Any]:
    return {"name": info.name, "embedder": info.embedder, "dimension": info.dimension, "chunks": info.n_chunks,
            "documents": info.documents}


@router.get("", summary="List collections")
def list_collections(state: State, caller: Reader) -> list[dict[str, Any]]:
    return [_json(c) for c in state.engine.collections()]


@router.post("", status_code=201, summary="Create a collection (admin; idempotent)")
def create_collection(body: CollectionIn, state: State, caller: Admin) -> dict[str, Any]:
    return _json(state.engine.collection(body.name, create=True))


@router.get("/{name}", summary="Show a collection")
def get_collection(name: str, state: State, caller: Reader) -> dict[str, Any]:
    return _json(state.engine.collection(name))


@router.delete("/{name}", status_code=204, summary="Delete a collection and everything in it (admin)")
def delete_collection(name: str, state: State, caller: Admin) -> Response:
    state.engine.drop_collection(name)
    return Response(status_code=204)
