"""The web console: its static files over HTTP, and a person's whole session in a real headless
Chromium (Debian's ``chromium``, driven by Playwright) against a real server with auth on.

The browser tests save screenshots (the session's steps, and ``tab-<name>.png`` for every tab) in
``test-artifacts/console/`` at the top of the repository (git ignores that folder), or in
``$RAGTUNE_TEST_ARTIFACTS/console/``.
"""

from __future__ import annotations

import os
import re
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
    expect(page.locator("#login > .status")).to_contain_text("invalid API key")
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

    # thumbs on the answer: sent once, then the buttons say so; the trace shows it
    page.click("#answer-meta button.thumbs[data-thumbs=down]")
    expect(page.locator("#answer-meta .thumbs-note")).to_contain_text("marked wrong")
    expect(page.locator("#answer-meta button.thumbs").first).to_be_disabled()

    # the answer's trace: per-stage timings, the ranked chunks with scores, the rendered prompt
    page.click("#answer-meta button:not(.thumbs)")
    expect(page.locator("#trace")).to_be_visible()
    expect(page.locator("#trace-links")).to_contain_text("model extractive")
    expect(page.locator("#trace-links")).to_contain_text("feedback: thumbs down")
    # the waterfall: every span of the trace, nested, each opening its attributes
    waterfall = page.locator("#waterfall tbody")
    for name in ("ask", "· retrieval", "· · retrieve", "· · · dense", "· prompt", "· support", "· feedback"):
        expect(waterfall).to_contain_text(name)
    waterfall.locator("tr", has_text="· retrieval").first.click()
    expect(page.locator("#span-attributes")).to_contain_text('"gen_ai.operation.name": "retrieval"')
    shot("05b-spans")
    # the list's filters: only the answer with negative feedback, then all again
    page.select_option("#trace-feedback", "negative")
    expect(page.locator("#trace-list tbody tr")).to_have_count(1)
    expect(page.locator("#trace-list tbody tr")).to_contain_text("ask")
    page.select_option("#trace-outcome", "abstained=true")
    expect(page.locator("#trace-list tbody tr")).to_have_count(0)
    page.select_option("#trace-outcome", "")
    page.select_option("#trace-feedback", "")
    expect(page.locator("#trace-list tbody tr")).not_to_have_count(1)
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

    # the dashboard: one chart per measure, drawn from the traces of this session
    page.click("#tabs [data-tab=dashboard]")
    charts = page.locator("#charts .chart")
    expect(charts).to_have_count(6)
    stages = page.locator('#charts .chart[data-title="Latency p50 by stage"]')
    expect(stages.locator('polyline[data-series="retrieval"]')).to_have_count(1)
    expect(stages.locator('polyline[data-series="generate"]')).to_have_count(1)
    expect(page.locator('#charts .chart[data-title="Requests"] .legend')).to_contain_text("ask")
    expect(page.locator('#charts .chart[data-title="Feedback"] .legend')).to_contain_text("negative: 1")
    expect(page.locator('#charts .chart[data-title="Generation tokens"] .legend')).to_contain_text("out")
    shot("06b-dashboard")

    # delete the document
    page.click("#tabs [data-tab=documents]")
    expect(row).to_be_visible()
    row.locator("button", has_text="Delete").click()
    expect(page.locator("#documents > .status")).to_contain_text("deleted lighthouse.md")
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


# A path of about 200 characters, hyphenated so that a browser would happily wrap it.
LONG_URI = ("archive/" + "/".join(f"department-of-very-long-folder-names-{i:02d}" for i in range(4))
            + "/quarterly-lighthouse-maintenance-report-final-version.md")
# Sources for an answer citing some of them only: the extractive answer quotes the two that say
# where the keys are, so its sources are not numbered 1..n in the prompt.
KEEPERS = [
    ("keys-history.md", "A history of the lighthouse keys. Lighthouse keys, old and new, were cast in brass by "
                        "the guild of ship owners in 1871."),
    ("keys-desk.md", "The lighthouse keys are kept in the drawer of the oak desk."),
    ("keys-doors.md", "Every door of the lighthouse has two locks and two keys, one for the keeper and one for "
                      "the guild."),
    ("keys-spare.md", "Storms come from the west in autumn, and the ships wait in the harbour until the wind "
                      "turns. The fishermen mend their nets on the quay. The spare lighthouse keys are kept in a "
                      "tin box in the same drawer. The harbour master rings a bell at noon."),
]
KEYS_QUESTION = "Where are the lighthouse keys kept?"


def markers(text: str) -> list[int]:
    """The source numbers of the [n], [n, m] or [n; m] markers in a text, in order."""
    groups = re.findall(r"\[(\d+(?:\s*[,;]\s*\d+)*)\]", text)
    return [int(n) for group in groups for n in re.split(r"\s*[,;]\s*", group)]


