"""How long a search waits when the embedded PostgreSQL is killed under it (SIGKILL of the
postmaster), from the kill to the search's hits: the engine notices the lost connection, restarts
the server (crash recovery replays the write-ahead log) and runs the search once more.

    python benchmarks/db_recovery.py [--repeats 5] [--wal-mb 256]

Two cases, each ``--repeats`` times in one throw-away data folder: a kill right after a search
(little to replay), and a kill right after ``--wal-mb`` MB of writes that were never checkpointed
(a scratch table filled in one transaction), so recovery replays them. Writes
benchmarks/results/db_recovery.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from common import CACHE, write_result

from ragtune.models import LoadedDocument
from ragtune.testing.crash import kill_embedded_postgres

TEXTS = [f"Paragraph {i} tells of harbour {i % 17}, where the ferry leaves at {i % 12 + 1} o'clock."
         for i in range(200)]


def wal_lsn(rt: Any) -> int:
    with rt.db.connection() as conn:
        row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn AS n").fetchone()
    return int(row["n"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--wal-mb", type=int, default=256)
    args = parser.parse_args()
    from ragtune.engine import Ragtune
    from ragtune.settings import Settings

    folder = Path(tempfile.mkdtemp(prefix="ragtune-bench-recovery-"))
    rt = Ragtune(Settings(data_dir=folder, cache_dir=Path(os.environ.get("RAGTUNE_CACHE_DIR", CACHE))))
    results: dict[str, list[dict[str, float]]] = {"after a search": [], f"after {args.wal_mb} MB of writes": []}
    load_before = os.getloadavg()
    try:
        rt.ingest_documents([LoadedDocument(uri=f"p{i}.txt", text=t) for i, t in enumerate(TEXTS)],
                            collection="harbours")
        rows = args.wal_mb * 1024 * 1024 // 60  # ~60 bytes of WAL per narrow row
        for case in results:
            for _ in range(args.repeats):
                rt.search("ferry harbour", collection="harbours", mode="bm25")
                wal = 0
                if case != "after a search":
                    start = wal_lsn(rt)
                    with rt.db.transaction(statement_timeout=0) as conn:
                        conn.execute("DROP TABLE IF EXISTS scratch")
                        conn.execute("CREATE TABLE scratch AS SELECT g AS n FROM generate_series(1, %s) g", (rows,))
                    wal = wal_lsn(rt) - start
                kill_embedded_postgres(folder)
                started = time.monotonic()
                hits = rt.search("ferry harbour", collection="harbours", mode="bm25").hits
                seconds = time.monotonic() - started
                assert hits, "no hits after recovery"
                results[case].append({"seconds": round(seconds, 3), "wal_mb": round(wal / 2**20, 1)})
                print(f"{case:28s} {seconds:6.2f} s  (WAL written before the kill: {wal / 2**20:.0f} MB)", flush=True)
    finally:
        rt.close()
        from ragtune.store.server import EmbeddedPostgres

        EmbeddedPostgres(folder).stop()
        shutil.rmtree(folder, ignore_errors=True)
    load_after = os.getloadavg()
    summary = {case: {"median_s": statistics.median(r["seconds"] for r in runs),
                      "min_s": min(r["seconds"] for r in runs), "max_s": max(r["seconds"] for r in runs),
                      "wal_mb": statistics.median(r["wal_mb"] for r in runs), "runs": runs}
               for case, runs in results.items()}
    print(f"\nkill -9 of the embedded PostgreSQL -> the next search's hits (load {load_before[0]:.2f} -> "
          f"{load_after[0]:.2f}):")
    for case, row in summary.items():
        print(f"{case:28s} median {row['median_s']:.2f} s (min {row['min_s']:.2f}, max {row['max_s']:.2f})")
    write_result("db_recovery", {"repeats": args.repeats, "cases": summary, "load": [load_before, load_after]})


if __name__ == "__main__":
    main()
