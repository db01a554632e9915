"""Who may replace a stored document through the server, checked when the job writes, with the row
locked (issue 14, items 3 and 11): a write queued before a restricted document appeared cannot
replace it; an ingest key cannot hide a public document or narrow a shared one; and a refused
replacement reads the same whether or not the name belongs to a document the key cannot read."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from ragtune.models import LoadedDocument, Principal
from tests.server.conftest import running


def _job(client: httpx.Client, response: httpx.Response, seconds: float = 60) -> dict[str, Any]:
    assert response.status_code in (200, 202), response.text
    job = response.json()
    deadline = time.monotonic() + seconds
    while job["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, job
        job = client.get(f"/ingest-jobs/{job['id']}", params={"wait": 5}).json()
    return job


def _stored(engine: Any, uri: str) -> tuple[tuple[str, ...], str]:
    doc, text, _ = engine.document(uri, collection="handbook")
    return doc.acl, text


def _upload(client: httpx.Client, name: str, text: str, **form: str) -> httpx.Response:
    return client.post("/collections/handbook/documents", files={"files": (name, text.encode())}, data=form,
                       params={"wait": 30})


@pytest.fixture(scope="module")
def ingest_keys(engine: Any) -> dict[str, str]:
    from ragtune.server.auth import KeyStore

    store = KeyStore(engine.db)
    return {"a": store.create("ingest a", groups=["a"], scopes=["read", "ingest"]).key,
            "ab": store.create("ingest a+b", groups=["a", "b"], scopes=["read", "ingest"]).key,
            "admin": store.create("admin 2", scopes=["admin"]).key}


def test_a_queued_write_cannot_replace_a_document_restricted_after_it_was_queued(
        engine: Any, server_settings: Any, ingest_keys: dict[str, str]) -> None:
    from ragtune.server.app import create_app

    app = create_app(engine, server_settings, auth=True, start_worker=False)
    state = app.state.ragtune
    with running(app, server_settings) as url, \
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ingest_keys['a']}"}, timeout=60) as a:
        queued = a.post("/collections/handbook/documents", files={"files": ("payroll.md", b"# Payroll\n\nAll public.")})
        assert queued.status_code == 202 and queued.json()["status"] == "queued"
        # while the job waits, an admin stores a restricted document of that name
        engine.ingest_documents([LoadedDocument(uri="payroll.md", text="Payroll of the board: secret-otter-7.")],
                                collection="handbook", acl=["b"])
        state.worker.start()
        try:
            job = _job(a, queued)
        finally:
            state.worker.stop(30)
    assert job["status"] == "failed"
    assert [e["code"] for e in job["files"][0]["errors"]] == ["replace_denied"]
    acl, text = _stored(engine, "payroll.md")
    assert acl == ("b",) and "secret-otter-7" in text
    hits = engine.search("payroll board", collection="handbook", mode="bm25", principal=Principal("anon")).hits
    assert all(h.uri != "payroll.md" for h in hits)


def test_an_ingest_key_cannot_hide_a_public_document(live: Any, ingest_keys: dict[str, str]) -> None:
    engine = live.engine
    engine.ingest_documents([LoadedDocument(uri="canteen.md", text="The canteen serves lunch from noon.")],
                            collection="handbook")
    with live.client(ingest_keys["a"]) as a:
        job = _job(a, _upload(a, "canteen.md", "The canteen is closed.", acl="a"))
        assert job["status"] == "failed" and job["files"][0]["errors"][0]["code"] == "acl_change"
        job = _job(a, _upload(a, "canteen.md", "The canteen is closed.", acl="a", change_acl="true"))
        assert job["status"] == "failed" and job["files"][0]["errors"][0]["code"] == "replace_denied"
        assert "only an admin" in job["files"][0]["errors"][0]["reason"]
        assert _stored(engine, "canteen.md") == ((), "The canteen serves lunch from noon.")
        # new content without an ACL keeps the public one: allowed, and still public
        job = _job(a, _upload(a, "canteen.md", "The canteen serves lunch from half past twelve."))
        assert job["status"] == "succeeded"
        assert _stored(engine, "canteen.md")[0] == ()
    with live.client(ingest_keys["admin"]) as admin:
        job = _job(admin, _upload(admin, "canteen.md", "Staff canteen, staff only.", acl="a", change_acl="true"))
        assert job["status"] == "succeeded"
    assert _stored(engine, "canteen.md") == (("a",), "Staff canteen, staff only.")


def test_an_ingest_key_changes_only_acls_within_its_own_groups(live: Any, ingest_keys: dict[str, str]) -> None:
    engine = live.engine
    engine.ingest_documents([LoadedDocument(uri="shared.md", text="Shared by a and b: the joint roadmap.")],
                            collection="handbook", acl=["a", "b"])
    engine.ingest_documents([LoadedDocument(uri="team-a.md", text="Team a notes: the sprint plan.")],
                            collection="handbook", acl=["a"])
    with live.client(ingest_keys["a"]) as a:
        # narrowing a document shared with b takes it away from b: refused for a key of a only
        job = _job(a, _upload(a, "shared.md", "Shared by a and b: the joint roadmap.", acl="a", change_acl="true"))
        assert job["status"] == "failed" and job["files"][0]["errors"][0]["code"] == "replace_denied"
        # new content keeps its ACL
        assert _job(a, _upload(a, "shared.md", "Shared by a and b: roadmap v2."))["status"] == "succeeded"
        assert _stored(engine, "shared.md") == (("a", "b"), "Shared by a and b: roadmap v2.")
        # a document of its own group only: the key may publish it
        assert _job(a, _upload(a, "team-a.md", "Team a notes: the sprint plan.", acl="",
                               change_acl="true"))["status"] == "succeeded"
        assert _stored(engine, "team-a.md")[0] == ()
    with live.client(ingest_keys["ab"]) as ab:
        job = _job(ab, _upload(ab, "shared.md", "Shared with a only.", acl="a", change_acl="true"))
        assert job["status"] == "succeeded" and _stored(engine, "shared.md")[0] == ("a",)


def test_a_refused_replacement_does_not_tell_a_hidden_document_from_a_protected_one(
        live: Any, ingest_keys: dict[str, str]) -> None:
    engine = live.engine
    _, borealis_text, _ = engine.document("borealis.md", collection="handbook")  # b's, hidden from a
    engine.ingest_documents([LoadedDocument(uri="notice.md", text="Notice board: the lift is out of order.")],
                            collection="handbook")
    with live.client(ingest_keys["a"]) as a:
        hidden = _upload(a, "borealis.md", borealis_text, acl="a", change_acl="true")  # even the very same text
        protected = _upload(a, "notice.md", "Notice board: the lift is out of order.", acl="a", change_acl="true")
        assert hidden.status_code == protected.status_code
        hidden_job, protected_job = _job(a, hidden), _job(a, protected)
    for job in (hidden_job, protected_job):
        assert job["status"] == "failed"
        assert [e["code"] for e in job["files"][0]["errors"]] == ["replace_denied"]
    # the hidden one's reason is the general one, saying nothing about readers, groups or content
    assert hidden_job["files"][0]["errors"][0]["reason"] == "this key may not replace a document of that name"
    for job in (hidden_job, protected_job):
        text = str(job)
        assert "cannot read" not in text and "exists" not in text and "zebra" not in text
    assert _stored(engine, "borealis.md") == (("b",), borealis_text)


def test_an_unchanged_hidden_document_is_not_confirmed_by_an_unchanged_answer(
        live: Any, ingest_keys: dict[str, str]) -> None:
    """Same bytes as a hidden document: refused, never counted "unchanged" (which would confirm the text)."""
    engine = live.engine
    _, aurora_text, _ = engine.document("aurora.md", collection="handbook")
    engine.ingest_documents([LoadedDocument(uri="secret.txt", text="the otter sleeps at dawn")],
                            collection="handbook", acl=["b"])
    report = engine.ingest_documents([LoadedDocument(uri="secret.txt", text="the otter sleeps at dawn")],
                                     collection="handbook", principal=Principal("key:x", frozenset({"a"})))
    assert report.unchanged == 0 and [f.error for f in report.failed] == ["replace_denied"]
    assert aurora_text  # the a key's own document is untouched by any of this
