"""The web console: its static files over HTTP, and a person's whole session in a real headless
Chromium (Debian's ``chromium``, driven by Playwright) against a real server with auth on.

The browser test saves screenshots in ``test-artifacts/console/`` at the top of the repository
(git ignores that folder), or in ``$RAGTUNE_TEST_ARTIFACTS/console/``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ragtune.server.console import STATIC

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
LAMPS = ("# Lighthouse\n\n## Lamps\n\nThe Lighthouse project keeps its spare lamps in the north tower, behind the "
         "blue door. The keeper checks the lamps every Sunday evening.\n\n## History\n\nThe lighthouse was built "
         "in 1871 by a guild of ship owners. Its first keeper was Agnes Moor.\n")
ANSWER = "The Lighthouse project keeps its spare lamps in the north tower, behind the blue door."


def test_console_is_served_without_a_key_and_fetches_nothing_from_elsewhere(live: Any) -> None:
    with live.client() as client:
        root = client.get("/")
        assert root.status_code == 307 and root.headers["location"] == "/console/"
        page = client.get("/console/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert client.get("/console").status_code in (307, 200)
        for name, kind in [("console.js", "javascript"), ("console.css", "text/css")]:
            r = client.get(f"/console/{name}")
            assert r.status_code == 200 and kind in r.headers["content-type"]
        assert client.get("/collections").status_code == 401  # the data still needs a key
        assert "/console/" not in client.get("/openapi.json").text
    for path in STATIC.iterdir():  # every asset is local: no URL to another host anywhere
        assert "://" not in path.read_text(), path.name


def test_a_trace_carries_the_text_of_the_chunks_the_caller_may_read(live: Any) -> None:
    with live.client("a") as a, live.client("b") as b, live.client("admin") as admin:
        found = a.post("/collections/handbook/search", json={"query": "Aurora budget", "top_k": 3}).json()
        trace = a.get(f"/traces/{found['trace_id']}", params={"chunks": True}).json()
        texts = {c["chunk_id"]: c["text"] for c in trace["chunks"]}
        assert texts == {h["chunk_id"]: h["text"] for h in found["hits"]}
        assert {c["uri"] for c in trace["chunks"]} <= {"aurora.md", "office.md"}
        assert "chunks" not in a.get(f"/traces/{found['trace_id']}").json()
        assert admin.get(f"/traces/{found['trace_id']}", params={"chunks": True}).json()["chunks"] == trace["chunks"]
        assert b.get(f"/traces/{found['trace_id']}", params={"chunks": True}).status_code == 404


@pytest.fixture(scope="module")
def artifacts() -> Path:
    base = os.environ.get("RAGTUNE_TEST_ARTIFACTS")
    folder = (Path(base) if base else Path(__file__).resolve().parents[2] / "test-artifacts") / "console"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    return folder


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is not installed: run `make chromium` (or deselect with -m 'not browser')")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.mark.browser
@pytest.mark.slow
def test_console_end_to_end_in_chromium(live: Any, chromium: Any, artifacts: Path, tmp_path: Path) -> None:
    """Log in with a real key, upload a file and wait for its ingest job, search it with a filter,
    ask (extractive, then the real SmolLM2 streaming), open a citation's highlighted passage, read
    the answer's trace, delete the document."""
    from playwright.sync_api import expect

    started = time.monotonic()
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    expect.set_options(timeout=60_000)
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error"
            and not m.text.startswith("Failed to load resource") else None)
    page.on("dialog", lambda d: d.accept())

    def shot(name: str) -> None:
        page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)

    # log in: a wrong key is refused with the server's message, the real one opens the console
    page.goto(f"{live.url}/")
    expect(page.locator("#login")).to_be_visible()
    shot("01-login")
    page.fill("#key", "rt_000000000000_" + "x" * 43)
    page.click("#login-form button")
    expect(page.locator("#status")).to_contain_text("invalid API key")
    page.fill("#key", live.keys["a_ingest"])
    page.click("#login-form button")
    expect(page.locator("#tabs")).to_be_visible()
    expect(page.locator("#collection")).to_have_value("handbook")
    assert page.evaluate("sessionStorage.getItem('ragtune.key')") == live.keys["a_ingest"]

    # upload: the ingest job's status is shown until it is done, then the document is listed
    page.click("#tabs [data-tab=documents]")
    source = tmp_path / "lighthouse.md"
    source.write_text(LAMPS)
    page.set_input_files("#files", str(source))
    page.fill("#acl", "a")
    page.fill("#metadata", '{"team": "lights"}')
    page.click("#upload-form button")
    expect(page.locator("#job")).to_have_attribute("data-status", "succeeded", timeout=180_000)
    expect(page.locator("#job")).to_contain_text("lighthouse.md: ingested")
    row = page.locator("#docs tr[data-uri='lighthouse.md']")
    expect(row.locator("td").nth(3)).to_have_text("a")  # the ACL given in the form
    shot("02-documents")

    # search with a metadata filter: only the new document passes it
    page.click("#tabs [data-tab=search]")
    page.fill("#query", "where are the spare lamps")
    page.fill("#filters", "team=lights")
    page.click("#search-form button")
    hits = page.locator("#hits tbody tr")
    expect(hits).to_have_count(2)  # the two sections of the new document, and nothing else
    expect(hits.first).to_contain_text("north tower")
    assert all("lighthouse.md" in text for text in hits.all_inner_texts())
    shot("03-search")

    # ask: the extractive answer streams in, its [n] opens the cited passage, highlighted
    page.click("#tabs [data-tab=ask]")
    page.fill("#question", "Where does the Lighthouse project keep its spare lamps?")
    page.select_option("#generator", "extractive")
    page.click("#ask-form button")
    cite = page.locator("#answer button.cite").first
    expect(cite).to_be_visible()
    expect(page.locator("#answer")).to_contain_text("north tower")
    cite.click()
    expect(page.locator("#passage")).to_be_visible()
    expect(page.locator("#passage-title")).to_contain_text("lighthouse.md")
    mark = page.locator("#passage-text mark")
    expect(mark).to_contain_text("Sunday evening")  # the cited chunk (the Lamps section) ...
    expect(mark.locator("strong")).to_have_text(ANSWER)  # ... with the quoted sentence emphasised
    assert "1871" not in mark.inner_text() and "1871" in page.locator("#passage-text").inner_text()
    shot("04-ask-citation")

    # the answer's trace: per-stage timings, the ranked chunks with scores, the rendered prompt
    page.click("#answer-meta button")
    expect(page.locator("#trace")).to_be_visible()
    expect(page.locator("#trace-links")).to_contain_text("model extractive")
    expect(page.locator("#timings")).to_contain_text("retrieve")
    expect(page.locator("#trace-results tbody tr").first).to_contain_text("lighthouse.md")
    expect(page.locator("#trace-results tr.cited")).not_to_have_count(0)
    expect(page.locator("#prompt")).to_contain_text("spare lamps in the north tower")
    expect(page.locator("#response")).to_contain_text("north tower")
    shot("05-trace")
    page.click("#trace-links button")  # the search behind the answer: its own stages and scores
    expect(page.locator("#trace-title")).to_contain_text("search")
    expect(page.locator("#timings")).to_contain_text("retrieve")

    # the server's own generator (the real SmolLM2): tokens show while the answer is still streaming
    page.click("#tabs [data-tab=ask]")
    page.select_option("#generator", "")
    page.fill("#max-tokens", "8")
    page.click("#ask-form button")
    page.wait_for_function("() => { const a = document.querySelector('#answer');"
                           " return a.classList.contains('streaming') && a.textContent.length > 0; }", polling=10)
    expect(page.locator("#answer-meta")).not_to_be_empty(timeout=180_000)
    assert page.locator("#answer").inner_text().strip()
    shot("06-ask-streamed")

    # delete the document
    page.click("#tabs [data-tab=documents]")
    expect(row).to_be_visible()
    row.locator("button", has_text="Delete").click()
    expect(page.locator("#status")).to_contain_text("deleted lighthouse.md")
    expect(row).to_have_count(0)
    shot("07-deleted")

    # a server without auth: no login, the console opens on the data at once
    from ragtune.server.app import create_app
    from tests.server.conftest import running

    with running(create_app(live.engine, live.settings, auth=False, start_worker=False), live.settings) as url:
        page.goto(f"{url}/")
        expect(page.locator("#tabs")).to_be_visible()
        expect(page.locator("#who")).to_have_text("auth off")
        expect(page.locator("#login")).to_be_hidden()
    context.close()
    assert not errors, errors
    local = ("http://127.0.0.1:", "data:")
    outside = [u for u in requests if not u.startswith(local)]
    assert not outside, outside
    print(f"\nconsole screenshots: {artifacts} ({time.monotonic() - started:.1f} s in the browser)")
