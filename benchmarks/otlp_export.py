"""Spans over OTLP (issue 19, "Export"): how many spans per second the OTLP path exports on this
machine, and what happens when the collector goes down mid-run, side by side in one run.

    python benchmarks/otlp_export.py [--questions 2000] [--up 2000] [--down 8000] [--back 1000]
                                     [--outage-queue-size 1024] [--baseline 2000] [--spans 20000]
                                     [--receivers sink,mlflow] [--keep-logs]

Two real receivers on loopback, each a process this script starts (and ends, in a ``finally``):

* ``sink``: a minimal OTLP/HTTP receiver (a ``ThreadingHTTPServer`` in a subprocess, so it does not
  share our GIL) that parses every POST as an ``ExportTraceServiceRequest``, counts its spans (GET
  /count) and answers an empty ``ExportTraceServiceResponse``: what our export path can push.
* ``mlflow``: an MLflow tracking server (SQLite store, one worker, as the tests start it), which
  stores every span it accepts at /v1/traces: what a real collector that keeps spans accepts.

Engines share the bench project (the bench data folder's embedded PostgreSQL, SQuAD 2.0 dev
indexed as the retrieval benchmark indexes it); ``--questions`` questions are embedded once and
passed in (``rt.search``, hybrid, top 10), cycled when a phase needs more. Every traced engine
also writes its spans to our PostgreSQL (always on with tracing), which shares the 2 cores.

1. Baselines, before and after the receivers: the same searches with tracing off (no spans) and
   with tracing on and no ``otlp_endpoint`` (our PostgreSQL only): request p50/p95.
2. Per receiver, engines with ``otlp_endpoint`` = its /v1/traces, each warmed up and drained first:
   * up (the shipped queue and batch settings): ``--up`` searches; exported roots per second = the
     OTLP destination's ``exported`` delta over the time from the first request until its queue
     drained (``queued`` == 0, bounded by ``--drain-timeout``); the spans the receiver got (a
     search's root span and its steps, each its own OTLP span: the sink's count; MLflow's spans
     table) per second likewise, and the sink's OTLP spans and bytes per request.
   * down (a new engine whose queue is ``--outage-queue-size``, smaller than the shipped 4096 so that
     a short outage fills it and the bound shows): ``--down`` searches; after half of them the
     receiver's process group is terminated (SIGTERM, so MLflow finishes what it is storing) and
     the searches go on. Request p50/p95 before vs after the stop; failed and dropped counts; the
     queue length over time (never above ``span_queue_size``); this process's RSS (VmRSS) before,
     during and after the outage.
   * back: the receiver restarted on the same port, ``--back`` more searches: export resumes (time
     from the restart to the first exported batch; exported delta; queue drained).
   * MLflow's store outlives its restart: the traces it stored against what our exporter counted
     exported, failed (a batch it did not answer within the export timeout may still be stored)
     and dropped.
3. Ceiling: spans made as fast as one thread can (``rt.tracing.span("retrieval", <a search's
   attributes>, current=False)``) into an engine exporting to the sink with a queue as large as the
   run (nothing dropped), ``--spans`` of them, once as bare roots and once each with a search's
   six steps (which export as six more spans): exported per second until drained.

The OTLP destination's counters (``rt.tracing.stats()["otlp"]``) count root spans (what was queued);
a receiver counts OTLP spans (roots and their steps). The stats are sampled every 0.1 s by a thread.
Only numbers are written (no dataset text or ids): benchmarks/results/otlp_export.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import bench_engine, percentiles, write_result
from rich.console import Console
from rich.table import Table

from ragtune.engine import Ragtune
from ragtune.evaluate.datasets import load_dataset
from ragtune.evaluate.retrieval import index_dataset
from ragtune.models import Principal
from ragtune.observe.tracing import Step, stash

console = Console(width=None if sys.stdout.isatty() else 170)
OPERATOR = Principal.system()
STEPS = ("retrieve", "dense", "bm25", "fuse", "fill", "fetch")  # a hybrid search's timed steps

# The OTLP/HTTP sink, run as ``python -c SINK PORT``: counts the spans of every request it parses.
SINK = r"""
import gzip, json, sys, threading, zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse)

