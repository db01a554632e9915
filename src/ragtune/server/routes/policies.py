"""Collections' policies (``govern.policy``): read, set and check them (admin), and reveal a
pseudonymized value with the server's vault key (admin, audited)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from ragtune.errors import NotFoundError, PolicyError
from ragtune.govern.policy import MAX_POLICY_BYTES
from ragtune.server.deps import Admin, State
from ragtune.store.policies import StoredPolicy

router = APIRouter(tags=["policies"])


class PolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = Field(max_length=MAX_POLICY_BYTES, description="The policy file's text (TOML)")


class ReleaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    chunks: list[int] = Field(min_length=1, max_length=1000, description="Quarantined chunk ids")


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=3, max_length=200, description="A pseudonym, e.g. <EMAIL_ADDRESS_3f9a0c2e51b7>")


def _json(stored: StoredPolicy) -> dict[str, Any]:
    return {"collection": stored.collection, "version": stored.version, "source": stored.source,
            "rules": stored.rules, "created_by": stored.created_by, "created_at": stored.created_at.isoformat()}


@router.get("/collections/{name}/policy", summary="The policy in force for a collection (admin)")
def get_policy(name: str, state: State, caller: Admin, version: int | None = None) -> dict[str, Any]:
    stored = state.engine.policies.show(name, version)
    if stored is None:
        raise NotFoundError(f"collection {name!r} has no policy")
    return _json(stored)


@router.put("/collections/{name}/policy", summary="Check a policy and make it the collection's next version "
                                                    "(admin; audited)")
def set_policy(name: str, body: PolicyIn, state: State, caller: Admin) -> dict[str, Any]:
    change = state.engine.policies.set(name, body.source, caller.principal, name=f"{name} policy")
    return {**_json(change.stored), "stale_documents": change.stale_documents}


@router.get("/keys/{key_id}/policy", summary="The policy of an API key (admin)")
def get_key_policy(key_id: str, state: State, caller: Admin) -> dict[str, Any]:
    stored = state.engine.policies.show_key(key_id)
    if stored is None:
        raise NotFoundError(f"API key {key_id!r} has no policy")
    return _json(stored)


@router.put("/keys/{key_id}/policy", summary="Check a policy and make it an API key's next version: its rules "
                                              "are added to the collection's for every answer asked with the key "
                                              "(admin; audited)")
def set_key_policy(key_id: str, body: PolicyIn, state: State, caller: Admin) -> dict[str, Any]:
    return _json(state.engine.policies.set_key(key_id, body.source, caller.principal, name=f"key {key_id} policy"))


@router.get("/collections/{name}/policy/history", summary="Every version of a collection's policy (admin)")
def policy_history(name: str, state: State, caller: Admin) -> list[dict[str, Any]]:
    return [_json(p) for p in state.engine.policies.history(name)]


@router.post("/policy/check", summary="Check a policy: every problem with its line, or its rules")
def check_policy(body: PolicyIn, state: State, caller: Admin) -> dict[str, Any]:
    try:
        policy = state.engine.policies.check(body.source)
    except PolicyError as exc:
        return {"ok": False, "problems": exc.problems}
    return {"ok": True, "rules": policy.rules()}


@router.post("/pii/reveal", summary="The value a pseudonym stands for (admin; the server needs RAGTUNE_VAULT_KEY; "
                                    "audited)")
def reveal(body: TokenIn, state: State, caller: Admin) -> dict[str, str]:
    return {"token": body.token, "value": state.engine.reveal(body.token, principal=caller.principal)}


@router.get("/collections/{name}/quarantine", summary="Chunks held out of retrieval by the injection policy (admin)")
def quarantined(name: str, state: State, caller: Admin, limit: int = Query(100, ge=1, le=1000)
                ) -> list[dict[str, Any]]:
    return state.engine.quarantined(name, limit=limit)


@router.post("/collections/{name}/quarantine/release", summary="Return quarantined chunks to retrieval (admin; "
                                                                 "audited)")
def release(name: str, body: ReleaseIn, state: State, caller: Admin) -> dict[str, int]:
    return {"released": state.engine.release(name, body.chunks, principal=caller.principal)}
