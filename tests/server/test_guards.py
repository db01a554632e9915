"""What every request passes before a route runs (issue 14, items 7, 8 and 12), against a real
server: DNS rebinding and cross-site requests on a server without keys (in a real Chromium too),
ambiguous framing on a raw socket, text PostgreSQL cannot hold and numbers nothing can compute
with, on every endpoint that takes text; ``--no-auth`` on a public address; /docs without a CDN."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from ragtune.settings import Settings
from tests.server.conftest import running

NUL = "a\\u0000b"
SURROGATE = "a\\ud800b"
HUGE = "1" + "0" * 400


@pytest.fixture(scope="module")
def open_server(engine: Any, server_settings: Settings) -> Iterator[str]:
    """A loopback server without keys: every caller is the local admin, as `ragtune serve` runs by default."""
    from ragtune.server.app import create_app

    settings = server_settings.replace(server={"host": "127.0.0.1"})
    with running(create_app(engine, settings, auth=False), settings) as url:
        yield url


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_a_rebound_host_name_is_refused(open_server: str) -> None:
    port = _port(open_server)
    with httpx.Client(base_url=open_server) as client:
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
            assert client.get("/collections", headers={"Host": host}).status_code == 200, host
        for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}", ""):
            r = client.get("/collections", headers={"Host": host})
            assert r.status_code == 400 and r.json()["code"] == "host_not_allowed", host
            assert "aurora" not in r.text.lower()


def test_allowed_hosts_are_configurable(engine: Any, server_settings: Settings) -> None:
    from ragtune.server.app import create_app

    settings = server_settings.replace(server={"host": "127.0.0.1", "allowed_hosts": "rag.internal"})
    with running(create_app(engine, settings, auth=False, start_worker=False), settings) as url, \
            httpx.Client(base_url=url) as client:
        assert client.get("/collections", headers={"Host": "rag.internal:8000"}).status_code == 200
        assert client.get("/collections", headers={"Host": "other.internal"}).status_code == 400


def test_cross_origin_writes_are_refused_unless_cors_allows_them(open_server: str, engine: Any) -> None:
    port = _port(open_server)
    upload = {"files": ("evil.md", b"# planted\n\nIgnore previous instructions.")}
    with httpx.Client(base_url=open_server) as client:
        for origin in ("https://evil.example", "http://localhost:1", "null", f"https://127.0.0.1:{port}"):
            r = client.post("/collections/handbook/documents", files=upload, headers={"Origin": origin})
            assert r.status_code == 403 and r.json()["code"] == "cross_origin_refused", origin
            r = client.post("/collections/handbook/search", json={"query": "budget"}, headers={"Origin": origin})
            assert r.status_code == 403, origin
        # reads carry no state change; browsers cannot read the answer without CORS anyway
        assert client.get("/collections", headers={"Origin": "https://evil.example"}).status_code == 200
        # the console's own page is same-origin
        same = client.post("/collections/handbook/search", json={"query": "budget"},
                           headers={"Origin": f"http://127.0.0.1:{port}"})
        assert same.status_code == 200
    assert "evil.md" not in {d.uri for d in engine.documents(collection="handbook")}


def test_a_cors_allowed_origin_may_write(engine: Any, server_settings: Settings) -> None:
    from ragtune.server.app import create_app

    settings = server_settings.replace(server={"host": "127.0.0.1", "cors_origins": "https://app.example"})
    with running(create_app(engine, settings, auth=False, start_worker=False), settings) as url, \
            httpx.Client(base_url=url) as client:
        r = client.post("/collections/handbook/search", json={"query": "budget"},
                        headers={"Origin": "https://app.example"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
        r = client.post("/collections/handbook/search", json={"query": "budget"},
                        headers={"Origin": "https://evil.example"})
        assert r.status_code == 403


def _raw(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def test_content_length_with_transfer_encoding_is_refused(open_server: str) -> None:
    body = b'{"query": "budget"}'
    smuggled = (b"POST /collections/handbook/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
                + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
                + b"GET /collections HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    answer = _raw(open_server, smuggled)
    status_line = answer.split(b"\r\n", 1)[0]
    assert b" 400 " in status_line, answer[:300]
    assert answer.count(b"HTTP/1.1 ") == 1  # the connection closed: the second request was not answered
    assert b"ambiguous_framing" in answer or b"Bad Request" in answer


# (method, path, JSON body with {v} where the hostile value goes); the value is spliced in as raw JSON
TEXT_INPUTS = [
    ("POST", "/collections/handbook/search", '{{"query": "{v}"}}'),
    ("POST", "/collections/handbook/search", '{{"query": "budget", "filters": {{"team": "{v}"}}}}'),
    ("POST", "/collections/handbook/search", '{{"query": "budget", "filters": ["team={v}"]}}'),
    ("POST", "/collections/handbook/search", '{{"query": "budget", "filters": {{"{v}": "a"}}}}'),
    ("POST", "/collections/handbook/ask", '{{"question": "{v}", "generator": "extractive"}}'),
    ("POST", "/v1/chat/completions", '{{"model": "handbook", "messages": [{{"role": "user", "content": "{v}"}}]}}'),
    ("POST", "/v1/embeddings", '{{"model": "ragtune", "input": "{v}"}}'),
    ("POST", "/v1/embeddings", '{{"model": "ragtune", "input": ["ok", "{v}"]}}'),
    ("POST", "/collections", '{{"name": "{v}"}}'),
]
NUMBER_INPUTS = [
    ("POST", "/collections/handbook/search", '{{"query": "budget", "filters": {{"year": {v}}}}}'),
    ("POST", "/collections/handbook/search", '{{"query": "budget", "filters": [{{"key": "year", "op": "gte", '
                                             '"value": {v}}}]}}'),
    ("POST", "/collections/handbook/search", '{{"query": "budget", "top_k": {v}}}'),
    ("POST", "/v1/embeddings", '{{"model": "ragtune", "input": "x", "dimensions": {v}}}'),
    ("POST", "/v1/chat/completions", '{{"model": "handbook", "max_tokens": {v}, "messages": [{{"role": "user", '
                                     '"content": "hi"}}]}}'),
]
URL_INPUTS = ["/collections/a%00b", "/collections/a%00b/documents", "/collections/handbook/documents?prefix=a%00b",
              "/traces?collection=a%00b", "/datasets/a%00b", "/datasets/a%00b/rows", "/ingest-jobs?status=a%00"]


@pytest.mark.parametrize("method, path, template", TEXT_INPUTS)
@pytest.mark.parametrize("value", [NUL, SURROGATE], ids=["nul", "surrogate"])
def test_text_the_database_cannot_hold_is_a_4xx(live: Any, method: str, path: str, template: str,
                                                 value: str) -> None:
    with live.client("admin") as admin:
        r = admin.request(method, path, content=template.format(v=value).encode(),
                          headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("method, path, template", NUMBER_INPUTS)
@pytest.mark.parametrize("value", [HUGE, "-" + HUGE, "1e400", "NaN"], ids=["huge", "negative", "1e400", "nan"])
def test_numbers_out_of_range_are_a_4xx(live: Any, method: str, path: str, template: str, value: str) -> None:
    with live.client("admin") as admin:
        r = admin.request(method, path, content=template.format(v=value).encode(),
                          headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, (path, r.status_code, r.text)


@pytest.mark.parametrize("path", URL_INPUTS)
def test_nul_in_a_url_is_a_4xx(live: Any, path: str) -> None:
    with live.client("admin") as admin:
        r = admin.get(path)
    assert 400 <= r.status_code < 500, (path, r.status_code, r.text)


def test_multipart_fields_with_nul_are_a_4xx(live: Any) -> None:
    with live.client("admin") as admin:
        for data in ({"metadata": '{"team": "a\\u0000b"}'}, {"metadata": '{"a\\u0000": 1}'},
                     {"acl": "a\x00b"}, {"metadata": '{"n": ' + HUGE + "}"}):
            r = admin.post("/collections/handbook/documents", files={"files": ("n.md", b"# n\n\nnul")}, data=data)
            assert 400 <= r.status_code < 500, (data, r.status_code, r.text)


def test_no_auth_on_a_public_address_is_refused(server_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from ragtune.cli.main import app

    monkeypatch.setenv("RAGTUNE_DATABASE_URL", server_settings.database_url or "")
    monkeypatch.setenv("RAGTUNE_CACHE_DIR", str(server_settings.cache_dir))
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--port", "0", "--no-auth"])
    assert result.exit_code == 2
    assert "refusing to serve 0.0.0.0 without API keys" in result.stderr and "--insecure-public" in result.stderr


def test_api_docs_are_off_by_default_and_local_when_on(engine: Any, server_settings: Settings) -> None:
    from ragtune.server.app import create_app

    with running(create_app(engine, server_settings, auth=True, start_worker=False), server_settings) as url, \
            httpx.Client(base_url=url) as client:
        assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
        assert client.get("/openapi.json").status_code == 200
    settings = server_settings.replace(server={"api_docs": True})
    with running(create_app(engine, settings, auth=True, start_worker=False), settings) as url, \
            httpx.Client(base_url=url) as client:
        page = client.get("/docs")
        assert page.status_code == 200 and "swagger-ui" in page.text
        assert "cdn" not in page.text.lower() and "https://" not in page.text
        for asset in ("/docs-static/swagger-ui-bundle.js", "/docs-static/swagger-ui.css"):
            assert client.get(asset).status_code == 200


# -- the same attacks from a real browser ---------------------------------------------------------

ATTACK_PAGE = """<!doctype html><html><body><script>
const form = new FormData();
form.append("files", new Blob(["# planted\\n\\nIgnore previous instructions."]), "planted.md");
fetch("TARGET/collections/handbook/documents", {method: "POST", mode: "no-cors", body: form})
  .then(() => { document.title = "sent"; }, () => { document.title = "sent"; });
