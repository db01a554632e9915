"""How long ``ragtune search`` takes as a whole command, start-up included, per retrieval mode: what a
user waits for at the terminal (issue 16's target: at most 3 s on quiet cores).

    python benchmarks/cli_start.py [--runs 5]

A small project (20 Markdown files) is ingested once into a temporary data folder with its own
embedded PostgreSQL, which stays running between runs as it does for a user (``ragtune db stop``
ends it). Each run is a new process: ``--help`` (the floor: Python and the CLI's imports), then
``search`` in BM25, dense and hybrid modes, and dense and hybrid again with int8 query vectors
(``RAGTUNE_RETRIEVAL_QUERY_EMBEDDER=int8``: ONNX Runtime, no torch) on the same fp32 collection, the
runs of all of them interleaved so drift hits all alike. The int8 file is built before the timed runs
(as a user's first such search does, once). Reports min, median and max wall seconds and the load
average (as ``uptime`` shows it) before and after: on 2 cores, a 1-minute load over ~0.5 means
something else was running. Writes benchmarks/results/cli_start.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import write_result
from rich.console import Console
from rich.table import Table

INT8 = {"RAGTUNE_RETRIEVAL_QUERY_EMBEDDER": "int8"}  # what the default ("auto") picks for this model
FP32 = {"RAGTUNE_RETRIEVAL_QUERY_EMBEDDER": "embedder"}  # the path before: the fp32 model itself
# name -> (arguments, extra environment)
COMMANDS: dict[str, tuple[list[str], dict[str, str]]] = {
    "--help": (["--help"], {}),
    "search --mode bm25": (["search", "parental leave weeks", "--mode", "bm25", "--json"], {}),
    "search --mode dense": (["search", "parental leave weeks", "--mode", "dense", "--json"], FP32),
    "search --mode hybrid": (["search", "parental leave weeks", "--mode", "hybrid", "--json"], FP32),
    "search --mode dense, int8 queries": (["search", "parental leave weeks", "--mode", "dense", "--json"], INT8),
    "search --mode hybrid, int8 queries": (["search", "parental leave weeks", "--mode", "hybrid", "--json"], INT8),
}


def ragtune(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ragtune.cli.main", *args], cwd=cwd, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def top_hit(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-m", "ragtune.cli.main", *args], cwd=cwd, env=env, check=True,
                         capture_output=True, text=True).stdout
    return Path(json.loads(out)["hits"][0]["uri"]).name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGTUNE_") or k == "RAGTUNE_CACHE_DIR"}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="ragtune-cli-start-") as folder:
        work = Path(folder)
        docs = work / "docs"
        docs.mkdir()
        for i in range(20):
            (docs / f"policy-{i}.md").write_text(f"# Policy {i}\n\nParental leave lasts {10 + i} weeks in plan {i}.\n")
        ragtune(["ingest", str(docs)], work, env)
        times: dict[str, list[float]] = {name: [] for name in COMMANDS}
        first: dict[str, str] = {}
        try:
            for name, (command, extra) in COMMANDS.items():  # one warm-up each: the OS file cache, as for a user
                ragtune(command, work, {**env, **extra})  # (and the int8 file's one build)
                if "search" in command and "bm25" not in command:
                    first[name] = top_hit(command, work, {**env, **extra})
            for _ in range(args.runs):
                for name, (command, extra) in COMMANDS.items():
                    times[name].append(ragtune(command, work, {**env, **extra}))
        finally:
            subprocess.run([sys.executable, "-m", "ragtune.cli.main", "db", "stop"], cwd=work, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = {name: {"min_s": min(v), "median_s": statistics.median(v), "max_s": max(v), "runs": v}
            for name, v in times.items()}
    load = os.getloadavg()
    table = Table(title=f"ragtune as a whole command ({args.runs} runs each, interleaved; 1-min load "
                        f"{load_before[0]:.1f} before, {load[0]:.1f} after, {os.cpu_count()} cores)")
    for col in ("command", "min s", "median s", "max s"):
        table.add_column(col)
    for name, row in rows.items():
        table.add_row(name, f"{row['min_s']:.2f}", f"{row['median_s']:.2f}", f"{row['max_s']:.2f}")
    Console().print(table)
    print(f"first hit per mode: {first}")
    path = write_result("cli_start", {"runs": args.runs, "rows": rows, "top_hit": first,
                                      "load_before": load_before, "load": load})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
