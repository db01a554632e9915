"""Reading real documentation as it ships: the files Debian's installed packages put in
/usr/share/doc (changelogs, gzipped manuals, HTML, Markdown, README/NEWS/copyright files with no
suffix), loaded by the code before issue 16 and by this tree, side by side.

    python benchmarks/debian_docs.py [--source /usr/share/doc] [--before a3b19b1]

The folder is copied (regular files only, links skipped) into the bench data folder and never
committed; each version loads every file with ``load_files`` in its own process (no database, no
embedding: this measures which files are read and why the others are refused). Writes
benchmarks/results/debian_docs.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from common import default_bench_data, worktree, write_result
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import collections, json, sys, time
from pathlib import Path
from ragtune.errors import IngestError
from ragtune.ingest.loaders import LoaderOptions, load_files
from ragtune.ingest.loaders.discover import iter_files

folder = Path(sys.argv[1])
files = list(iter_files([folder]))
started = time.perf_counter()
documents, formats, failures, examples, chars = 0, collections.Counter(), collections.Counter(), {}, 0
for item in load_files(files, LoaderOptions()):
    if isinstance(item, IngestError):
        reason = item.reason
        kind = "no loader for this suffix" if reason.startswith("no loader for") else (
            "binary content" if reason.startswith("binary content") else f"{item.code}: {reason[:60]}")
        failures[kind] += 1
        examples.setdefault(kind, str(item.source).replace(str(folder) + "/", ""))
    else:
        documents += 1
        chars += len(item.text)
        formats[item.metadata.get("format", "?")] += 1
print(json.dumps({"files": len(files), "documents": documents, "characters": chars,
                  "seconds": time.perf_counter() - started, "formats": dict(formats),
                  "failures": dict(failures.most_common()), "examples": examples}))
"""


def copy_docs(source: Path, target: Path) -> int:
    if target.is_dir():
        shutil.rmtree(target)
    copied = 0
    for folder, dirnames, filenames in os.walk(source):
        relative = Path(folder).relative_to(source)
        dirnames[:] = [d for d in dirnames if not (Path(folder) / d).is_symlink()]
        for name in filenames:
            path = Path(folder) / name
            if path.is_symlink() or not path.is_file():
                continue
            (target / relative).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target / relative / name)
            copied += 1
    return copied


def run(src: Path, folder: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", WORKER, str(folder)], env={**os.environ, "PYTHONPATH": str(src)},
                         check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("/usr/share/doc"))
    parser.add_argument("--before", default="a3b19b1", help="the last commit before issue 16")
    args = parser.parse_args()
    folder = Path(os.environ.get("RAGTUNE_BENCH_DATA", default_bench_data())) / "debian-docs"
    copied = copy_docs(args.source, folder)
    rows = {"before": run(worktree(args.before) / "src", folder), "after": run(ROOT / "src", folder)}
    console = Console()
    table = Table(title=f"{copied:,} files from {args.source} (copied to {folder})")
    for col in ("version", "documents", "failed", "rejected for the suffix", "seconds", "formats read"):
        table.add_column(col)
    for name, row in rows.items():
        failed = sum(row["failures"].values())
        table.add_row(name, f"{row['documents']:,}", f"{failed:,}",
                      f"{row['failures'].get('no loader for this suffix', 0):,}", f"{row['seconds']:.1f}",
                      ", ".join(f"{k} {v}" for k, v in sorted(row["formats"].items(), key=lambda kv: -kv[1])))
    console.print(table)
    for name, row in rows.items():
        console.print(f"[bold]{name}[/] failures by reason:")
        for kind, count in row["failures"].items():
            console.print(f"  {count:5,}  {kind}  (e.g. {row['examples'][kind]})", highlight=False)
    path = write_result("debian_docs", {"source": str(args.source), "files": copied, "before": args.before,
                                        "rows": rows})
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
