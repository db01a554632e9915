"""Pre-authentication CPU exhaustion (issue 14 item 4), against the real server on loopback: a
flood of wrong keys is refused with 429 before it costs a scrypt, a key the server has verified is
served through the flood, no more scrypts run at once than the cap allows, refusals are held back
so a flood slows down, and the verified-key cache expires while a revocation still counts on the
next request.

The scrypts are counted by the server's own ``KeyStore`` (``kdf_calls``, ``kdf_peak``), read from
the app this test started."""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from ragtune.errors import AuthenticationError, ConfigError
from ragtune.settings import ServerSettings, Settings

# the general per-caller limit is off (as in conftest) so every 429 here comes from the new guards;
# refusals are answered at once except in the test of the delay
FLOOD = {"rate_limit": 0, "auth_rate_limit": 0.05, "auth_burst": 5, "auth_refusal_delay": 0}  # [server]


def _wrong_key(key_id: str | None = None) -> str:
    return f"rt_{key_id or secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@contextmanager
def _serve(engine: Any, settings: Settings) -> Iterator[tuple[str, Any]]:
    """A server of its own (fresh buckets and caches); yields its URL and its ``ServerState``."""
    from ragtune.server.app import create_app
    from tests.server.conftest import running

    app = create_app(engine, settings, auth=True, start_worker=False)
    with running(app, settings) as url:
        yield url, app.state.ragtune


def test_a_flood_of_wrong_keys_gets_429_after_the_burst_without_a_scrypt_each(
        engine: Any, server_settings: Settings, keys: dict[str, str]) -> None:
    settings = server_settings.replace(server=FLOOD)
    real_id = keys["a"].split("_")[1]
    with _serve(engine, settings) as (url, state), httpx.Client(base_url=url) as client:
        responses = [client.get("/collections", headers=_bearer(_wrong_key(real_id if i % 2 else None)))
                     for i in range(40)]
        codes = [r.status_code for r in responses]
        # the burst of 5 is answered 401 after a scrypt each; every later guess is 429 with no scrypt
        assert codes[:5] == [401] * 5, codes
        assert codes[5:] == [429] * 35, codes
        assert state.keys.kdf_calls == 5
        refused = responses[-1]
        assert refused.json()["code"] == "rate_limited" and int(refused.headers["retry-after"]) >= 1
        # a key the server has not verified yet is a guess like any other from this address ...
        assert client.get("/collections", headers=_bearer(keys["a"])).status_code == 429
        assert state.keys.kdf_calls == 5
    with _serve(engine, settings) as (url, state), httpx.Client(base_url=url) as client:
        # ... but one it has verified is never held back by the guesses from its own address
        assert client.get("/collections", headers=_bearer(keys["a"])).status_code == 200
        codes = [client.get("/collections", headers=_bearer(_wrong_key())).status_code for _ in range(10)]
        assert codes.count(429) >= 5
        assert [client.get("/collections", headers=_bearer(keys["a"])).status_code for _ in range(5)] == [200] * 5
        assert state.keys.kdf_calls <= 6


def test_a_repeated_wrong_key_costs_one_scrypt_whether_or_not_its_id_exists(
        engine: Any, server_settings: Settings, keys: dict[str, str]) -> None:
    settings = server_settings.replace(server=FLOOD)
    real_id = keys["b"].split("_")[1]
    with _serve(engine, settings) as (url, state), httpx.Client(base_url=url) as client:
        for key in (_wrong_key(), _wrong_key(real_id)):
            before = state.keys.kdf_calls
            answers = {(r.status_code, r.json()["detail"])
                       for r in (client.get("/collections", headers=_bearer(key)) for _ in range(10))}
            # the same answer, and the same one scrypt, for an unknown key id as for a real one
            assert answers == {(401, "invalid API key")}
            assert state.keys.kdf_calls == before + 1


def test_a_verified_key_is_served_while_threads_flood_its_address(
        engine: Any, server_settings: Settings, keys: dict[str, str]) -> None:
    settings = server_settings.replace(server=FLOOD)
    flood: Counter[int] = Counter()
    lock = threading.Lock()

    def guess(url: str, stop: float) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while time.monotonic() < stop:
                code = client.get("/collections", headers=_bearer(_wrong_key())).status_code
                with lock:
                    flood[code] += 1

    served = []
    with _serve(engine, settings) as (url, state), httpx.Client(base_url=url, headers=_bearer(keys["a"])) as valid:
        assert valid.get("/collections").status_code == 200  # verified once, then remembered
        stop = time.monotonic() + 3.0
        threads = [threading.Thread(target=guess, args=(url, stop)) for _ in range(8)]
        for t in threads:
            t.start()
        while time.monotonic() < stop:
            served.append(valid.post("/collections/handbook/search", json={"query": "Aurora budget"}).status_code)
        for t in threads:
            t.join()
    assert served and set(served) == {200}, Counter(served)
    assert set(flood) == {401, 429} and flood[429] > 10 * flood[401], flood
    # the burst (the valid key's first check included) and what the bucket refilled in ~3 s: no more
    assert state.keys.kdf_calls <= 5 + 1


