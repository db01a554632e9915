"""Where tracing's cost goes (issue 19): the CPU time a traced search and answer add, split into
recording (the request's own thread), formatting the rows (the export thread, in the same
process) and storing them (the COPY: our side and PostgreSQL's), per request; and the same for one
alternative layout, a request's steps folded into its span's row as a list instead of one row each.

    python benchmarks/tracing_cost.py [--requests 400] [--rounds 5]

tracing_overhead.py measures the end result (latency on vs off); this says which part to cut.
CPU, not wall time, so the shared machine's load matters less: recording is the request thread's
CPU time (``time.thread_time``; spans are captured, not exported) traced minus untraced, the
median of per-question differences, the two requests back to back; formatting
and our side of the COPY are the exporting thread's CPU time; PostgreSQL's side is the CPU time of
every process of the embedded server over the COPYs (read from /proc, 10 ms ticks, so many
requests' rows are written per measurement). Rows go to a scratch table shaped as ``spans``
(its indexes included), dropped at the end. The requests are real: SQuAD 2.0 dev's questions on
the retrieval benchmark's collection, hybrid search top 10, and extractive answers (the cheapest
answer, so tracing's share is largest).
Writes benchmarks/results/tracing_cost.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

from common import bench_engine, write_result
from rich.console import Console
from rich.table import Table

from ragtune.engine import Ragtune
from ragtune.evaluate.datasets import load_dataset
from ragtune.evaluate.retrieval import index_dataset
from ragtune.models import Principal
from ragtune.observe import tracing as spans_module

console = Console()
OPERATOR = Principal.system()
SCRATCH = "spans_cost_scratch"


class Capture:
    """A span processor that keeps the first ``keep`` ended spans (as the batch processors queue
    them) and lets the rest go, as an exporter would (keeping all would make every garbage
    collection slower and be counted as recording)."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.spans: list[Any] = []

    def on_end(self, span: Any) -> None:
        if len(self.spans) < self.keep:
            self.spans.append(span)


def rows(spans: list[Any]) -> list[str]:
    """The rows the PostgreSQL exporter writes for ``spans``: a span and one per step."""
    return spans_module.span_rows(spans)[0]


def folded(spans: list[Any]) -> list[str]:
    """The alternative: one row a span, its steps a list in its attributes (name, parent index,
    start offset and duration in ns, attributes)."""
    lines = []
    for span in spans:
        own = spans_module._own(span)
        steps = span.kept.get("ragtune.steps") or []
        own.attributes["ragtune.steps"] = [[s.name, s.parent, s.start_ns - own.start_ns,
                                            (s.end_ns or s.start_ns) - s.start_ns, s.attributes or None]
                                           for s in steps]
        lines.append(spans_module.span_line(own)[1])
    return lines


