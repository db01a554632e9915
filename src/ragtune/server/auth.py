"""API keys, the caller they make, scopes and per-key rate limits. No FastAPI here: the CLI's
``ragtune keys`` uses the same ``KeyStore``.

A key reads ``rt_<key_id>_<secret>``. ``key_id`` (12 hex digits) is public and finds the row; the
secret (32 random bytes) is stored only as a salted scrypt hash with a per-key salt, so the key is
shown once, when it is made. Verifying a secret costs one scrypt (tens of milliseconds), so a
process remembers the SHA-256 of keys it has verified for ``server.key_cache_seconds`` (and of
wrong keys for a minute); the row is still read on every request, so a revocation takes effect at
once in every server. The server spends a client address's ``server.auth_rate_limit`` bucket and
one of ``server.max_concurrent_verifications`` slots before any scrypt (``deps.get_caller``).

A key's ``groups`` become the request principal's groups (the document ACLs apply to everything it
reads); its ``scopes`` guard what it may do: ``read`` (search, ask, list, traces, the OpenAI
endpoints), ``ingest`` (upload and delete documents), ``observe`` (the service's metrics at
``/metrics``, and with ``read`` every trace, the text of chunks outside the key's groups redacted),
``audit`` (the audit log: ``GET /audit``, ``GET /audit/verify``) and ``admin`` (collections, and
every document and trace whatever its ACL: an admin key's principal is an admin principal).
``admin`` implies the others.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb

from ragtune.errors import (
    AuthenticationError,
    ConfigError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
)
from ragtune.models import Principal
from ragtune.settings import Settings
from ragtune.store.audit import AuditEvent, append
from ragtune.store.database import Database

SCOPES = ("read", "ingest", "observe", "audit", "admin")
KEY_PREFIX = "rt_"
_KEY = re.compile(r"rt_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})")
_GROUP = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}")
# scrypt at n=2**14, r=8 uses 16 MiB and ~40 ms per check here: cheap for us, slow for guessing
_KDF = {"name": "scrypt", "n": 2**14, "r": 8, "p": 1, "dklen": 32}
_VERIFIED_CACHE = 4096
# A wrong key is remembered so a client repeating it costs no scrypt; only briefly, since the entry
# just saves CPU (a wrong key stays wrong) and a short life keeps the table to recent offenders.
_REJECTED_TTL_S = 60.0
_REJECTED_CACHE = 4096
_TOUCH_EVERY_S = 60.0


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    groups: tuple[str, ...]
    scopes: tuple[str, ...]
    created_at: str
    last_used_at: str | None = None
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def public(self) -> dict[str, Any]:
        return {**self.__dict__, "active": self.active}


@dataclass(frozen=True)
class CreatedKey:
    """``key`` is the full secret key: print it once and forget it."""

    key: str
    info: ApiKey


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the principal whose groups filter what it reads, and what it may do."""

    principal: Principal
    scopes: frozenset[str]
    key_id: str | None = None

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    def require(self, scope: str) -> Caller:
        if not self.allows(scope):
            have = ", ".join(sorted(self.scopes)) or "none"
            raise PermissionDeniedError(f"this API key lacks the {scope!r} scope (it has: {have})")
        return self

    @classmethod
    def from_key(cls, key: ApiKey) -> Caller:
        scopes = frozenset(key.scopes)
        principal = Principal(id=f"key:{key.key_id}", groups=frozenset(key.groups), admin="admin" in scopes)
        return cls(principal, scopes, key.key_id)

    @classmethod
    def local(cls) -> Caller:
        """The caller of a server without auth (bound to loopback, or --no-auth): the machine's owner."""
        return cls(Principal(id="local", admin=True), frozenset(SCOPES))