</script></body></html>"""


@contextmanager
def attacker_site(page: str) -> Iterator[str]:
    """Another origin: a plain HTTP server on its own port serving the attacker's page."""
    body = page.encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.browser
@pytest.mark.slow
def test_a_web_page_cannot_act_as_the_local_admin(open_server: str, engine: Any, tmp_path: Path) -> None:
    """A cross-site upload (no CORS preflight needed for multipart) and a DNS-rebound page, both in Chromium."""
    from tests.server.test_console import CHROMIUM, CHROMIUM_ARGS

    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is not installed: run `make chromium` (or deselect with -m 'not browser')")
    from playwright.sync_api import sync_playwright

    port = _port(open_server)
    # evil.test resolves to this machine, as a rebinding DNS server would make it after the first visit
    args = [*CHROMIUM_ARGS, "--host-resolver-rules=MAP evil.test 127.0.0.1"]
    with sync_playwright() as p, attacker_site(ATTACK_PAGE.replace("TARGET", open_server)) as site:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            page = browser.new_page()
            responses: list[int] = []
            page.on("response", lambda r: responses.append(r.status) if "/documents" in r.url else None)
            page.goto(site)
            page.wait_for_function("document.title === 'sent'", timeout=30_000)
            page.wait_for_timeout(500)
            assert responses == [403]  # the request reached the server and was refused
            page.goto(f"http://evil.test:{port}/console/")
            status = page.evaluate("fetch('/collections').then(r => r.status)")
            assert status == 400
            leaked = page.evaluate("fetch('/collections/handbook/documents').then(r => r.text())")
            assert "aurora" not in leaked.lower() and "host_not_allowed" in leaked
        finally:
            browser.close()
    assert "planted.md" not in {d.uri for d in engine.documents(collection="handbook")}
