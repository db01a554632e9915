"""A real server for the server tests: uvicorn on a free loopback port in a thread, over one real
database per test module (cloned from the migrated template), the real embedder, and the real
packaged SmolLM2 for the answers that stream tokens (tiny ``max_tokens``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ragtune.models import LoadedDocument
from ragtune.testing.serve import serve_in_thread
from tests.helpers import database_from_template

DOCS = {
    "public": [LoadedDocument(uri="office.md", text="The office opens at nine in the morning on weekdays. "
                              "Visitors sign in at the front desk.", metadata={"team": "all"})],
    "a": [LoadedDocument(uri="aurora.md", text="Project Aurora has a budget of four million euros. "
                         "Aurora ships its first satellite in March.", metadata={"team": "a"})],
    "b": [LoadedDocument(uri="borealis.md", text="Project Borealis keeps its launch code zebra-42 in the vault. "
                         "Borealis reports to the board each quarter.", metadata={"team": "b"})],
}


@dataclass
class Live:
    url: str
    engine: Any
    settings: Any
    keys: dict[str, str]
    app: Any

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys.get(key, key)}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kwargs)


# Serve an app in a thread on a free loopback port (the tests' name for it).
running = serve_in_thread


@pytest.fixture(scope="module")
def module_database_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    with database_from_template(pg_admin_url, template_db, "t_") as url:
        yield url


@pytest.fixture(scope="module")
def server_settings(module_database_url: str, tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Any:
    from ragtune.settings import Settings

    return Settings.of(data_dir=tmp_path_factory.mktemp("server") / "data", database_url=module_database_url,
                       cache_dir=cache_dir, generator="smollm2", max_new_tokens=16,
                       server={"rate_limit": 0, "max_upload_bytes": 16 * 1024 * 1024, "max_top_k": 50})


@pytest.fixture(scope="module")
def engine(server_settings: Any, embedder: Any) -> Iterator[Any]:
    from ragtune.engine import Ragtune

    rt = Ragtune(server_settings, embedder=embedder)
    for group, docs in DOCS.items():
        rt.ingest_documents(docs, collection="handbook", acl=[] if group == "public" else [group])
    try:
        yield rt
    finally:
        rt.close()


@pytest.fixture(scope="module")
def keys(engine: Any) -> dict[str, str]:
    from ragtune.server.auth import KeyStore

    store = KeyStore(engine.db)
    made = {
        "admin": store.create("admin", scopes=["admin"]),
        "a": store.create("reader a", groups=["a"], scopes=["read"]),
        "b": store.create("reader b", groups=["b"], scopes=["read"]),
        "a_ingest": store.create("ingest a", groups=["a"], scopes=["read", "ingest"]),
        "revoked": store.create("gone", groups=["a"], scopes=["read"]),
    }
    store.revoke(made["revoked"].info.key_id)
    return {name: m.key for name, m in made.items()}


@pytest.fixture(scope="module")
def live(engine: Any, server_settings: Any, keys: dict[str, str]) -> Iterator[Live]:
    from ragtune.server.app import create_app

    app = create_app(engine, server_settings, auth=True)
    with running(app, server_settings) as url:
        yield Live(url, engine, server_settings, keys, app)