LOCK = threading.Lock()
COUNTS = {"spans": 0, "requests": 0, "bytes": 0, "bad": 0}
EMPTY = ExportTraceServiceResponse().SerializeToString()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as collectors do

    def log_message(self, *args):
        pass

    def reply(self, code, body, kind):
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path != "/count":
            return self.reply(404, b"", "text/plain")
        with LOCK:
            body = json.dumps(COUNTS).encode()
        self.reply(200, body, "application/json")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        size = len(body)
        request = ExportTraceServiceRequest()
        try:
            encoding = (self.headers.get("Content-Encoding") or "").lower()
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            request.ParseFromString(body)
        except Exception:
            with LOCK:
                COUNTS["bad"] += 1
            return self.reply(400, b"", "text/plain")
        n = sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)
        with LOCK:
            COUNTS["spans"] += n
            COUNTS["requests"] += 1
            COUNTS["bytes"] += size
        self.reply(200, EMPTY, "application/x-protobuf")


server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
server.daemon_threads = True
server.serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # our own loopback URL
            return int(response.status), response.read()
    except OSError:
        return 0, b""


class Receiver:
    """One receiver process (its own process group, so MLflow's server and its uvicorn child end
    together), restartable on the same port."""

    def __init__(self, kind: str, folder: Path) -> None:
        self.kind = kind
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.experiment: str | None = None
        self.starts = 0

    def command(self) -> list[str]:
        if self.kind == "sink":
            return [sys.executable, "-c", SINK, str(self.port)]
        return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                f"sqlite:///{self.folder / 'mlflow.db'}", "--default-artifact-root", str(self.folder / "artifacts"),
                "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]

    def start(self, timeout: float = 180.0) -> float:
        """Starts the process and waits until it answers; returns the seconds that took."""
        started = time.perf_counter()
        self.starts += 1
        log = (self.folder / f"{self.kind}-{self.starts}.log").open("wb")
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        log.close()
        probe = f"{self.url}/count" if self.kind == "sink" else f"{self.url}/health"
        deadline = time.monotonic() + timeout
        while get(probe)[0] != 200:
            if self.process.poll() is not None:
                raise RuntimeError(f"the {self.kind} receiver exited: see {self.folder}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {self.kind} receiver did not answer in {timeout:.0f} s")
            time.sleep(0.2)
        if self.kind == "mlflow" and self.experiment is None:
            from mlflow import MlflowClient

            self.experiment = MlflowClient(self.url).create_experiment(f"otlp-export-{time.time_ns()}")
        return time.perf_counter() - started

    @property
    def headers(self) -> dict[str, str]:
        return {"x-mlflow-experiment-id": self.experiment} if self.experiment else {}

    def stop(self) -> float:
        """Terminates the process group (killed if it lingers); returns the seconds until the port
        refused connections."""
        started = time.perf_counter()
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return 0.0
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(15)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 15
        while listening(self.port) and time.monotonic() < deadline:  # a child still holding the port
            time.sleep(0.1)
        return time.perf_counter() - started

    def counts(self) -> dict[str, int]:
        """The sink's counts since it started (spans, requests, bytes, bad); MLflow's stored spans
        and traces (one a search)."""
        if self.kind == "sink":
            status, body = get(f"{self.url}/count") if self.process is not None else (0, b"")
            return {k: int(v) for k, v in json.loads(body).items()} if status == 200 else {}
        database = self.folder / "mlflow.db"
        try:
            with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as conn:
                spans, traces = conn.execute("SELECT count(*), count(DISTINCT trace_id) FROM spans").fetchone()
                return {"spans": int(spans), "traces": int(traces)}
        except sqlite3.Error:
            return {}

    def received(self) -> int | None:
        """OTLP spans the receiver has: the sink's count since it started; MLflow's stored spans."""
        return self.counts().get("spans")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Sampler:
    """Samples (t, exported, failed, dropped, queued, rss MB) of one engine's OTLP destination
    every ``interval`` seconds in a thread; ``mark`` notes a moment (the stop, the restart)."""

    def __init__(self, rt: Ragtune, interval: float = 0.1) -> None:
        self.rt = rt
        self.interval = interval
        self.t0 = time.perf_counter()
        self.samples: list[tuple[float, int, int, int, int, float]] = []
        self.marks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="otlp-sampler", daemon=True)

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def sample(self) -> tuple[float, int, int, int, int, float]:
        s = self.rt.tracing.stats().get("otlp") or {"exported": 0, "failed": 0, "dropped": 0, "queued": 0}
        row = (round(self.now(), 3), s["exported"], s["failed"], s["dropped"], s["queued"], round(rss_mb(), 1))
        self.samples.append(row)
        return row

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def mark(self, name: str) -> float:
        self.marks[name] = self.now()
        return self.marks[name]

    def __enter__(self) -> Sampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()

    def between(self, start: float, end: float) -> list[tuple[float, int, int, int, int, float]]:
        return [s for s in self.samples if start <= s[0] <= end]