def test_the_console_hides_collections_by_the_prefix_evaluation_gives_them() -> None:
    from ragtune.evaluate.retrieval import eval_collection

    prefix = re.search(r'const EVAL_PREFIX = "([^"]+)";', (STATIC / "console.js").read_text())
    assert prefix is not None
    for name in (eval_collection("squad", "minilm"), eval_collection("beir:/data/scifact", "e5", "-rerank")):
        assert name.startswith(prefix.group(1)), name
    assert not "handbook".startswith(prefix.group(1))


@pytest.mark.browser
@pytest.mark.slow
def test_console_layout_messages_citations_and_collections_in_chromium(live: Any, chromium: Any,
                                                                       artifacts: Path) -> None:
    """A very long path keeps its row one line high and the Delete button on the page; a tab's
    messages are seen in that tab only; the answer's [n] markers and its source list agree; the
    collections `ragtune eval` makes are hidden until asked for. A screenshot of every tab."""
    from playwright.sync_api import expect

    from ragtune.evaluate.retrieval import eval_collection
    from ragtune.models import LoadedDocument

    evaluation = eval_collection("squad", "minilm")
    live.engine.ingest_documents([LoadedDocument(uri=LONG_URI, text="The maintenance report of the quarter.",
                                                 metadata={"team": "a"})], collection="handbook", acl=["a"])
    live.engine.ingest_documents([LoadedDocument(uri=u, text=t) for u, t in KEEPERS], collection="keepers",
                                 acl=["a"])
    live.engine.ingest_documents([LoadedDocument(uri="q1.md", text="A question of the evaluation set.")],
                                 collection=evaluation, acl=[])
    with live.client("a_ingest") as client:
        asked = client.post("/collections/keepers/ask", json={"question": KEYS_QUESTION, "generator": "extractive"})
    raw = asked.json()
    numbers = [c["number"] for c in raw["citations"]]
    assert len(numbers) >= 2 and numbers != list(range(1, len(numbers) + 1)), raw  # the case to renumber

    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    expect.set_options(timeout=60_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error"
            and not m.text.startswith("Failed to load resource") else None)

    def shot(tab: str) -> None:
        page.screenshot(path=str(artifacts / f"tab-{tab}.png"), full_page=True)

    def open_tab(tab: str) -> None:
        page.click(f"#tabs [data-tab={tab}]")
        expect(page.locator(f"#{tab}")).to_be_visible()

    page.goto(f"{live.url}/")
    expect(page.locator("#login")).to_be_visible()
    shot("login")
    page.fill("#key", live.keys["a_ingest"])
    page.click("#login-form button")
    expect(page.locator("#tabs")).to_be_visible()

    # the collections of `ragtune eval` are left out of the picker until the box is ticked
    def offered() -> list[str]:
        return page.locator("#collection option").evaluate_all("(options) => options.map((o) => o.value)")

    box = page.locator("#show-eval")
    expect(box).to_be_visible()
    expect(box).not_to_be_checked()
    expect(page.locator("label", has=box)).to_have_text("show evaluation collections")
    assert sorted(offered()) == ["handbook", "keepers"]
    box.check()
    assert sorted(offered()) == sorted(["handbook", "keepers", evaluation])
    page.select_option("#collection", evaluation)
    box.uncheck()  # the chosen one goes too, and another is chosen
    assert evaluation not in offered() and page.locator("#collection").input_value() in ("handbook", "keepers")

    # a long path: cut short on one line, whole in the cell's title, and the Delete button still on the page
    page.select_option("#collection", "handbook")
    open_tab("documents")
    row = page.locator(f"#docs tr[data-uri='{LONG_URI}']")
    expect(row).to_be_visible()
    assert len(LONG_URI) >= 200
    layout = row.evaluate("""(row) => {
        const remove = [...row.querySelectorAll('button')].find((b) => b.textContent === 'Delete');
        const link = row.cells[0].querySelector('button');
        const box = remove.getBoundingClientRect();
        return {left: box.left, right: box.right, height: row.getBoundingClientRect().height,
                heights: [...row.parentElement.rows].map((r) => r.getBoundingClientRect().height),
                viewport: document.documentElement.clientWidth, page: document.documentElement.scrollWidth,
                title: row.cells[0].title, cut: link.scrollWidth > link.clientWidth,
                ellipsis: getComputedStyle(link).textOverflow};
    }""")
    assert layout["left"] >= 0 and layout["right"] <= layout["viewport"], layout
    assert layout["page"] <= layout["viewport"], layout  # nothing wider than the window
    assert layout["height"] < 60 and max(layout["heights"]) - min(layout["heights"]) < 2, layout  # one line
    assert layout["title"] == LONG_URI
    assert layout["cut"] and layout["ellipsis"] == "ellipsis", layout
    shot("documents")

    # messages: a tab's message is seen in that tab only, and is there again on going back
    def visible_messages() -> list[str]:
        return page.evaluate("() => [...document.querySelectorAll('.status')]"
                             ".filter((s) => s.checkVisibility()).map((s) => s.textContent).filter(Boolean)")

    open_tab("search")
    page.fill("#query", "maintenance report")
    page.click("#search-form button")
    expect(page.locator("#search > .status")).to_contain_text("hits (")
    assert any("hits (" in m for m in visible_messages())
    shot("search")
    open_tab("documents")
    assert not any("hits (" in m for m in visible_messages()), visible_messages()
    expect(page.get_by_text("hits (")).to_be_hidden()
    open_tab("ask")
    page.fill("#question", KEYS_QUESTION)
    page.fill("#max-tokens", "100000")  # refused by the server: an error in the Ask tab
    page.click("#ask-form button")
    expect(page.locator("#ask > .status.error")).to_contain_text("max_tokens")
    open_tab("traces")
    assert not any("max_tokens" in m for m in visible_messages()), visible_messages()
    expect(page.get_by_text("max_tokens must be")).to_be_hidden()
    open_tab("search")
    assert visible_messages() and all("hits (" in m for m in visible_messages()), visible_messages()
    open_tab("ask")
    assert all("max_tokens" in m for m in visible_messages()) and visible_messages(), visible_messages()

    # the answer's [n] markers and its list of sources: the same numbers, 1..n, on the same documents
    page.select_option("#collection", "keepers")
    page.fill("#max-tokens", "")
    page.select_option("#generator", "extractive")
    page.click("#ask-form button")
    expect(page.locator("#answer-meta")).not_to_be_empty()
    assert not visible_messages(), visible_messages()  # the old error went with the new answer
    rendered = page.evaluate("""() => ({
        text: document.querySelector('#answer').innerText,
        markers: [...document.querySelectorAll('#answer .cite')].map((b) => b.textContent),
        items: [...document.querySelectorAll('#citations li')].map((li) => ({
            value: li.value, visible: li.checkVisibility(), uri: li.querySelector('button').textContent}))})""")
    in_text = markers(rendered["text"])
    values = [item["value"] for item in rendered["items"]]
    assert values == list(range(1, len(numbers) + 1)), rendered
    assert all(item["visible"] for item in rendered["items"]), rendered
    assert rendered["markers"] == [f"[{n}]" for n in in_text], rendered  # every marker in the text is live
    assert sorted(set(in_text)) == values, rendered  # each marker has its item, each item its marker
    first_cited = list(dict.fromkeys(n for n in markers(raw["answer"]) if n in numbers))
    by_number = {c["number"]: c["uri"] for c in raw["citations"]}
    assert [item["uri"] for item in rendered["items"]] == [by_number[n] for n in first_cited], (rendered, raw)
    # hovering a marker lights its source up; clicking it opens the passage
    last = page.locator("#answer .cite").last
    last.hover()
    spot = page.locator("#citations li.spot")
    expect(spot).to_have_count(1)
    assert spot.evaluate("(li) => li.value") == in_text[-1]
    last.click()
    expect(page.locator("#passage")).to_be_visible()
    expect(page.locator("#passage-title")).to_contain_text(f"[{in_text[-1]}] {by_number[first_cited[-1]]}")
    shot("ask")
    # the same answer as a small model often writes it, citing nothing: the server infers each
    # sentence's source, and the console marks it there, numbered as in the list
    uncited = {**raw, "answer": " ".join(x["text"] for x in raw["sentences"]),
               "sentences": [{**x, "inferred": True} for x in raw["sentences"]]}
    page.evaluate("(answer) => renderAnswer(answer)", uncited)
    expect(page.locator("#answer .cite.inferred")).to_have_text([f"[{n}]" for n in values])
    expect(page.locator("#citations li")).to_have_count(len(values))
    assert page.locator("#citations li").evaluate_all("(items) => items.map((li) => li.value)") == values

    open_tab("traces")
    expect(page.locator("#trace-list tbody tr")).not_to_have_count(0)
    shot("traces")
    open_tab("dashboard")
    expect(page.locator("#charts .chart")).to_have_count(6)
    shot("dashboard")
    open_tab("models")
    expect(page.locator("#models-empty")).to_be_visible()
    shot("models")
    context.close()
    assert not errors, errors
    for tab in ("login", "documents", "search", "ask", "traces", "dashboard", "models"):
        saved = artifacts / f"tab-{tab}.png"
        assert saved.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", saved
