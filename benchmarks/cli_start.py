"""How long ``ragtune search`` takes as a whole command, start-up included, per retrieval mode: what a
user waits for at the terminal (issue 16's target: at most 3 s on quiet cores).

    python benchmarks/cli_start.py [--runs 5]

A small project (20 Markdown files) is ingested once into a temporary data folder with its own
embedded PostgreSQL, which stays running between runs as it does for a user (``ragtune db stop``
ends it). Each run is a new process: ``--help`` (the floor: Python and the CLI's imports), then
``search`` in BM25, dense and hybrid modes, the runs of the modes interleaved so drift hits all
alike. Reports min, median and max wall seconds. Writes benchmarks/results/cli_start.json.
"""

from __future__ import annotations

import argparse
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

COMMANDS = {
    "--help": ["--help"],
    "search --mode bm25": ["search", "parental leave weeks", "--mode", "bm25", "--json"],
    "search --mode dense": ["search", "parental leave weeks", "--mode", "dense", "--json"],
    "search --mode hybrid": ["search", "parental leave weeks", "--mode", "hybrid", "--json"],
}


def ragtune(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ragtune.cli.main", *args], cwd=cwd, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "RAGTUNE_DATABASE_URL"}
    with tempfile.TemporaryDirectory(prefix="ragtune-cli-start-") as folder:
        work = Path(folder)
        docs = work / "docs"
        docs.mkdir()
        for i in range(20):
            (docs / f"policy-{i}.md").write_text(f"# Policy {i}\n\nParental leave lasts {10 + i} weeks in plan {i}.\n")
        ragtune(["ingest", str(docs)], work, env)
        times: dict[str, list[float]] = {name: [] for name in COMMANDS}
        try:
            for command in COMMANDS.values():  # one warm-up each: the OS file cache, as for a user
                ragtune(command, work, env)
            for _ in range(args.runs):
                for name, command in COMMANDS.items():
                    times[name].append(ragtune(command, work, env))
        finally:
            subprocess.run([sys.executable, "-m", "ragtune.cli.main", "db", "stop"], cwd=work, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = {name: {"min_s": min(v), "median_s": statistics.median(v), "max_s": max(v), "runs": v}
            for name, v in times.items()}
    load = os.getloadavg()[0]
    table = Table(title=f"ragtune as a whole command ({args.runs} runs each, interleaved; load {load:.1f})")
    for col in ("command", "min s", "median s", "max s"):
        table.add_column(col)
    for name, row in rows.items():
        table.add_row(name, f"{row['min_s']:.2f}", f"{row['median_s']:.2f}", f"{row['max_s']:.2f}")
    Console().print(table)
    path = write_result("cli_start", {"runs": args.runs, "rows": rows, "load": os.getloadavg()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
