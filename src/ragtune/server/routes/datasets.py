"""Read-only views of the fine-tuning datasets (``ragtune data import``), as the caller may read them:
a version or row hidden from the caller's key answers exactly as a missing one (404), and counts are
of the rows it can read (``DatasetStore`` applies the ACLs)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from ragtune.server.deps import Reader, ServerState, State

router = APIRouter(prefix="/datasets", tags=["datasets"])


def _store(state: ServerState) -> Any:
    from ragtune.finetune.data.store import DatasetStore

    return DatasetStore(state.engine.db, cache_dir=state.settings.resolved_cache_dir,
                        audit=state.settings.governance.audit)


@router.get("", summary="Every version of every dataset the caller may read (without the validation reports)")
def list_datasets(state: State, caller: Reader) -> list[dict[str, Any]]:
    return [d.summary() for d in _store(state).versions(principal=caller.principal)]


@router.get("/{name}", summary="A dataset version with its validation report (default: the latest)")
def get_dataset(name: str, state: State, caller: Reader,
                version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None) -> dict[str, Any]:
    info = _store(state).get(name, version, principal=caller.principal)
    return {**info.__dict__, "reasons": list(info.reasons)}


@router.get("/{name}/rows", summary="Examples of a dataset version the caller may read, in file order")
def dataset_rows(name: str, state: State, caller: Reader,
                 version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
                 split: Annotated[Literal["train", "eval"] | None, Query()] = None,
                 limit: Annotated[int, Query(ge=1, le=500)] = 50,
                 offset: Annotated[int, Query(ge=0, le=10**9)] = 0) -> dict[str, Any]:
    store = _store(state)
    info = store.get(name, version, principal=caller.principal)
    rows = store.rows(info, split, principal=caller.principal)
    return {"name": info.name, "version": info.version, "split": split, "total": len(rows), "offset": offset,
            "rows": [{"line": r.line, **r.content()} for r in rows[offset:offset + limit]]}
