"""Spans (issue 19): every ask is one trace of OpenTelemetry spans in our PostgreSQL, with the GenAI
conventions' names; they also go over OTLP/HTTP to a real collector (an MLflow tracking server
started here on loopback, read back through MLflow's own client), without texts unless asked; an
unreachable or hanging collector fails no request and is counted; old trace rows migrate; whole
days of spans are pruned."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ragtune import LoadedDocument, Principal
from ragtune.engine import Ragtune
from ragtune.errors import ConfigError, NotFoundError
from ragtune.observe.traces import prune
from ragtune.store.database import load_migrations

QUESTION = "How many days of paid leave does a Zorblax employee get?"
DOCS = {"leave.md": "Every Zorblax employee receives 27 days of paid leave per year. Unused leave expires in March.",
        "travel.md": "Zorblax reimburses train travel in second class. Flights need the approval of a director."}


def _ingest(rt: Ragtune) -> None:
    rt.ingest_documents([LoadedDocument(uri=u, text=t) for u, t in DOCS.items()], collection="hb")


def _spans(rt: Ragtune, trace_id: str) -> list[dict[str, Any]]:
    rt.tracing.flush()
    with rt.db.connection() as conn:
        return [dict(r) for r in conn.execute("SELECT * FROM spans WHERE trace_id = %s ORDER BY start_time",
                                              (trace_id,)).fetchall()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_answer_is_one_trace_of_spans_named_by_the_genai_conventions(rt: Ragtune) -> None:
    _ingest(rt)
    answer = rt.ask(QUESTION, collection="hb", generator="extractive", principal=Principal("ann", {"hr"}))
    assert answer.trace_id is not None and len(answer.trace_id) == 32
    spans = _spans(rt, answer.trace_id)
    by_id = {s["span_id"]: s for s in spans}
    (root,) = [s for s in spans if s["parent_id"] is None]
    # one tree: every other span hangs below the root, inside its time
    for s in spans:
        if s is not root:
            assert s["parent_id"] in by_id, s
            assert s["duration_ms"] <= root["duration_ms"] + 1e-6
    assert (root["kind"], root["principal"], root["groups"], root["collection"]) == ("ask", "ann", ["hr"], "hb")
    assert root["attributes"]["gen_ai.operation.name"] == "chat" and root["model"] == "extractive"
    assert root["attributes"]["gen_ai.response.id"] == answer.trace_id  # what feedback is keyed by
    assert root["attributes"]["ragtune.query"] == QUESTION
    assert sorted(root["chunk_ids"]) == sorted(h.chunk.id for h in answer.hits)
    (retrieval,) = [s for s in spans if s["name"] == "retrieval"]
    assert retrieval["parent_id"] == root["span_id"]
    a = retrieval["attributes"]
    assert (a["gen_ai.operation.name"], a["gen_ai.data_source.id"]) == ("retrieval", "hb")
    assert a["gen_ai.retrieval.top_k"] == 5
    assert [d["id"] for d in a["gen_ai.retrieval.documents"]] == [str(h.chunk.id) for h in answer.hits]
    # the search's steps are children of the retrieval span; the answer's stages of the root
    names = {s["name"]: by_id.get(s["parent_id"] or "", {}).get("name") for s in spans}
    assert names["embed"] == "retrieval" and names["dense"] == "retrieve" and names["retrieve"] == "retrieval"
    assert names["prompt"] == "ask" and names["support"] == "ask" and names["retrieval"] == "ask"
    # what the trace API shows is these spans
    shown = rt.traces.get(answer.trace_id, Principal.system())
    assert {s["span_id"] for s in shown["spans"]} == set(by_id)
    assert shown["search"]["query"] == QUESTION and shown["params"]["response"] == answer.text


def test_a_generation_span_has_the_model_tokens_and_finish_reason(rt: Ragtune) -> None:
    _ingest(rt)
    streamed: list[str] = []
    answer = rt.ask(QUESTION, collection="hb", generator="smollm2", max_tokens=8, on_token=streamed.append)
    assert answer.trace_id is not None and streamed
    (generate,) = [s for s in _spans(rt, answer.trace_id) if s["name"] == "generate"]
    a = generate["attributes"]
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.max_tokens"] == 8
    assert a["gen_ai.usage.output_tokens"] == answer.usage["completion_tokens"] > 0
    assert a["gen_ai.usage.input_tokens"] == answer.usage["prompt_tokens"] > 100  # the sources are in the prompt
    assert a["gen_ai.response.finish_reasons"] in (["stop"], ["length"])
    assert 0 < a["ragtune.time_to_first_token_ms"] <= generate["duration_ms"]


def test_with_tracing_off_nothing_is_traced(settings: Any, embedder: Any) -> None:
    with Ragtune(settings.replace(tracing=False), embedder=embedder) as rt:
        _ingest(rt)
        answer = rt.ask(QUESTION, collection="hb", generator="extractive")
        result = rt.search("paid leave", collection="hb")
        assert answer.trace_id is None and result.trace_id is None and answer.hits
        with rt.db.connection() as conn:
            assert conn.execute("SELECT count(*) AS n FROM spans").fetchone()["n"] == 0


def test_bad_observability_settings_are_refused_naming_them(settings: Any) -> None:
    with pytest.raises(ConfigError, match=r"observability\.otlp_endpoint='ftp://collector'"):
        settings.replace(otlp_endpoint="ftp://collector")
    with pytest.raises(ConfigError, match=r"observability\.span_queue_size=1"):
        settings.replace(span_queue_size=1)
    with pytest.raises(ConfigError, match=r"observability\.retention_days=0"):
        settings.replace(retention_days=0)


# -- OTLP to a real collector -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An MLflow tracking server on loopback: it takes OTLP/HTTP spans at /v1/traces (MLflow >= 3.6)."""
    folder = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    log = (folder / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--default-artifact-root", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, (folder / "server.log").read_text()
            assert time.monotonic() < deadline, "the MLflow server did not start in 180 s"
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def _collected(url: str, experiment: str, trace_id: str) -> Any:
    from mlflow import MlflowClient

    client = MlflowClient(url)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = [t for t in client.search_traces(locations=[experiment]) if t.info.trace_id == f"tr-{trace_id}"]
        if found:
            return found[0]
        time.sleep(0.5)
    raise AssertionError(f"trace {trace_id} never reached the collector")


@pytest.mark.parametrize("export_content", [False, True])
def test_spans_reach_a_real_collector_over_otlp_with_texts_only_when_asked(
        settings: Any, embedder: Any, mlflow_server: str, export_content: bool) -> None:
    from mlflow import MlflowClient

    experiment = MlflowClient(mlflow_server).create_experiment(f"ragtune-{export_content}-{time.time_ns()}")
    with Ragtune(settings.replace(otlp_endpoint=f"{mlflow_server}/v1/traces",
                                  otlp_headers={"x-mlflow-experiment-id": experiment},
                                  export_content=export_content), embedder=embedder) as rt:
        _ingest(rt)
        answer = rt.ask(QUESTION, collection="hb", generator="extractive")
        assert answer.trace_id is not None
        ours = _spans(rt, answer.trace_id)
    collected = _collected(mlflow_server, experiment, answer.trace_id)
    spans = {s.name: s for s in collected.data.spans}
    assert set(spans) == {s["name"] for s in ours}  # every span, in both places
    retrieval = spans["retrieval"].attributes
    assert retrieval["gen_ai.operation.name"] == "retrieval" and retrieval["gen_ai.data_source.id"] == "hb"
    assert spans["ask"].attributes["ragtune.collection"] == "hb"
    # texts leave only with export_content; our own table always has them
    assert ("gen_ai.retrieval.query.text" in retrieval) is export_content
    assert ("ragtune.query" in spans["ask"].attributes) is export_content
    (ours_retrieval,) = [s for s in ours if s["name"] == "retrieval"]
    assert ours_retrieval["attributes"]["gen_ai.retrieval.query.text"] == QUESTION


def test_an_unreachable_collector_fails_no_request_and_is_logged_once_and_counted(
        settings: Any, embedder: Any, caplog: pytest.LogCaptureFixture) -> None:
    closed = _free_port()  # nothing listens there
    with caplog.at_level(logging.WARNING, logger="ragtune.observe"), \
            Ragtune(settings.replace(otlp_endpoint=f"http://127.0.0.1:{closed}/v1/traces", span_batch_delay_ms=10),
                    embedder=embedder) as rt:
        _ingest(rt)
        answers = [rt.ask(QUESTION, collection="hb", generator="extractive") for _ in range(3)]
        assert all(a.trace_id and not a.error for a in answers)
        rt.tracing.flush()  # ours only: a reader never waits on the collector
        deadline = time.monotonic() + 60  # the exporter retries a refused connection for a few seconds
        while rt.tracing.stats()["otlp"]["failed"] == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        stats = rt.tracing.stats()
        assert stats["postgresql"]["exported"] >= 3 * 2 and stats["postgresql"]["failed"] == 0  # ask + retrieval
        assert stats["otlp"]["failed"] > 0 and stats["otlp"]["exported"] == 0
        assert rt.traces.get(answers[0].trace_id or "", Principal.system())["kind"] == "ask"  # ours unharmed
    failures = [r for r in caplog.records if "otlp failed" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in caplog.records]


def test_a_hanging_collector_drops_what_its_queue_cannot_hold_and_nothing_waits(
        settings: Any, embedder: Any) -> None:
    """A collector that takes the connection and never answers holds the export thread for its
    timeout; spans meanwhile fill the bounded queue, and the rest are dropped and counted."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    try:
        with Ragtune(settings.replace(otlp_endpoint=f"http://127.0.0.1:{port}/v1/traces", span_queue_size=16,
                                      span_batch_delay_ms=10), embedder=embedder) as rt:
            started = time.perf_counter()
            for i in range(300):
                with rt.tracing.span("step", {"ragtune.kind": "test", "n": i}):
                    pass
            elapsed = time.perf_counter() - started
            stats = rt.tracing.stats()
            # 300 spans took far less than one export timeout (5 s): nothing waited for the collector
            assert elapsed < 2.5, elapsed
            # at most 16 spans are queued or in the hanging export at once: the rest is dropped and counted
            assert stats["otlp"]["dropped"] == 300 - 16 and stats["otlp"]["queued"] == 16, stats
            assert stats["otlp"]["exported"] == 0, stats
            closing = time.perf_counter()
        # closing waits at most 5 s for the hanging collector (the SDK alone would wait 30 s)
        assert time.perf_counter() - closing < 8
    finally:
        stop.set()
        thread.join(5)
        for s in held:
            s.close()
        listener.close()


# -- yesterday's traces and retention -----------------------------------------------------------------------
def test_old_trace_rows_become_root_spans(rt: Ragtune) -> None:
    (migration,) = [m for m in load_migrations() if m.version == 12]
    with rt.db.connection() as conn, conn.transaction():
        conn.execute("DROP TABLE spans")
        conn.execute("DROP FUNCTION ragtune_span_partition(date)")
        conn.execute(
            "CREATE TABLE traces (id bigserial PRIMARY KEY, kind text NOT NULL, created_at timestamptz NOT NULL"
            " DEFAULT now(), principal text, groups text[] NOT NULL DEFAULT '{}', collection text, query text,"
            " params jsonb NOT NULL DEFAULT '{}', results jsonb NOT NULL DEFAULT '[]', timings_ms jsonb NOT NULL"
            " DEFAULT '{}', error text, principal_admin boolean NOT NULL DEFAULT false)")
        conn.execute(
            "INSERT INTO traces (id, kind, created_at, principal, groups, collection, query, params, results,"
            " timings_ms, error) VALUES (7, 'ask', '2026-11-02 10:00:00+00', 'ann', '{hr}', 'hb', 'q?',"
            " '{\"model\": \"extractive\", \"abstained\": false, \"grounded\": true, \"response\": \"27 days\"}',"
            " '[{\"chunk_id\": 3, \"number\": 1}, {\"chunk_id\": 9, \"number\": 2}]',"
            " '{\"retrieve\": 4.5, \"dense\": 2.0, \"prompt\": 1.5}', NULL),"
            " (8, 'search', '2026-11-03 09:00:00+00', 'bob', '{}', 'hb', 'leave', '{}', '\"not a list\"', '{}',"
            " 'boom')")
        conn.execute(migration.sql.encode())
        rows = {r["name"]: dict(r) for r in conn.execute("SELECT * FROM spans").fetchall()}
        partitions = [r["relname"] for r in conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'spans'::regclass ORDER BY 1").fetchall()]
        assert conn.execute("SELECT to_regclass('traces') AS t").fetchone()["t"] is None
    assert partitions == ["spans_20261102", "spans_20261103"]
    ask, search = rows["ask"], rows["search"]
    assert (ask["principal"], ask["groups"], ask["chunk_ids"], ask["model"], ask["grounded"]) == (
        "ann", ["hr"], [3, 9], "extractive", True)
    assert ask["duration_ms"] == 6.0  # retrieve + prompt; dense is a step inside retrieve
    assert ask["attributes"]["ragtune.query"] == "q?" and ask["attributes"]["ragtune.migrated_from"] == 7
    assert (search["status"], search["error"], search["chunk_ids"]) == ("error", "boom", [])
    shown = rt.traces.get(ask["trace_id"][:12], Principal.system())
    assert shown["params"]["response"] == "27 days" and shown["results"][1]["chunk_id"] == 9


def test_pruning_drops_whole_days_older_than_the_retention(rt: Ragtune) -> None:
    today = datetime.now(UTC).date()
    with rt.tracing.span("today", {"ragtune.kind": "test"}):
        pass
    rt.tracing.flush()
    with rt.db.connection() as conn:
        for days_ago in (40, 31, 30, 29):
            day = today - timedelta(days=days_ago)
            conn.execute("SELECT ragtune_span_partition(%s)", (day,))
            conn.execute("INSERT INTO spans (trace_id, span_id, name, kind, start_time, duration_ms) VALUES"
                         " (%s, 'a0a0a0a0a0a0a0a0', 'old', 'test', %s, 1)",
                         (f"{days_ago:032x}", datetime(day.year, day.month, day.day, 12, tzinfo=UTC)))
    dropped = prune(rt.db, 30)
    assert dropped == [f"spans_{(today - timedelta(days=d)):%Y%m%d}" for d in (40, 31, 30)]
    with rt.db.connection() as conn:
        kept = sorted(r["name"] for r in conn.execute("SELECT name FROM spans").fetchall())
    assert kept == ["old", "today"]  # 29 days ago is inside 30 days with today
    with pytest.raises(NotFoundError):
        rt.traces.get(f"{40:032x}", Principal.system())
    with pytest.raises(ConfigError, match="retention_days=0"):
        prune(rt.db, 0)


def test_traces_prune_on_the_command_line(cli_env: Any, database_url: str) -> None:
    from tests.cli.runner import invoke

    old = datetime.now(UTC).date() - timedelta(days=10)
    with _engine(database_url) as rt, rt.db.connection() as conn:
        conn.execute("SELECT ragtune_span_partition(%s)", (old,))
    code, out, err = invoke("traces", "prune", "--days", "10")
    assert code == 0, err
    assert f"dropped 1 day(s) of spans older than 10 day(s): spans_{old:%Y%m%d}" in out
    code, out, err = invoke("traces", "prune")  # [observability] retention_days: 30
    assert code == 0 and "dropped 0 day(s) of spans older than 30 day(s)" in out, err
    assert invoke("traces", "prune", "--days", "0")[0] == 2  # Typer refuses it, naming the option


def _engine(database_url: str) -> Ragtune:
    from ragtune.settings import Settings

    return Ragtune(Settings.of(database_url=database_url))


def test_an_ingest_is_one_trace_seen_by_its_maker_only(rt: Ragtune) -> None:
    writer = Principal("ingester", {"hr"})
    docs = [LoadedDocument(uri=f"d{i}.md", text=f"Document {i} says the canteen opens at {i} o'clock.")
            for i in range(5)]
    report = rt.ingest_documents(docs, collection="ing", principal=writer)
    assert report.added == 5
    (root,) = rt.traces.visible(writer, kind="ingest")
    trace = rt.traces.get(root["id"], writer)
    spans = trace["spans"]
    top = next(s for s in spans if s["parent_id"] is None)
    assert top["attributes"]["ragtune.ingest.added"] == 5 and top["attributes"]["ragtune.ingest.chunks"] == 5
    chunked = sorted(s["attributes"]["ragtune.document.uri"] for s in spans if s["name"] == "chunk")
    assert chunked == [d.uri for d in docs]
    # the batch's embedding and its write (on the writer thread) are in the same trace, under the ingest
    for name in ("embed", "write", "chunk"):
        assert {s["parent_id"] for s in spans if s["name"] == name} == {top["span_id"]}, name
    embed = next(s for s in spans if s["name"] == "embed")
    assert embed["attributes"]["gen_ai.operation.name"] == "embeddings" and embed["attributes"]["ragtune.texts"] == 5
    # it names documents by URI: another member of hr does not see it; an admin does
    assert rt.traces.visible(Principal("colleague", {"hr"}), kind="ingest") == []
    assert [t["id"] for t in rt.traces.visible(Principal.system(), kind="ingest")] == [root["id"]]


def test_an_ingest_of_files_has_a_load_span_per_file(rt: Ragtune, tmp_path: Any) -> None:
    (tmp_path / "a.md").write_text("# A\n\nThe canteen opens at nine.\n")
    (tmp_path / "rows.jsonl").write_text('{"text": "Parking is free."}\n{"text": "Lockers are on floor two."}\n')
    (tmp_path / "bad.pdf").write_bytes(b"%PDF-1.4 not really")
    report = rt.ingest([tmp_path], collection="files")
    assert report.added == 3 and len(report.failed) == 1
    (root,) = rt.traces.visible(Principal.system(), kind="ingest")
    spans = rt.traces.get(root["id"], Principal.system())["spans"]
    top = next(s for s in spans if s["parent_id"] is None)
    loads = {Path(s["attributes"]["ragtune.file"]).name: s for s in spans if s["name"] == "load"}
    assert set(loads) == {"a.md", "rows.jsonl", "bad.pdf"}
    assert {s["parent_id"] for s in loads.values()} == {top["span_id"]}
    assert loads["rows.jsonl"]["attributes"]["ragtune.load.documents"] == 2
    assert loads["bad.pdf"]["attributes"]["ragtune.load.documents"] == 0
    assert loads["bad.pdf"]["attributes"]["ragtune.load.error"]
    assert all(s["duration_ms"] >= 0 for s in loads.values())


def test_the_trace_list_filters_and_the_stats_agree_with_the_answers(rt: Ragtune) -> None:
    _ingest(rt)
    ann, bob = Principal("ann", {"hr"}), Principal("bob", {"hr"})
    answers = [rt.ask(q, collection="hb", generator="extractive", principal=who) for q, who in (
        (QUESTION, ann), ("Who approves flights at Zorblax?", ann), ("What is the capital of Mongolia?", bob))]
    admin = Principal.system()
    by_id = {a.trace_id: a for a in answers}

    def ids(**filters: Any) -> set[str]:
        return {t["id"] for t in rt.traces.visible(admin, kind="ask", limit=50, **filters)}

    assert ids(user="ann") == {a.trace_id for a in answers[:2]} and ids(user="bob") == {answers[2].trace_id}
    assert ids(abstained=True) == {t for t, a in by_id.items() if a.abstained}
    assert ids(abstained=False) == {t for t, a in by_id.items() if not a.abstained}
    assert ids(grounded=True) == {t for t, a in by_id.items() if a.grounded}
    assert ids(model="extractive") == set(by_id) and ids(model="smollm2") == set()
    assert ids(slower_than_ms=0) == set(by_id) and ids(slower_than_ms=1e9) == set()
    assert ids(since=datetime.now(UTC) + timedelta(hours=1)) == set()
    stats = rt.traces.stats(admin, since=datetime.now(UTC) - timedelta(hours=1))
    asks = stats["requests"]["ask"]
    assert asks["requests"] == 3 and asks["abstained"] == sum(a.abstained for a in answers)
    assert stats["abstention_rate"] == pytest.approx(sum(a.abstained for a in answers) / 3)
    answered = [a for a in answers if not a.abstained]
    assert stats["groundedness_rate"] == pytest.approx(sum(a.grounded for a in answered) / len(answered))
    stages = {s["stage"]: s for s in stats["stages"]}
    assert stages["retrieval"]["spans"] == 3 and stages["prompt"]["spans"] == 3
    assert 0 < stages["retrieval"]["p50_ms"] <= stages["retrieval"]["p95_ms"] <= asks["p95_ms"]
    assert stats["feedback"] == {"negative": 0, "positive": 0, "total": 0}
    # as ann: only her own answers (bob's shows the same documents, but a trace is its maker's first)
    assert rt.traces.stats(ann, since=datetime.now(UTC) - timedelta(hours=1))["requests"]["ask"]["requests"] >= 2


def test_hostile_text_in_a_span_is_stored_exactly(rt: Ragtune) -> None:
    """Spans are written in COPY's text format, formatted by us: tabs, newlines, backslashes,
    quotes, commas and a literal JSON NUL escape in texts and groups come back as they went in (a
    NUL character itself is refused before: the search's own check)."""
    _ingest(rt)
    query = 'tab\there, back\\slash "quoted" {brace}\nnew line\r\\N \\u0000 nul!'
    groups = frozenset({'a,"b"', "c\\d", "{e}"})
    found = rt.search(query, collection="hb", principal=Principal(id="key:\t7", groups=groups))
    spans = _spans(rt, found.trace_id)
    (root,) = [s for s in spans if s["parent_id"] is None]
    assert root["attributes"]["ragtune.query"] == query
    assert root["principal"] == "key:\t7" and set(root["groups"]) == groups
    assert len(spans) > 1  # its steps too



def test_ragtune_serve_stopped_by_sigterm_writes_its_last_spans_and_exits_cleanly(
        database_url: str, cache_dir: Any, tmp_path: Any) -> None:
    """SIGTERM (`kill`, `docker stop`): uvicorn shuts down gracefully and raises the signal again;
    `ragtune serve` then closes its engine, so the spans still queued (a batch delay of a minute
    here) are written, and exits with 0. Before, the re-raised signal ended the process first."""
    import os
    import re
    import signal

    import httpx

    (tmp_path / "ragtune.toml").write_text("[observability]\nspan_batch_delay_ms = 60000\n")
    env = {**os.environ, "RAGTUNE_DATABASE_URL": database_url, "RAGTUNE_CACHE_DIR": str(cache_dir)}
    server = subprocess.Popen([sys.executable, "-m", "ragtune.cli.main", "serve", "--port", "0", "--no-auth",
                               "--log-level", "warning"], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        port = None
        deadline = time.monotonic() + 180
        while port is None and time.monotonic() < deadline:
            line = server.stderr.readline()
            assert line or server.poll() is None, "the server exited"
            found = re.search(r"serving on http://[^:]+:(\d+)", line)
            port = int(found.group(1)) if found else None
        assert port is not None
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            assert client.post("/collections", json={"name": "w"}).status_code in (200, 201)
            found = client.post("/collections/w/search", json={"query": "anything at all"})
            assert found.status_code == 200, found.text
            trace_id = found.json()["trace_id"]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    assert server.returncode == 0
    import psycopg

    with psycopg.connect(database_url) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM spans WHERE trace_id = %s", (trace_id,)).fetchall()]
    assert "retrieval" in names  # queued for a minute, written when the server stopped