def server_cpu_s(data_dir: Path) -> float:
    """CPU seconds used so far by the embedded server's processes (the postmaster and its children)."""
    postmaster = int((data_dir / "pg" / "postmaster.pid").read_text().split()[0])
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == postmaster or int(fields[1]) == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=400, help="searches (and answers) per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sample", type=int, default=300, help="spans kept a round to format and store")
    args = parser.parse_args()
    started = time.perf_counter()
    load = [round(x, 2) for x in os.getloadavg()]
    on = bench_engine(tracing=True, audit=False)  # tracing alone: the audit log is measured by audit_overhead.py
    off = Ragtune(on.settings.replace(tracing=False), embedder=on.embedder, database=on.db)
    capture = Capture(keep=args.sample)
    on.tracing._ending = (capture,)  # the spans are kept here instead of queued: nothing is exported
    dataset = load_dataset("squad", on.settings.resolved_cache_dir / "packages")
    collection, _ = index_dataset(on, dataset)
    qids = sorted(dataset.queries)[: args.requests]
    vectors = dict(zip(qids, on.embedder.embed_batch([dataset.queries[q] for q in qids]), strict=True))
    data_dir = on.settings.data_dir
    pg_local = (data_dir / "pg" / "postmaster.pid").exists()
    with on.db.transaction() as conn:
        conn.execute(f"DROP TABLE IF EXISTS {SCRATCH}")
        conn.execute(f"CREATE TABLE {SCRATCH} (LIKE spans INCLUDING DEFAULTS INCLUDING INDEXES)")

    def request(rt: Ragtune, kind: str, q: str) -> None:
        if kind == "search":
            rt.search(dataset.queries[q], collection=collection, top_k=10, mode="hybrid", query_vector=vectors[q],
                      principal=OPERATOR)
        else:
            rt.ask(dataset.queries[q], collection=collection, generator="extractive", query_vector=vectors[q],
                   principal=OPERATOR, reader=False, answerability=False)

    def paired(kind: str, on_first: bool) -> tuple[list[float], list[float]]:
        """Per question, the request thread's CPU us traced minus untraced (the two run back to back,
        in turn first), and the untraced wall us."""
        differences, wall = [], []
        for q in qids:
            cpu: dict[str, float] = {}
            for name in (("on", "off") if on_first else ("off", "on")):
                c, w = time.thread_time(), time.perf_counter()
                request(on if name == "on" else off, kind, q)
                cpu[name] = (time.thread_time() - c) * 1e6
                if name == "off":
                    wall.append((time.perf_counter() - w) * 1e6)
            differences.append(cpu["on"] - cpu["off"])
        return differences, wall

    def store(lines: list[str]) -> tuple[float, float]:
        """Our thread's and the server's CPU microseconds for COPYing ``lines`` in batches of 64 requests."""
        ours = server = 0.0
        per_batch = 64 * 7  # rows a batch of 64 searches makes
        for i in range(0, len(lines), per_batch):
            s0 = server_cpu_s(data_dir) if pg_local else 0.0
            c = time.thread_time()
            with on.db.transaction() as conn, conn.cursor().copy(
                    f"COPY {SCRATCH} ({', '.join(spans_module.SPAN_COLUMNS)}) FROM STDIN") as copy:
                copy.write("".join(lines[i:i + per_batch]).encode())
            ours += (time.thread_time() - c) * 1e6
            server += ((server_cpu_s(data_dir) - s0) * 1e6) if pg_local else 0.0
        return ours, server

    for rt in (off, on):  # warm-up
        for kind in ("search", "ask"):
            for q in qids[:50]:
                request(rt, kind, q)
    capture.spans.clear()
    parts: dict[str, dict[str, list[float]]] = {
        kind: {k: [] for k in ("recording", "off_wall", "format_rows", "copy_rows_ours", "copy_rows_server",
                               "format_folded", "copy_folded_ours", "copy_folded_server", "rows", "bytes")}
        for kind in ("search", "ask")}
    for r in range(args.rounds):
        for kind in ("search", "ask"):
            part = parts[kind]
            differences, wall = paired(kind, on_first=r % 2 == 1)
            part["recording"].append(statistics.median(differences))
            part["off_wall"].append(statistics.median(wall))
            captured = list(capture.spans)
            n = sum(1 for span in captured if span.parent_id is None)  # the requests they are of
            capture.spans.clear()
            for layout, fmt in (("rows", rows), ("folded", folded)):
                c = time.thread_time()
                lines = fmt(captured)
                part[f"format_{layout}"].append((time.thread_time() - c) * 1e6 / n)
                ours, server = store(lines)
                part[f"copy_{layout}_ours"].append(ours / n)
                part[f"copy_{layout}_server"].append(server / n)
                if layout == "rows":
                    part["rows"].append(len(lines) / n)
                    part["bytes"].append(sum(len(line) for line in lines) / n)
                with on.db.transaction() as conn:
                    conn.execute(f"TRUNCATE {SCRATCH}")
        console.print(f"round {r + 1} done")
    with on.db.transaction() as conn:
        conn.execute(f"DROP TABLE {SCRATCH}")

    summary: dict[str, Any] = {}
    table = Table(title=f"Tracing's CPU cost per request, us (medians of {args.rounds} rounds x {len(qids)} requests)")
    for col in ("request", "p50 wall", "record", "format", "COPY", "server", "total", "/ p50", "folded", "/ p50"):
        table.add_column(col, justify="right")
    for kind, part in parts.items():
        m = {k: statistics.median(v) for k, v in part.items()}
        recording = m["recording"]
        total = recording + m["format_rows"] + m["copy_rows_ours"] + m["copy_rows_server"]
        total_folded = recording + m["format_folded"] + m["copy_folded_ours"] + m["copy_folded_server"]
        summary[kind] = {
            "untraced_p50_wall_us": round(m["off_wall"], 1),
            "recording_us": round(recording, 1),
            "rows": {"format_us": round(m["format_rows"], 1), "copy_ours_us": round(m["copy_rows_ours"], 1),
                     "copy_server_us": round(m["copy_rows_server"], 1), "total_us": round(total, 1),
                     "total_over_p50": round(total / m["off_wall"], 4), "rows_per_request": round(m["rows"], 1),
                     "copy_bytes_per_request": round(m["bytes"])},
            "folded_steps": {"format_us": round(m["format_folded"], 1),
                             "copy_ours_us": round(m["copy_folded_ours"], 1),
                             "copy_server_us": round(m["copy_folded_server"], 1), "total_us": round(total_folded, 1),
                             "total_over_p50": round(total_folded / m["off_wall"], 4)},
        }
        table.add_row(kind, f"{m['off_wall']:.0f}", f"{recording:.0f}", f"{m['format_rows']:.0f}",
                      f"{m['copy_rows_ours']:.0f}", f"{m['copy_rows_server']:.0f}", f"{total:.0f}",
                      f"{total / m['off_wall']:.3f}", f"{total_folded:.0f}", f"{total_folded / m['off_wall']:.3f}")
    console.print(table)
    write_result("tracing_cost", {"settings": vars(args), "load_at_start": load, "server_cpu_measured": pg_local,
                                  "summary": summary, "seconds": round(time.perf_counter() - started, 1)})
    on.close()


if __name__ == "__main__":
    main()