def parse_list(value: str | Iterable[str] | None) -> list[str]:
    """``"a,b"`` or ``["a", "b,c"]`` -> ``["a", "b", "c"]`` (blank items dropped, order kept, no repeats)."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        for part in item.split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    return out


def check_groups(groups: Iterable[str]) -> tuple[str, ...]:
    out = tuple(sorted(set(groups)))
    for g in out:
        if not _GROUP.fullmatch(g):
            raise ConfigError(f"invalid group name {g!r}: letters, digits and . _ : @ -, at most 100")
    return out


class KeyStore:
    """API keys in the ``api_keys`` table.

    ``cache_seconds`` is how long a verified key skips the scrypt (0: never). Keys that failed are
    remembered too, for at most ``_REJECTED_TTL_S``, in a table of their own so a flood of wrong
    keys can never push a verified key out. ``kdf_calls``, ``kdf_active`` and ``kdf_peak`` count
    the scrypt verifications (all, running now, most at once), for the server's tests.
    """

    def __init__(self, db: Database, *, cache_seconds: float = 300.0,
                 clock: Callable[[], float] = time.monotonic, audit: bool = True) -> None:
        if cache_seconds < 0:
            raise ConfigError(f"cache_seconds must be >= 0, got {cache_seconds}")
        self.db = db
        self.audit = audit  # key changes append to the audit log, in their own transaction
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._verified: OrderedDict[bytes, tuple[str, bytes, float]] = OrderedDict()  # sha256(key) -> id, hash, at
        self._rejected: OrderedDict[bytes, float] = OrderedDict()  # sha256(key) -> when it failed
        self._touched: dict[str, float] = {}
        self._lock = threading.Lock()
        self.kdf_calls = 0
        self.kdf_active = 0
        self.kdf_peak = 0

    def create(self, name: str, *, groups: Iterable[str] = (), scopes: Iterable[str] = ("read",)) -> CreatedKey:
        name = name.strip()
        if not name or len(name) > 100:
            raise ConfigError(f"a key needs a name of 1 to 100 characters, got {name!r}")
        scope_list = tuple(sorted(set(scopes)))
        unknown = [s for s in scope_list if s not in SCOPES]
        if unknown or not scope_list:
            raise ConfigError(f"invalid scopes {list(scope_list)!r}: use one or more of {', '.join(SCOPES)}")
        group_list = check_groups(groups)
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        digest = _hash(secret, salt, _KDF)
        with self.db.transaction() as conn:
            row = conn.execute(
                "INSERT INTO api_keys (key_id, name, groups, scopes, salt, hash, kdf)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)"
                " RETURNING key_id, name, groups, scopes, created_at::text AS created_at",
                (key_id, name, list(group_list), list(scope_list), salt, digest, Jsonb(_KDF)),
            ).fetchone()
            if self.audit:
                append(conn, AuditEvent("key.create", Principal.system(), details={
                    "key_id": key_id, "name": name, "groups": list(group_list), "scopes": list(scope_list)}))
        assert row is not None
        return CreatedKey(f"{KEY_PREFIX}{key_id}_{secret}", _key(row))

    def list(self) -> list[ApiKey]:
        with self.db.connection() as conn:
            rows = conn.execute(
                "SELECT key_id, name, groups, scopes, created_at::text AS created_at,"
                " last_used_at::text AS last_used_at, revoked_at::text AS revoked_at FROM api_keys ORDER BY id"
            ).fetchall()
        return [_key(r) for r in rows]

    def active_count(self) -> int:
        with self.db.connection() as conn:
            row = conn.execute("SELECT count(*) AS n FROM api_keys WHERE revoked_at IS NULL").fetchone()
        return int(row["n"]) if row else 0

    def revoke(self, key_id: str) -> bool:
        """Revoke by key id (or the whole key); False if it was already revoked."""
        match = _KEY.fullmatch(key_id.strip())
        key_id = match.group(1) if match else key_id.strip()
        with self.db.transaction() as conn:
            row = conn.execute("SELECT revoked_at FROM api_keys WHERE key_id = %s FOR UPDATE", (key_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no API key with id {key_id!r}")
            if row["revoked_at"] is not None:
                return False
            conn.execute("UPDATE api_keys SET revoked_at = now() WHERE key_id = %s", (key_id,))
            if self.audit:
                append(conn, AuditEvent("key.revoke", Principal.system(), details={"key_id": key_id}))
        return True

    def remembered(self, key: str) -> bool:
        """True if ``key`` was verified within ``cache_seconds`` (its row must still be read); False if
        only a scrypt can tell. Raises AuthenticationError for a malformed key or one that failed
        lately. Memory only (no database, no scrypt): the server calls it on its event loop."""
        _, _, fingerprint = _parse(key)
        now = self._clock()
        with self._lock:
            if self._fresh_verified(fingerprint, now) is not None:
                return True
            if self._fresh_rejected(fingerprint, now):
                raise AuthenticationError("invalid API key")
        return False

    def verify_cached(self, key: str) -> ApiKey | None:
        """Like ``verify`` but never runs a scrypt: None when the key would need one."""
        key_id, _, fingerprint = _parse(key)
        now = self._clock()
        with self._lock:
            entry = self._fresh_verified(fingerprint, now)
            if entry is None:
                if self._fresh_rejected(fingerprint, now):
                    raise AuthenticationError("invalid API key")
                return None
        row = self._row(key_id)
        if row is None or entry[0] != key_id or bytes(row["hash"]) != entry[1]:
            with self._lock:  # the row is gone or was replaced: only a fresh check may say yes
                self._verified.pop(fingerprint, None)
            return None
        return self._accept(row)

    def verify(self, key: str) -> ApiKey:
        """The key's row if the key is valid and not revoked; AuthenticationError otherwise.

        A key verified within ``cache_seconds`` costs one row read; any other costs one scrypt too,
        the same for an unknown key id (against a dummy salt) as for a wrong secret, so timing tells
        no key ids. The row is read on every call, so a revocation counts at once."""
        found = self.verify_cached(key)
        if found is not None:
            return found
        key_id, secret, fingerprint = _parse(key)
        row = self._row(key_id)
        if row is None:
            self._kdf(secret, b"0" * 16, _KDF)
            self._reject(fingerprint)
            raise AuthenticationError("invalid API key")
        expected = bytes(row["hash"])
        if not hmac.compare_digest(self._kdf(secret, bytes(row["salt"]), row["kdf"] or _KDF), expected):
            self._reject(fingerprint)
            raise AuthenticationError("invalid API key")
        if self.cache_seconds > 0:
            with self._lock:
                self._verified[fingerprint] = (key_id, expected, self._clock())
                self._verified.move_to_end(fingerprint)
                while len(self._verified) > _VERIFIED_CACHE:
                    self._verified.popitem(last=False)
        return self._accept(row)

    def _row(self, key_id: str) -> dict[str, Any] | None:
        with self.db.connection() as conn:
            row: dict[str, Any] | None = conn.execute(
                "SELECT key_id, name, groups, scopes, salt, hash, kdf, created_at::text AS created_at,"
                " last_used_at::text AS last_used_at, revoked_at::text AS revoked_at FROM api_keys WHERE key_id = %s",
                (key_id,),
            ).fetchone()
        return row

    def _accept(self, row: dict[str, Any]) -> ApiKey:
        if row["revoked_at"] is not None:
            raise AuthenticationError(f"API key {row['key_id']} was revoked at {row['revoked_at']}")
        self._touch(row["key_id"])
        return _key(row)

    def _kdf(self, secret: str, salt: bytes, kdf: dict[str, Any]) -> bytes:
        with self._lock:
            self.kdf_calls += 1
            self.kdf_active += 1
            self.kdf_peak = max(self.kdf_peak, self.kdf_active)
        try:
            return _hash(secret, salt, kdf)
        finally:
            with self._lock:
                self.kdf_active -= 1

    def _fresh_verified(self, fingerprint: bytes, now: float) -> tuple[str, bytes, float] | None:
        """The cache entry if younger than the TTL (caller holds the lock); an expired one is dropped."""
        entry = self._verified.get(fingerprint)
        if entry is not None and now - entry[2] >= self.cache_seconds:
            del self._verified[fingerprint]
            return None
        return entry

    def _fresh_rejected(self, fingerprint: bytes, now: float) -> bool:
        at = self._rejected.get(fingerprint)
        if at is not None and now - at >= min(self.cache_seconds, _REJECTED_TTL_S):
            del self._rejected[fingerprint]
            return False
        return at is not None

    def _reject(self, fingerprint: bytes) -> None:
        if self.cache_seconds <= 0:
            return
        with self._lock:
            self._rejected[fingerprint] = self._clock()
            self._rejected.move_to_end(fingerprint)
            while len(self._rejected) > _REJECTED_CACHE:
                self._rejected.popitem(last=False)

    def _touch(self, key_id: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._touched.get(key_id, -_TOUCH_EVERY_S) < _TOUCH_EVERY_S:
                return
            self._touched[key_id] = now
        with self.db.connection() as conn:
            conn.execute("UPDATE api_keys SET last_used_at = now() WHERE key_id = %s", (key_id,))


def is_key_shaped(token: str) -> bool:
    """True if ``token`` has the shape of a ragtune key (``rt_<id>_<secret>``), valid or not."""
    return _KEY.fullmatch(token.strip()) is not None


def _parse(key: str) -> tuple[str, str, bytes]:
    """``(key_id, secret, sha256 of the key)``; AuthenticationError if it is not a key's shape."""
    key = key.strip()
    match = _KEY.fullmatch(key)
    if match is None:
        raise AuthenticationError("malformed API key: expected rt_<id>_<secret> as made by `ragtune keys create`")
    return match.group(1), match.group(2), hashlib.sha256(key.encode()).digest()