def drain(rt: Ragtune, timeout: float) -> tuple[bool, float]:
    """Waits until the OTLP queue is empty; returns (drained, when: perf_counter)."""
    deadline = time.monotonic() + timeout
    while True:
        otlp = rt.tracing.stats().get("otlp")
        if otlp is None or otlp["queued"] == 0:
            return True, time.perf_counter()
        if time.monotonic() > deadline:
            return False, time.perf_counter()
        time.sleep(0.02)


def otlp(rt: Ragtune) -> dict[str, int]:
    return dict(rt.tracing.stats().get("otlp") or {})


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in ("exported", "failed", "dropped")}


def settled(receiver: Receiver, quiet: float = 2.0, timeout: float = 60.0) -> int | None:
    """The receiver's span count once it has not changed for ``quiet`` seconds (a collector may
    still be storing a batch our exporter gave up on)."""
    deadline = time.monotonic() + timeout
    last, since = receiver.received(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = receiver.received()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


def slowest(latencies: list[float], n: int = 5) -> list[list[float]]:
    """The ``n`` slowest requests as [index in the list, ms]."""
    return [[i, round(ms, 1)] for i, ms in sorted(enumerate(latencies), key=lambda x: -x[1])[:n]]


class Bench:
    """The bench project, its SQuAD collection and the embedded questions; engines sharing its
    database (their tracing is closed before it)."""

    def __init__(self, questions: int) -> None:
        self.base = bench_engine(tracing=False)
        self.engines: list[Ragtune] = []
        dataset = load_dataset("squad", self.base.settings.resolved_cache_dir / "packages")
        self.collection, _ = index_dataset(self.base, dataset)
        qids = sorted(dataset.queries)[:questions]
        self.texts = [dataset.queries[q] for q in qids]
        self.vectors = list(self.base.embedder.embed_batch(self.texts))
        self.offset = 0  # each phase takes the next questions, cycling

    def engine(self, **changes: Any) -> Ragtune:
        rt = Ragtune(self.base.settings.replace(**changes), embedder=self.base.embedder, database=self.base.db)
        if rt.tracing.enabled:
            self.engines.append(rt)
        return rt

    def searches(self, rt: Ragtune, n: int, at_half: Callable[[], None] | None = None) -> list[float]:
        """``n`` searches, each timed (ms); ``at_half`` is called (untimed) before the ``n // 2``-th."""
        out = []
        for i in range(n):
            if at_half is not None and i == n // 2:
                at_half()
            j = (self.offset + i) % len(self.texts)
            t = time.perf_counter()
            rt.search(self.texts[j], collection=self.collection, top_k=10, mode="hybrid",
                      query_vector=self.vectors[j], principal=OPERATOR)
            out.append((time.perf_counter() - t) * 1000)
        self.offset += n
        return out

    def close(self) -> None:
        for rt in self.engines:
            rt.tracing.close()
        self.base.close()


def up_phase(bench: Bench, receiver: Receiver, args: argparse.Namespace) -> dict[str, Any]:
    """The receiver up, the shipped queue and batch settings: spans exported per second."""
    rt = bench.engine(tracing=True, otlp_endpoint=f"{receiver.url}/v1/traces", otlp_headers=receiver.headers)
    bench.searches(rt, 300)  # warm-up
    drain(rt, args.drain_timeout)
    with Sampler(rt) as sampler:
        before, got_before = otlp(rt), receiver.counts()
        t0 = time.perf_counter()
        lat = bench.searches(rt, args.up)
        t_requests = time.perf_counter()
        drained, t_drained = drain(rt, args.drain_timeout)
        time.sleep(0.3)  # the receiver has answered the last batch; let it finish counting
        after, got_counts = otlp(rt), receiver.counts()
    got_by = {k: v - got_before.get(k, 0) for k, v in got_counts.items()}
    got = got_by.get("spans", 0)
    d = delta(after, before)
    wall = t_drained - t0
    obs = rt.settings.observability
    out = {
        "span_queue_size": obs.span_queue_size, "span_batch_delay_ms": obs.span_batch_delay_ms,
        "requests": percentiles(lat), "requests_per_s": round(len(lat) / (t_requests - t0), 1),
        **d, "drained": drained, "seconds_to_drain_after_requests": round(t_drained - t_requests, 2),
        "exported_roots_per_s": round(d["exported"] / wall, 1),
        "receiver_spans": got, "receiver_spans_per_s": round(got / wall, 1),
        "otlp_spans_per_root": round(got / d["exported"], 2) if d["exported"] else None,
        **receiver_extras(got_by), "max_queued": max(s[4] for s in sampler.samples), "rss_mb": round(rss_mb(), 1),
        "series": series(sampler), "totals": otlp(rt),
    }
    rt.tracing.close()
    return out


def outage_phase(bench: Bench, receiver: Receiver, args: argparse.Namespace) -> dict[str, Any]:
    """``--down`` searches, the receiver stopped after half of them; then, restarted on the same
    port, ``--back`` more."""
    rt = bench.engine(tracing=True, otlp_endpoint=f"{receiver.url}/v1/traces", otlp_headers=receiver.headers,
                      **({"span_queue_size": args.outage_queue_size} if args.outage_queue_size else {}))
    capacity = rt.settings.observability.span_queue_size
    bench.searches(rt, 300)  # warm-up
    drain(rt, args.drain_timeout)
    out: dict[str, Any] = {"span_queue_size": capacity}
    with Sampler(rt) as sampler:
        before = otlp(rt)
        t_phase = sampler.mark("down_start")
        at: dict[str, Any] = {}

        def stop() -> None:
            at["stop"] = otlp(rt)
            at["rss"] = round(rss_mb(), 1)
            sampler.mark("stop")
            at["stop_s"] = round(receiver.stop(), 2)
            at["port_closed"] = not listening(receiver.port)
            at["stopped"] = otlp(rt)
            sampler.mark("stopped")

        lat = bench.searches(rt, args.down, at_half=stop)
        t_end = sampler.mark("down_end")
        after = otlp(rt)
        half = args.down // 2
        stopped = sampler.marks["stopped"]
        during = sampler.between(stopped, t_end)
        full = next((s for s in during if s[4] >= capacity), None)
        rss_before = [s[5] for s in sampler.between(t_phase, sampler.marks["stop"])]
        out["down"] = {
            "before_stop": percentiles(lat[:half]), "after_stop": percentiles(lat[half:]),
            "p50_ratio_after_before": round(statistics.median(lat[half:]) / statistics.median(lat[:half]), 3),
            "after_stop_second_half": percentiles(lat[half + (len(lat) - half) // 2:]),
            "slowest_before_stop": slowest(lat[:half]), "slowest_after_stop": slowest(lat[half:]),
            "stop_s": at["stop_s"], "port_closed": at["port_closed"], "outage_s": round(t_end - stopped, 1),
            "before_stop_counts": delta(at["stop"], before), "while_stopping_counts": delta(at["stopped"], at["stop"]),
            "after_stop_counts": delta(after, at["stopped"]), "queued_at_end": after["queued"],
            "max_queued": max(s[4] for s in sampler.samples), "queue_bounded": all(s[4] <= capacity
                                                                                  for s in sampler.samples),
            "seconds_to_full_queue": round(full[0] - stopped, 1) if full else None,
            "rss_mb_before": round(statistics.median(rss_before), 1) if rss_before else at["rss"],
            "rss_mb_at_stop": at["rss"], "rss_mb_when_queue_full": full[5] if full else None,
            "rss_mb_max_during": max([s[5] for s in during] or [at["rss"]]),
            "rss_mb_end_of_outage": during[-1][5] if during else at["rss"],
        }
        console.print(f"{receiver.kind} down: { {k: v for k, v in out['down'].items() if 'slowest' not in k} }")
        if args.back:
            before = otlp(rt)
            restart = receiver.start()
            t_back = sampler.mark("restarted")
            got_before = receiver.received() or 0
            lat = bench.searches(rt, args.back)
            drained, _ = drain(rt, args.drain_timeout)
            time.sleep(0.3)
            after = otlp(rt)
            first = next((s[0] for s in sampler.samples if s[0] >= t_back and s[1] > before["exported"]), None)
            out["back"] = {
                "restart_s": round(restart, 1), "requests": percentiles(lat), **delta(after, before),
                "drained": drained, "queued_at_end": after["queued"],
                "seconds_to_first_export": round(first - t_back, 2) if first is not None else None,
                "receiver_spans": (receiver.received() or 0) - got_before, "rss_mb_end": round(rss_mb(), 1),
            }
            console.print(f"{receiver.kind} back: {out['back']}")
    out["series"] = series(sampler)
    out["totals"] = otlp(rt)
    rt.tracing.close()
    return out


def receiver_extras(got: dict[str, int]) -> dict[str, Any]:
    """The sink's batches: OTLP spans and bytes per request (MLflow: the traces it stored)."""
    if "requests" in got:
        return {"receiver_requests": got["requests"], "receiver_bad_requests": got["bad"],
                "receiver_mb": round(got["bytes"] / 1e6, 2),
                "otlp_spans_per_request": round(got["spans"] / got["requests"], 1) if got["requests"] else None,
                "bytes_per_otlp_span": round(got["bytes"] / got["spans"]) if got["spans"] else None}
    return {"receiver_traces": got.get("traces")}


def series(sampler: Sampler) -> dict[str, Any]:
    return {"columns": ["t_s", "exported", "failed", "dropped", "queued", "rss_mb"], "every_s": 0.5,
            "rows": sampler.samples[::5], "marks_s": {k: round(v, 2) for k, v in sampler.marks.items()}}


def ceiling_rows(bench: Bench, receiver: Receiver, args: argparse.Namespace) -> dict[str, Any]:
    """Spans made as fast as one thread can, exported to the sink: the export path's ceiling."""
    out: dict[str, Any] = {}
    queue = min(1_000_000, max(16, args.spans + 1024))
    attributes = search_attributes(bench.collection)
    for steps in (0, len(STEPS)):
        rt = bench.engine(tracing=True, otlp_endpoint=f"{receiver.url}/v1/traces", span_queue_size=queue)
        got_before, before = receiver.counts(), otlp(rt)
        t0 = time.perf_counter()
        for i in range(args.spans):
            with rt.tracing.span("retrieval", attributes, current=False) as span:
                if steps:
                    now = time.time_ns()
                    stash(span, {"ragtune.steps": [
                        Step(name, None if k == 0 else 0, now + k * 1000, now + k * 1000 + 500, {"n": i})
                        for k, name in enumerate(STEPS[:steps])]})
        t_made = time.perf_counter()
        drained, t_drained = drain(rt, args.drain_timeout)
        pg_drained = rt.tracing.flush(int(args.drain_timeout * 1000))
        t_pg = time.perf_counter()
        time.sleep(0.3)
        d = delta(otlp(rt), before)
        got_by = {k: v - got_before.get(k, 0) for k, v in receiver.counts().items()}
        got = got_by.get("spans", 0)
        wall = t_drained - t0
        pg = rt.tracing.stats()["postgresql"]
        label = f"{steps} steps" if steps else "bare"
        out[label] = {
            "spans": args.spans, "steps_per_root": steps, "span_queue_size": queue,
            "made_per_s": round(args.spans / (t_made - t0), 1), **d, "drained": drained,
            "exported_roots_per_s": round(d["exported"] / wall, 1),
            "receiver_spans": got, "receiver_spans_per_s": round(got / wall, 1), **receiver_extras(got_by),
            "postgresql_exported": pg["exported"], "postgresql_dropped": pg["dropped"],
            "postgresql_drained": pg_drained, "postgresql_seconds": round(t_pg - t0, 2), "rss_mb": round(rss_mb(), 1),
        }
        console.print(f"ceiling {label}: {out[label]}")
        rt.tracing.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=2000, help="distinct questions embedded (cycled)")
    parser.add_argument("--up", type=int, default=2000, help="searches per receiver with the receiver up")
    parser.add_argument("--down", type=int, default=8000,
                        help="searches per receiver in the outage phase; the receiver stops after half")
    parser.add_argument("--back", type=int, default=1000, help="searches after the receiver restarts (0: skip)")
    parser.add_argument("--outage-queue-size", type=int, default=1024,
                        help="span_queue_size in the outage phase (0: the setting's default), so it fills")
    parser.add_argument("--baseline", type=int, default=2000, help="searches per baseline engine per round")
    parser.add_argument("--spans", type=int, default=20000, help="spans per ceiling row (0: skip)")
    parser.add_argument("--receivers", default="sink,mlflow", help="comma-separated: sink, mlflow")
    parser.add_argument("--keep-logs", action="store_true", help="keep the receivers' folder (logs, MLflow's store)")
    parser.add_argument("--drain-timeout", type=float, default=60.0, help="seconds to wait for a queue to drain")
    args = parser.parse_args()
    kinds = [r.strip() for r in args.receivers.split(",") if r.strip()]
    assert set(kinds) <= {"sink", "mlflow"}, args.receivers

    load_start = os.getloadavg()
    console.print(f"load average at start (1, 5, 15 min): {load_start}")
    started = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="ragtune-otlp-export-"))
    receivers: dict[str, Receiver] = {}
    results: dict[str, Any] = {}
    baselines: dict[str, list[dict[str, Any]]] = {"off": [], "postgresql": []}
    ceiling: dict[str, Any] = {}
    bench: Bench | None = None
    try:
        bench = Bench(args.questions)
        console.print(f"{len(bench.texts)} questions embedded; {time.perf_counter() - started:.0f} s so far")
        off, pg = bench.engine(tracing=False), bench.engine(tracing=True)
        for rt in (off, pg):
            bench.searches(rt, 300)  # warm-up: plans, caches, the pool

        def baseline_round(label: str) -> None:
            assert bench is not None
            for name, rt in (("off", off), ("postgresql", pg)):
                t = time.perf_counter()
                lat = bench.searches(rt, args.baseline)
                wall = time.perf_counter() - t
                baselines[name].append({"round": label, **percentiles(lat),
                                        "requests_per_s": round(len(lat) / wall, 1)})
                console.print(f"baseline {name} ({label}): {baselines[name][-1]}")

        baseline_round("start")
        for kind in kinds:
            receiver = receivers[kind] = Receiver(kind, folder)
            startup = receiver.start()
            console.print(f"{kind} receiver up on port {receiver.port} in {startup:.1f} s")
            row: dict[str, Any] = {"startup_s": round(startup, 1), "up": up_phase(bench, receiver, args)}
            console.print(f"{kind} up: { {k: v for k, v in row['up'].items() if k != 'series'} }")
            row.update(outage_phase(bench, receiver, args))
            if kind == "mlflow":  # its store outlives a restart: what it kept against what it acknowledged
                settled(receiver)
                stored = receiver.counts()
                sent = [row["up"]["totals"], row["totals"]]
                acknowledged = sum(t["exported"] for t in sent)
                row["stored"] = {"spans": stored.get("spans"), "traces": stored.get("traces"),
                                 "roots_made": sum(t["exported"] + t["failed"] + t["dropped"] + t["queued"]
                                                   for t in sent),
                                 "roots_acknowledged": acknowledged, "roots_failed": sum(t["failed"] for t in sent),
                                 "roots_dropped": sum(t["dropped"] for t in sent),
                                 "traces_stored_not_acknowledged": (stored.get("traces") or 0) - acknowledged}
                console.print(f"mlflow stored: {row['stored']}")
            results[kind] = row
            receiver.stop()
        baseline_round("end")
        if args.spans and "sink" in receivers:
            receivers["sink"].start()
            ceiling = ceiling_rows(bench, receivers["sink"], args)
            receivers["sink"].stop()
    finally:
        for receiver in receivers.values():
            receiver.stop()
        if bench is not None:
            bench.close()

    show(results, baselines, ceiling)
    path = write_result("otlp_export", {
        "settings": vars(args), "load_average_start": list(load_start), "load_average_end": list(os.getloadavg()),
        "baselines": baselines, "receivers": results, "ceiling": ceiling,
        "seconds": round(time.perf_counter() - started, 1),
    })
    if args.keep_logs:
        console.print(f"receivers' logs and MLflow's store: {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)  # kept on failure: the receivers' logs
    console.print(f"written: {path}")


def search_attributes(collection: str) -> dict[str, Any]:
    """A hybrid search's span values as ``Searcher.search`` and ``record`` stash them (synthetic
    numbers; a placeholder query, which is not exported without ``export_content``)."""
    results = [{"chunk_id": 1000 + r, "rank": r, "score": 1.0 - r / 20,
                "scores": {"dense": 0.8 - r / 40, "bm25": 12.0 - r / 2}} for r in range(1, 11)]
    return {
        "gen_ai.operation.name": "retrieval", "gen_ai.data_source.id": collection, "gen_ai.retrieval.top_k": 10,
        "gen_ai.retrieval.query.text": "a placeholder question of typical length for a benchmark span?",
        "gen_ai.request.model": "minilm-l6-v2",
        "ragtune.kind": "search", "ragtune.principal": "system", "ragtune.principal_admin": True,
        "ragtune.groups": [], "ragtune.collection": collection,
        "ragtune.query": "a placeholder question of typical length for a benchmark span?",
        "ragtune.params": {"mode": "hybrid", "top_k": 10, "fusion": "convex", "normalization": "minmax",
                           "dense_weight": 0.5, "exact_scan": False, "ef_search": 100, "bm25_statistics": "global",
                           "filters": []},
        "ragtune.results": results, "ragtune.chunk_ids": [r["chunk_id"] for r in results],
        "ragtune.timings_ms": {"retrieve": 1.8, "dense": 0.7, "bm25": 0.6, "fuse": 0.1, "fill": 0.2, "fetch": 0.2,
                               "search": 1.8},
        "gen_ai.retrieval.documents": [{"id": str(r["chunk_id"]), "score": r["score"]} for r in results],
    }


def show(results: dict[str, Any], baselines: dict[str, list[dict[str, Any]]], ceiling: dict[str, Any]) -> None:
    table = Table(title="OTLP export: hybrid searches (top 10) and the spans they export; exported, failed, "
                        "dropped, queued count root spans (a search's root exports as 7 OTLP spans)")
    for col in ("engine / phase", "p50 ms", "p95 ms", "req/s", "exported", "roots/s", "OTLP spans/s",
                "failed", "dropped", "max queued", "RSS MB", "note"):
        table.add_column(col, justify="right")
    for name, rounds in baselines.items():
        for r in rounds:
            table.add_row(f"{name} ({r['round']})", f"{r['p50_ms']:.2f}", f"{r['p95_ms']:.2f}",
                          f"{r['requests_per_s']:.0f}", "", "", "", "", "", "", "",
                          "no spans" if name == "off" else "our PostgreSQL only")
    for kind, row in results.items():
        up = row["up"]
        table.add_row(f"{kind}: up", f"{up['requests']['p50_ms']:.2f}", f"{up['requests']['p95_ms']:.2f}",
                      f"{up['requests_per_s']:.0f}", str(up["exported"]), f"{up['exported_roots_per_s']:.0f}",
                      f"{up['receiver_spans_per_s']:.0f}", str(up["failed"]), str(up["dropped"]),
                      f"{up['max_queued']}/{up['span_queue_size']}", f"{up['rss_mb']:.0f}",
                      f"drained {up['seconds_to_drain_after_requests']:.1f} s after" if up["drained"]
                      else "NOT drained")
        down = row["down"]
        for label, key, counts in (("before stop", "before_stop", down["before_stop_counts"]),
                                   ("after stop", "after_stop", down["after_stop_counts"])):
            lat = down[key]
            if key == "after_stop":
                full = down["seconds_to_full_queue"]
                note = f"p50 x{down['p50_ratio_after_before']:.2f}; {down['outage_s']:.0f} s down" + (
                    f"; full at +{full:.0f} s" if full is not None else "")
                rss = f"{down['rss_mb_at_stop']:.0f}->{down['rss_mb_max_during']:.0f}"
                queued = f"{down['max_queued']}/{row['span_queue_size']}"
            else:
                note, rss, queued = f"stop took {down['stop_s']:.1f} s", f"{down['rss_mb_before']:.0f}", ""
            table.add_row(f"{kind}: down, {label}", f"{lat['p50_ms']:.2f}", f"{lat['p95_ms']:.2f}", "",
                          str(counts["exported"]), "", "", str(counts["failed"]), str(counts["dropped"]), queued,
                          rss, note)
        if "back" in row:
            back = row["back"]
            first = back["seconds_to_first_export"]
            table.add_row(f"{kind}: back", f"{back['requests']['p50_ms']:.2f}", f"{back['requests']['p95_ms']:.2f}",
                          "", str(back["exported"]), "", "", str(back["failed"]), str(back["dropped"]),
                          f"{back['queued_at_end']} left", f"{back['rss_mb_end']:.0f}",
                          f"1st export +{first:.1f} s" if first is not None else "NO export")
    for label, c in ceiling.items():
        table.add_row(f"ceiling to sink, {label}", "", "", "", str(c["exported"]), f"{c['exported_roots_per_s']:.0f}",
                      f"{c['receiver_spans_per_s']:.0f}", str(c["failed"]), str(c["dropped"]),
                      f"-/{c['span_queue_size']}", f"{c['rss_mb']:.0f}",
                      f"made {c['made_per_s']:.0f}/s" + ("" if c["drained"] else "; NOT drained"))
    console.print(table)
    for kind, row in results.items():
        if "stored" in row:
            st = row["stored"]
            console.print(f"{kind} stored {st['traces']} traces ({st['spans']} spans) of the {st['roots_made']} "
                          f"searches made; our exporter counted {st['roots_acknowledged']} exported, "
                          f"{st['roots_failed']} failed, {st['roots_dropped']} dropped")
    for kind, row in results.items():
        up = row["up"]
        if up.get("otlp_spans_per_request"):
            console.print(f"{kind}, up: {up['otlp_spans_per_request']:.0f} OTLP spans per request, "
                          f"{up['bytes_per_otlp_span']} bytes per span")
    for label, c in ceiling.items():
        if c.get("otlp_spans_per_request"):
            console.print(f"ceiling {label}: {c['otlp_spans_per_request']:.0f} OTLP spans per request, "
                          f"{c['bytes_per_otlp_span']} bytes per span")


if __name__ == "__main__":
    main()
