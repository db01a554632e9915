"""Collections' policies as the engine uses them: checked, stored versioned and audited
(``store.policies``), and parsed once per version for the requests that apply them."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ragtune.errors import NotFoundError, PolicyError
from ragtune.govern.pii import PiiPolicy, Vault, apply_policy, known_entities
from ragtune.govern.policy import NO_POLICY, Policy, combined, parse_policy
from ragtune.models import Principal
from ragtune.store.audit import key_id
from ragtune.store.database import Database
from ragtune.store.policies import (
    StoredPolicy,
    load_key_policy,
    load_policy,
    policy_history,
    save_key_policy,
    save_policy,
)
from ragtune.store.repository import CollectionInfo, Repository

SCREEN_SECONDS = 2.0  # how long span export keeps using a collection's policy before looking again


@dataclass(frozen=True)
class PolicyChange:
    stored: StoredPolicy
    stale_documents: int  # documents screened under an older version: re-ingest them to apply this one


class Policies:
    def __init__(self, db: Database, *, audit: bool, plugins: Any = None) -> None:
        self.db = db
        self.audit = audit
        self.plugins = plugins
        self._parsed: dict[tuple[int, int], Policy] = {}
        self._keys: dict[tuple[str, int], Policy] = {}
        self._screens: dict[str, tuple[float, Callable[[str], str] | None]] = {}
        self._lock = threading.Lock()

    def check(self, source: str, *, name: str = "policy") -> Policy:
        """``source`` parsed, or ``PolicyError`` with every problem and its line."""
        return parse_policy(source, name=name, known_entities=lambda: known_entities(self.plugins))

    def set(self, collection: str, source: str, principal: Principal, *, name: str = "policy") -> PolicyChange:
        """``source`` checked and stored as ``collection``'s next version (audited: ``policy.set``)."""
        policy = self.check(source, name=name)
        stored = save_policy(self.db, collection, source, policy.rules(), principal, audit=self.audit)
        with self._lock:  # this process's span exports use the new version from now on
            self._screens.pop(collection, None)
        with self.db.connection() as conn:
            row = conn.execute(
                "SELECT count(*) AS n FROM documents d JOIN collections c ON c.id = d.collection_id"
                " WHERE c.name = %s AND coalesce((d.pii->>'policy')::int, 0) <> %s",
                (collection, stored.version)).fetchone()
        return PolicyChange(stored, int(row["n"]) if row else 0)

    def set_key(self, key_id: str, source: str, principal: Principal, *, name: str = "policy") -> StoredPolicy:
        """``source`` checked and stored as the API key's next policy version (audited)."""
        policy = self.check(source, name=name)
        return save_key_policy(self.db, key_id, source, policy.rules(), principal, audit=self.audit)

    def show_key(self, key_id: str) -> StoredPolicy | None:
        return load_key_policy(self.db, key_id)

    def for_principal(self, info: CollectionInfo, principal: Principal) -> Policy:
        """The policy an answer to ``principal`` on ``info`` follows: the collection's, with the
        policy of the API key the principal came with added (``combined``)."""
        policy = self.for_collection(info)
        key = key_id(principal)
        if key is None:
            return policy
        stored = load_key_policy(self.db, key)
        if stored is None:
            return policy
        cache_key = (f"key:{key}", stored.version)
        parsed = self._keys.get(cache_key)
        if parsed is None:
            parsed = parse_policy(stored.source, name=f"key {key} policy v{stored.version}",
                                  known_entities=lambda: known_entities(self.plugins), version=stored.version)
            with self._lock:
                self._keys[cache_key] = parsed
        return combined(policy, parsed)

    def show(self, collection: str, version: int | None = None) -> StoredPolicy | None:
        return load_policy(self.db, collection, version)

    def history(self, collection: str) -> list[StoredPolicy]:
        return policy_history(self.db, collection)

    def for_collection(self, info: CollectionInfo) -> Policy:
        """The policy in force for ``info`` (read with it), parsed once per version."""
        if not info.policy_version:
            return NO_POLICY
        key = (info.id, info.policy_version)
        found = self._parsed.get(key)
        if found is not None:
            return found
        stored = load_policy(self.db, info.name, info.policy_version)
        assert stored is not None
        try:
            policy = parse_policy(stored.source, name=f"{info.name} policy v{stored.version}",
                                  known_entities=lambda: known_entities(self.plugins), version=stored.version)
        except PolicyError as exc:  # e.g. a recognizer plugin that was uninstalled since
            raise PolicyError(exc.name, [*exc.problems, f"the policy in force for {info.name!r} no longer parses: "
                                                        "fix it with ragtune policy set"]) from exc
        with self._lock:
            self._parsed = {k: v for k, v in self._parsed.items() if k[0] != info.id}
            self._parsed[key] = policy
        return policy

    def content_screen(self, collection: str | None) -> Callable[[str], str] | None:
        """What span texts of ``collection`` pass through before they are stored or exported
        (``observe.tracing.ContentScreen``): its PII policy, with ``refuse`` as ``redact`` (a span
        is never refused) and ``pseudonymize`` as ``redact`` without the vault key. Called by the
        export threads; the policy in force is looked up again after ``SCREEN_SECONDS``."""
        if collection is None:
            return None
        now = time.monotonic()
        held = self._screens.get(collection)
        if held is None or now - held[0] > SCREEN_SECONDS:
            try:
                info = self._collection(collection)
            except NotFoundError:
                return None
            policy = self.for_collection(info).pii
            held = (now, _span_screen(policy) if policy.watched else None)
            with self._lock:
                self._screens[collection] = held
        return held[1]

    def _collection(self, name: str) -> CollectionInfo:
        return Repository(self.db).collection(name)


def _span_screen(policy: PiiPolicy) -> Callable[[str], str]:
    vault = None
    if policy.needs_vault and os.environ.get(Vault.ENV):
        vault = Vault.from_environment("pseudonymizing span texts")
    actions = {e: ("redact" if a == "refuse" or (a == "pseudonymize" and vault is None) else a)
               for e, a in policy.actions.items()}
    screen = dataclasses.replace(policy, actions=actions)
    return lambda text: apply_policy(text, screen, vault=vault).text