def test_concurrent_verifications_never_exceed_the_cap(engine: Any, server_settings: Settings) -> None:
    settings = server_settings.replace(server={"rate_limit": 0, "auth_rate_limit": 0,  # no bucket: only the cap
                                               "max_concurrent_verifications": 2, "verification_wait": 0.05,
                                               "auth_refusal_delay": 0})
    with _serve(engine, settings) as (url, state):
        codes: Counter[int] = Counter()
        retry_after: list[str] = []
        lock = threading.Lock()
        go = threading.Barrier(16)

        def guess() -> None:
            with httpx.Client(base_url=url, timeout=30) as client:
                go.wait()
                for _ in range(4):
                    r = client.get("/collections", headers=_bearer(_wrong_key()))
                    with lock:
                        codes[r.status_code] += 1
                        if r.status_code == 429:
                            retry_after.append(r.headers["retry-after"])

        threads = [threading.Thread(target=guess) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert 1 <= state.keys.kdf_peak <= 2, state.keys.kdf_peak
    assert state.keys.kdf_active == 0
    assert codes[401] == state.keys.kdf_calls  # a scrypt for every 401 and none for a 429
    assert codes[429] > 0 and sum(codes.values()) == 64, codes  # waited 50 ms for a slot, then refused
    assert all(int(v) >= 1 for v in retry_after)
    # the high-water mark does see overlap where nothing caps it: the server's cap is what held it at 2
    from ragtune.server.auth import KeyStore

    bare = KeyStore(engine.db)
    start = threading.Barrier(8)

    def check() -> None:
        start.wait()
        with pytest.raises(AuthenticationError):
            bare.verify(_wrong_key())

    threads = [threading.Thread(target=check) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bare.kdf_calls == 8 and bare.kdf_peak > 2, bare.kdf_peak


def test_refusals_are_held_back_but_a_verified_key_is_not(
        engine: Any, server_settings: Settings, keys: dict[str, str]) -> None:
    settings = server_settings.replace(server={**FLOOD, "auth_refusal_delay": 0.3})
    timings: dict[int, list[float]] = {401: [], 429: []}
    lock = threading.Lock()

    def guess(url: str, stop: float) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while time.monotonic() < stop:
                began = time.perf_counter()
                code = client.get("/collections", headers=_bearer(_wrong_key())).status_code
                with lock:
                    timings[code].append(time.perf_counter() - began)

    served: list[float] = []
    with _serve(engine, settings) as (url, state), httpx.Client(base_url=url, headers=_bearer(keys["a"])) as valid:
        assert valid.get("/collections").status_code == 200
        stop = time.monotonic() + 2.0
        threads = [threading.Thread(target=guess, args=(url, stop)) for _ in range(4)]
        for t in threads:
            t.start()
        while time.monotonic() < stop:
            began = time.perf_counter()
            assert valid.get("/collections").status_code == 200
            served.append(time.perf_counter() - began)
        for t in threads:
            t.join()
    assert timings[429] and min(timings[429]) >= 0.29, timings[429][:5]
    # four connections, each refusal held 0.3 s: a few requests a second each, not hundreds
    assert len(timings[429]) <= 4 * (2.0 / 0.3 + 1), len(timings[429])
    assert len(timings[401]) == state.keys.kdf_calls - 1 <= 4  # the burst, less the valid key's first check
    assert sorted(served)[len(served) // 2] < 0.15  # the valid key is never held back


def test_the_cache_expires_and_revocation_counts_at_once(engine: Any, server_settings: Settings) -> None:
    from ragtune.server.auth import KeyStore

    settings = server_settings.replace(server={"rate_limit": 0, "key_cache_seconds": 1.0})
    store = KeyStore(engine.db)
    made = store.create("ttl", groups=["a"], scopes=["read"])
    wrong = _wrong_key()
    with _serve(engine, settings) as (url, state), httpx.Client(base_url=url) as client:
        ok = _bearer(made.key)

        def calls(key: dict[str, str], expected: int) -> int:
            before = state.keys.kdf_calls
            assert client.get("/collections", headers=key).status_code == expected
            return int(state.keys.kdf_calls - before)

        assert calls(ok, 200) == 1 and calls(ok, 200) == 0  # verified, then remembered
        assert calls(_bearer(wrong), 401) == 1 and calls(_bearer(wrong), 401) == 0
        time.sleep(1.3)
        assert calls(ok, 200) == 1  # the entry expired: verified again
        assert calls(_bearer(wrong), 401) == 1  # so did the wrong key's
        store.revoke(made.info.key_id)
        r = client.get("/collections", headers=ok)  # still remembered, but its row says revoked
        assert r.status_code == 401 and "was revoked" in r.json()["detail"]
        assert state.keys.kdf_calls == 4
    nocache = KeyStore(engine.db, cache_seconds=0)
    other = store.create("no cache", scopes=["read"])
    for _ in range(2):
        assert nocache.verify(other.key).key_id == other.info.key_id
    assert nocache.kdf_calls == 2  # 0 seconds: every check is a scrypt


@pytest.mark.parametrize("name, value", [
    ("auth_rate_limit", -1.0),
    ("auth_burst", 0),
    ("max_concurrent_verifications", 0),
    ("verification_wait", -0.1),
    ("key_cache_seconds", -1.0),
    ("auth_refusal_delay", -1.0),
])
def test_the_new_limits_are_validated(name: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=name):
        ServerSettings(**{name: value})