def _hash(secret: str, salt: bytes, kdf: dict[str, Any]) -> bytes:
    n, r, p, dklen = int(kdf["n"]), int(kdf["r"]), int(kdf["p"]), int(kdf["dklen"])
    return hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=256 * r * n * p)


def _key(row: dict[str, Any]) -> ApiKey:
    return ApiKey(key_id=row["key_id"], name=row["name"], groups=tuple(row["groups"]), scopes=tuple(row["scopes"]),
                  created_at=row["created_at"], last_used_at=row.get("last_used_at"),
                  revoked_at=row.get("revoked_at"))


class RateLimiter:
    """A token bucket per caller: ``burst`` requests at once, refilled at ``rate`` per second.

    In memory, per process (a concession: several server processes each allow the full rate).
    ``rate=0`` turns it off.
    """

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic,
                 max_callers: int = 10000) -> None:
        if rate < 0 or burst < 1:
            raise ConfigError(f"invalid rate limit rate={rate} burst={burst}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max = max_callers
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # who -> (tokens, at)
        self._lock = threading.Lock()

    def check(self, who: str) -> None:
        if self.rate <= 0:
            return
        with self._lock:  # the clock too: a thread delayed before the lock would set the bucket's time back
            now = self._clock()
            tokens, at = self._buckets.pop(who, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            if tokens < 1.0:
                self._buckets[who] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
                raise RateLimitError(f"rate limit of {self.rate:g} requests/s (burst {self.burst}) exceeded; "
                                     f"retry in {wait:.2f}s", retry_after=wait)
            self._buckets[who] = (tokens - 1.0, now)
            while len(self._buckets) > self._max:
                self._buckets.popitem(last=False)


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def auth_required(settings: Settings, host: str | None = None, flag: bool | None = None) -> bool:
    """``--auth/--no-auth`` wins; then ``server.auth`` on/off; ``auto`` requires keys unless the
    server listens on a loopback address only."""
    if flag is not None:
        return flag
    if settings.server.auth != "auto":
        return settings.server.auth == "on"
    return not is_loopback(host or settings.server.host)
