"""Search a collection: dense, BM25 or hybrid, with metadata filters; the caller's groups apply."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ragtune.server.deps import Reader, State
from ragtune.server.schemas import SearchIn, search_json, to_filters

router = APIRouter(tags=["search"])


@router.post("/collections/{collection}/search", summary="Ranked passages for a query")
def search(collection: str, body: SearchIn, state: State, caller: Reader) -> dict[str, Any]:
    state.check_top_k(body.top_k)
    result = state.engine.search(body.query, collection=collection, top_k=body.top_k, mode=body.mode,
                                 filters=to_filters(body.filters), principal=caller.principal, fusion=body.fusion,
                                 reranker=body.rerank)
    if not result.hits:  # checked only then: no hits from a collection with nothing visible reads as missing
        state.engine.visible_collection(collection, caller.principal)
    return search_json(result)
