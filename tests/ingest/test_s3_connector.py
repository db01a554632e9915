"""Syncing an S3 source (issue 16, item 3): moto's S3 server on loopback, real files put with boto3,
the real database and embedder. Objects are read by the loaders of files and stored under
``s3://bucket/key``; a second sync compares ETags and downloads only what changed."""

from __future__ import annotations

import gzip
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from ragtune.errors import ConfigError, NotFoundError
from ragtune.testing.files import pdf_bytes, text_page
from tests.cli.runner import invoke

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

FILES: dict[str, bytes] = {
    "docs/leave.md": b"# Leave policy\n\nStaff get thirty days of paid leave each year, booked through the portal.\n",
    "docs/canteen.html": b"<html><head><title>Canteen</title></head><body><h1>Canteen</h1>"
                         b"<p>The canteen serves hot lunch from noon until two o'clock.</p></body></html>",
    "docs/notes/parking.txt.gz": gzip.compress(b"The parking garage closes at midnight and opens at six.\n"),
    "docs/library.pdf": pdf_bytes([text_page("The library lends laptops to students for one week")]),
}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A client of the moto server; the environment points ragtune's connector at it too."""
    for name, value in {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    return boto3.session.Session().client("s3", endpoint_url=s3_endpoint)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """The S3 operations every boto3 client in this process makes, by name (GetObject...)."""
    from botocore.client import BaseClient

    made: Counter[str] = Counter()
    original = BaseClient._make_api_call

    def counted(self: Any, operation: str, params: Any) -> Any:
        made[operation] += 1
        return original(self, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", counted)
    return made


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"rt-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    for key, body in FILES.items():
        s3.put_object(Bucket=name, Key=key, Body=body)
    return name


@pytest.fixture
def env(database_url: str, cache_dir: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's project: the test database, in a temporary working folder."""
    monkeypatch.setenv("RAGTUNE_DATABASE_URL", database_url)
    monkeypatch.setenv("RAGTUNE_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(tmp_path)


def uris(rt: Any, collection: str) -> set[str]:
    return {d.uri for d in rt.documents(collection=collection)}


def top_uri(rt: Any, query: str, collection: str) -> str:
    hits = rt.search(query, collection=collection, top_k=1, mode="bm25").hits
    assert hits, query
    return str(hits[0].uri)


def test_sync_stores_objects_under_their_s3_uris_and_finds_them(rt: Any, s3: Any, bucket: str,
                                                                calls: Counter[str]) -> None:
    report = rt.sync_source(f"s3://{bucket}/docs/", collection="remote")
    assert report.failed == []
    assert (report.added, report.updated, report.unchanged, report.removed) == (4, 0, 0, 0)
    assert report.total == 4 and report.files == 4
    assert calls["GetObject"] == 4
    stored = uris(rt, "remote")
    assert {u.split("!/")[0] for u in stored} == {f"s3://{bucket}/{key}" for key in FILES}
    assert top_uri(rt, "paid leave portal", "remote") == f"s3://{bucket}/docs/leave.md"
    assert top_uri(rt, "canteen hot lunch", "remote") == f"s3://{bucket}/docs/canteen.html"
    assert top_uri(rt, "parking garage midnight", "remote").startswith(f"s3://{bucket}/docs/notes/parking.txt.gz")
    assert top_uri(rt, "library laptops students", "remote") == f"s3://{bucket}/docs/library.pdf"
    # the ETag is kept with the document, next to where the object came from
    document, _, _ = rt.document(f"s3://{bucket}/docs/leave.md", collection="remote")
    etag = s3.head_object(Bucket=bucket, Key="docs/leave.md")["ETag"].strip('"')
    assert document.metadata["etag"] == etag
    assert document.metadata["source_path"] == f"s3://{bucket}/docs/leave.md"


def test_only_changed_objects_are_downloaded(rt: Any, s3: Any, bucket: str, calls: Counter[str]) -> None:
    source = f"s3://{bucket}/docs/"
    rt.sync_source(source, collection="remote")

    calls.clear()  # a second sync with nothing changed downloads nothing
    again = rt.sync_source(source, collection="remote")
    assert (again.added, again.updated, again.unchanged, again.removed, len(again.failed)) == (0, 0, 4, 0, 0)
    assert calls["GetObject"] == 0 and calls["ListObjectsV2"] >= 1
    assert again.embedded == 0

    calls.clear()  # one object changed: only it is downloaded and updated
    s3.put_object(Bucket=bucket, Key="docs/leave.md",
                  Body=b"# Leave policy\n\nStaff now get thirty-five days of sabbatical leave each year.\n")
    changed = rt.sync_source(source, collection="remote")
    assert (changed.added, changed.updated, changed.unchanged, changed.removed) == (0, 1, 3, 0)
    assert changed.failed == [] and changed.total == 4
    assert calls["GetObject"] == 1
    assert top_uri(rt, "sabbatical", "remote") == f"s3://{bucket}/docs/leave.md"

    calls.clear()  # one object deleted: its document goes, without a download
    s3.delete_object(Bucket=bucket, Key="docs/canteen.html")
    removed = rt.sync_source(source, collection="remote")
    assert (removed.added, removed.updated, removed.unchanged, removed.removed) == (0, 0, 3, 1)
    assert calls["GetObject"] == 0
    assert f"s3://{bucket}/docs/canteen.html" not in uris(rt, "remote")
    assert all("canteen" not in h.uri for h in rt.search("canteen hot lunch", collection="remote", mode="bm25").hits)


def test_a_corrupt_object_fails_by_its_uri_and_the_others_land(rt: Any, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="docs/broken.pdf", Body=b"%PDF-1.4\nthis is not a pdf body at all")
    report = rt.sync_source(f"s3://{bucket}/docs/", collection="remote")
    assert [f.source for f in report.failed] == [f"s3://{bucket}/docs/broken.pdf"]
    assert report.failed[0].error == "corrupt_file"
    assert report.added == 4 and report.total == 5
    # still failing the next time, and nothing else is downloaded again
    again = rt.sync_source(f"s3://{bucket}/docs/", collection="remote")
    assert (again.unchanged, len(again.failed), again.removed) == (4, 1, 0)


def test_new_documents_inherit_and_stored_ones_keep_their_acl_and_metadata(rt: Any, s3: Any, bucket: str) -> None:
    source = f"s3://{bucket}/docs/"
    rt.sync_source(source, collection="remote", acl=["hr"], metadata={"team": "hr"})
    s3.put_object(Bucket=bucket, Key="docs/new.md", Body=b"# Pensions\n\nThe pension plan matches five percent.\n")
    s3.put_object(Bucket=bucket, Key="docs/leave.md", Body=b"# Leave\n\nLeave is now booked by e-mail.\n")
    report = rt.sync_source(source, collection="remote")
    assert (report.added, report.updated, report.unchanged) == (1, 1, 3)
    for key in ("docs/new.md", "docs/leave.md"):
        document, _, _ = rt.document(f"s3://{bucket}/{key}", collection="remote")
        assert document.acl == ("hr",) and document.metadata["team"] == "hr"
    # new attributes given for unchanged objects are applied (the objects are read again for it)
    relabelled = rt.sync_source(source, collection="remote", metadata={"team": "people"})
    assert relabelled.updated == 5 and relabelled.unchanged == 0
    assert rt.document(f"s3://{bucket}/docs/new.md", collection="remote")[0].metadata["team"] == "people"


def test_a_missing_bucket_is_an_error_naming_it(rt: Any, s3: Any) -> None:
    with pytest.raises(NotFoundError, match="no-such-bucket-42"):
        rt.sync_source("s3://no-such-bucket-42/docs/", collection="remote")
    with pytest.raises(ConfigError, match="invalid bucket name"):
        rt.sync_source("s3://Bad_Bucket/x", collection="remote")
    with pytest.raises(ConfigError, match="no connector for the source 'gs://x/y'"):
        rt.sync_source("gs://x/y", collection="remote")


def test_the_cli_syncs_a_source(env: None, s3: Any, bucket: str) -> None:
    code, out, err = invoke("sync", f"s3://{bucket}/docs/", "-c", "remote")
    assert code == 0, out + err
    assert "4" in out
    code, out, err = invoke("sync", f"s3://{bucket}/docs/", "-c", "remote", "--watch")
    assert code != 0 and "--watch" in out + err
    code, out, err = invoke("sync", "s3://no-such-bucket-42/", "-c", "remote")
    assert code != 0 and "no-such-bucket-42" in out + err


def test_a_scheduled_s3_sync_runs_as_an_ingest_job(rt: Any, s3: Any, bucket: str, calls: Counter[str]) -> None:
    from ragtune.server.jobs import JobStore, JobWorker

    schedule = rt.add_schedule(f"s3://{bucket}/docs/", every_s=3600, collection="remote")
    store = JobStore(rt.db, rt.settings.data_dir / "uploads")
    worker = JobWorker(rt, store)
    (job_id,) = store.enqueue_due()
    assert store.enqueue_due() == []  # never two runs of one schedule at once
    assert rt.schedules()[0].next_run_at is None
    worker._run(job_id)
    job = store.get(job_id)
    assert job.status == "succeeded" and job.source == f"s3://{bucket}/docs/" and job.schedule_id == schedule.id
    assert job.report is not None and job.report["added"] == 4 and job.report["failed"] == 0
    assert rt.schedules()[0].next_run_at is not None and rt.schedules()[0].last_status == "succeeded"
    assert store.enqueue_due() == []  # the next run is an hour away


class MemoryConnector:
    """Any object with ``uri`` and ``list`` is a connector: objects held in a dict, reads counted."""

    def __init__(self, uri: str, objects: dict[str, bytes]) -> None:
        self.uri = uri
        self.objects = objects
        self.reads: Counter[str] = Counter()

    def list(self) -> Iterator[Any]:
        import hashlib

        from ragtune.ingest.connectors import RemoteObject

        for key, body in sorted(self.objects.items()):
            def read(key: str = key) -> bytes:
                self.reads[key] += 1
                return self.objects[key]

            yield RemoteObject(uri=f"{self.uri}{key}", etag=hashlib.md5(body).hexdigest(), size=len(body), read=read)


def test_any_connector_plugs_in(rt: Any) -> None:
    from ragtune.ingest.connectors import Connector

    source = MemoryConnector("mem://box/", {"a.md": b"# Alpha\n\nAlpha particles are helium nuclei.\n",
                                            "b.txt": b"Beta decay emits an electron.\n"})
    assert isinstance(source, Connector)
    first = rt.sync_source(source, collection="memory")
    assert (first.added, dict(source.reads)) == (2, {"a.md": 1, "b.txt": 1})
    source.objects["b.txt"] = b"Beta decay emits an electron or a positron.\n"
    second = rt.sync_source(source, collection="memory")
    assert (second.updated, second.unchanged, dict(source.reads)) == (1, 1, {"a.md": 1, "b.txt": 2})
