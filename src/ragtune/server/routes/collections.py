"""Collections: list and show (read); create and delete (admin).

A caller without the admin scope sees only the collections holding a document it may read, with
counts of those documents and their chunks: a collection of hidden documents reads as missing.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from ragtune.errors import NotFoundError
from ragtune.server.deps import Admin, Reader, State
from ragtune.store.repository import COLLECTION_NAME

router = APIRouter(prefix="/collections", tags=["collections"])


class CollectionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200, pattern=COLLECTION_NAME)


def _json(info: Any) -> dict[str, Any]:
    return {"name": info.name, "embedder": info.embedder, "dimension": info.dimension, "chunks": info.n_chunks,
            "documents": info.documents}


@router.get("", summary="List collections")
def list_collections(state: State, caller: Reader) -> list[dict[str, Any]]:
    return [_json(c) for c in state.engine.collections(principal=caller.principal)]


@router.post("", status_code=201, summary="Create a collection (admin; idempotent)")
def create_collection(body: CollectionIn, state: State, caller: Admin) -> dict[str, Any]:
    return _json(state.engine.collection(body.name, create=True))


@router.get("/{name}", summary="Show a collection")
def get_collection(name: str, state: State, caller: Reader) -> dict[str, Any]:
    found = state.engine.collections(principal=caller.principal, name=name)
    if not found:
        raise NotFoundError(f"no collection named {name!r}")
    return _json(found[0])


@router.delete("/{name}", status_code=204, summary="Delete a collection and everything in it (admin)")
def delete_collection(name: str, state: State, caller: Admin) -> Response:
    state.engine.drop_collection(name, principal=caller.principal)
    return Response(status_code=204)
