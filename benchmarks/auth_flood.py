"""A valid API key's latency on loopback, alone and while N threads flood the server from the same
address with wrong keys (issue 14 item 4: pre-authentication CPU exhaustion).

    python benchmarks/auth_flood.py [--clients 8] [--seconds 15] [--rate 10] [--baseline-src DIR]

The server is a real ``ragtune serve --auth`` subprocess with the default settings, over a
throw-away project in a temporary folder (its own embedded PostgreSQL, stopped and deleted at the
end), so no shared database is touched. The valid key, verified once before timing, sends
``GET /collections`` at ``--rate`` requests/s (open loop) for ``--seconds``, first alone, then while
the flood runs. The flood is a separate process (so its threads do not hold the timing client's
GIL) with ``--clients`` threads, one connection each, sending keys never seen before (half of them
with the valid key's id, half with random ids: each needs a scrypt unless refused first), without
backing off. Counted: the flood's 401 and 429 answers, and the CPU seconds per second of the
server process (from /proc) and of the flooding process: all share this machine's cores.
``--baseline-src DIR`` first runs the same phases against a server importing ``ragtune`` from DIR
(for example an older checkout's ``src``), in the same run. Only 127.0.0.1 is contacted; clients
<= 64 and seconds <= 120. Writes benchmarks/results/auth_flood.json.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from common import CACHE, percentiles, write_result

PATH = "/collections"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def flood(url: str, key_id: str, clients: int, start_at: float, stop_at: float) -> dict[str, Any]:
    """Run in a child process: ``clients`` threads send never-seen wrong keys from start_at to stop_at
    (wall clock); returns the count of each status code."""
    codes: Counter[str] = Counter()
    lock = threading.Lock()

    def guess(n: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while time.time() < start_at:
                time.sleep(0.005)
            i = 0
            while time.time() < stop_at:
                i += 1
                kid = key_id if (n + i) % 2 else secrets.token_hex(6)
                headers = {"Authorization": f"Bearer rt_{kid}_{secrets.token_urlsafe(32)}"}
                try:
                    code = str(client.get(PATH, headers=headers).status_code)
                except httpx.HTTPError as exc:
                    code = type(exc).__name__
                with lock:
                    codes[code] += 1

    cpu = time.process_time()
    threads = [threading.Thread(target=guess, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"requests": sum(codes.values()), "codes": dict(sorted(codes.items())),
            "cpu_per_s": round((time.process_time() - cpu) / (stop_at - start_at), 3)}


def paced(url: str, key: str, seconds: float, rate: float) -> tuple[list[float], Counter[int], list[str]]:
    """The valid key's requests, ``rate`` per second on a fixed schedule (slots missed while waiting
    for a slow answer are skipped); returns latencies (ms) of the 200s, the count of each status
    and the first refusals' details."""
    latencies: list[float] = []
    codes: Counter[int] = Counter()
    refusals: list[str] = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        start = time.monotonic()
        n = 0
        while (due := start + n / rate) < start + seconds:
            time.sleep(max(0.0, due - time.monotonic()))
            began = time.perf_counter()
            r = client.get(PATH)
            ms = (time.perf_counter() - began) * 1000
            codes[r.status_code] += 1
            if r.status_code == 200:
                latencies.append(ms)
            elif len(refusals) < 3:
                refusals.append(f"{r.status_code} {r.text[:300]}")
            # the next slot still ahead: after a slow answer the missed slots are skipped, not sent in a
            # burst (which would run into the key's own rate limit)
            n = max(n + 1, math.ceil((time.monotonic() - start) * rate))
    return latencies, codes, refusals


@contextmanager
def serve(data_dir: Path, src: str | None) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``ragtune serve --auth`` on a free loopback port over the project in data_dir, with default
    settings; ``src`` puts another ``ragtune`` source folder first on the server's path."""
    from ragtune.testing.serve import start_serve

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGTUNE_")}
    env.update({"RAGTUNE_DATA_DIR": str(data_dir), "RAGTUNE_CACHE_DIR": str(os.environ.get("RAGTUNE_CACHE_DIR", CACHE)),
                "RAGTUNE_GENERATION_GENERATOR": "extractive", "HF_HUB_OFFLINE": "1"})
    if src:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(src).resolve()), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc, url = start_serve(env, "--auth", "--log-level", "warning")
    try:
        assert proc.stderr is not None
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # drain the log
        yield proc, url
    finally:
        proc.terminate()  # SIGTERM: uvicorn's graceful shutdown
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure(data_dir: Path, key: str, key_id: str, src: str | None, args: argparse.Namespace,
            pool: ProcessPoolExecutor) -> dict[str, Any]:
    with serve(data_dir, src) as (proc, url):
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as warm:
            for _ in range(20):  # verified once (the one scrypt), then remembered; untimed
                assert warm.get(PATH).status_code == 200
        cpu = cpu_seconds(proc.pid)
        alone, alone_codes, alone_refusals = paced(url, key, args.seconds, args.rate)
        cpu_alone = cpu_seconds(proc.pid) - cpu
        start_at = time.time() + 3.0  # the child process needs a moment to import and start its threads
        stop_at = start_at + args.seconds + 1.0
        future = pool.submit(flood, url, key_id, args.clients, start_at, stop_at)
        time.sleep(max(0.0, start_at - time.time()) + 0.5)
        cpu = cpu_seconds(proc.pid)
        flooded, flooded_codes, flooded_refusals = paced(url, key, args.seconds, args.rate)
        cpu_flood = cpu_seconds(proc.pid) - cpu
        flood_result = future.result(timeout=args.seconds + 300)
    alone_stats, flood_stats = percentiles(alone), percentiles(flooded)
    return {
        "server_src": src or "this checkout",
        "alone": {**alone_stats, "codes": dict(alone_codes), "refusals": alone_refusals,
                  "server_cpu_per_s": round(cpu_alone / args.seconds, 3)},
        "flood": {**flood_stats, "codes": dict(flooded_codes), "refusals": flooded_refusals,
                  "server_cpu_per_s": round(cpu_flood / args.seconds, 3)},
        "flood_requests": flood_result["requests"], "flood_codes": flood_result["codes"],
        "flood_rps": round(flood_result["requests"] / (stop_at - start_at), 1),
        "flood_client_cpu_per_s": flood_result["cpu_per_s"],
        "p50_ratio": round(flood_stats["p50_ms"] / alone_stats["p50_ms"], 2) if flooded and alone else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8, help="flooding threads (same address)")
    parser.add_argument("--seconds", type=float, default=15, help="length of each timed phase")
    parser.add_argument("--rate", type=float, default=10, help="the valid key's requests per second")
    parser.add_argument("--baseline-src", default=None, help="a ragtune source folder to measure first")
    parser.add_argument("--baseline-label", default=None, help="what that folder holds, for the result file")
    parser.add_argument("--out", default="auth_flood", help="result name in benchmarks/results ('' to skip)")
    args = parser.parse_args()
    if not 1 <= args.clients <= 64 or not 0 < args.seconds <= 120 or not 0 < args.rate <= 50:
        parser.error("--clients 1..64, --seconds 0..120 and --rate 0..50 (this is a bounded loopback test)")
    from ragtune.engine import Ragtune
    from ragtune.server.auth import KeyStore
    from ragtune.settings import Settings
    from ragtune.store.server import EmbeddedPostgres

    load_before = os.getloadavg()
    data_dir = Path(tempfile.mkdtemp(prefix="ragtune-auth-flood-"))
    runs: dict[str, Any] = {}
    try:
        rt = Ragtune(Settings(data_dir=data_dir, cache_dir=Path(os.environ.get("RAGTUNE_CACHE_DIR", CACHE))))
        made = KeyStore(rt.db).create("auth-flood benchmark", scopes=["read"])
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            if args.baseline_src:
                runs["baseline"] = measure(data_dir, made.key, made.info.key_id, args.baseline_src, args, pool)
                runs["baseline"]["server_src"] = args.baseline_label or args.baseline_src
            runs["current"] = measure(data_dir, made.key, made.info.key_id, None, args, pool)
        rt.close()
    finally:
        EmbeddedPostgres(data_dir).stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    result = {"clients": args.clients, "seconds": args.seconds, "rate": args.rate, "path": f"GET {PATH}",
              "settings": "defaults", "loadavg_before": [round(x, 2) for x in load_before],
              "loadavg_after": [round(x, 2) for x in os.getloadavg()], "runs": runs}
    print_result(result)
    if args.out:
        print(f"wrote {write_result(args.out, result)}")


def print_result(result: dict[str, Any]) -> None:
    print(f"valid key: GET {PATH} at {result['rate']}/s for {result['seconds']} s per phase; flood: "
          f"{result['clients']} threads of never-seen wrong keys; load average before {result['loadavg_before']}, "
          f"after {result['loadavg_after']}")
    print(f"{'server':9} {'phase':6} {'n':>4} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'srv cpu':>7}  "
          f"{'flood req/s':>11} {'flood cpu':>9}  flood answers")
    for name, run in result["runs"].items():
        for phase in ("alone", "flood"):
            s = run[phase]
            flood = (f"{run['flood_rps']:>11} {run['flood_client_cpu_per_s']:>9}  {run['flood_codes']}"
                     if phase == "flood" else "")
            print(f"{name:9} {phase:6} {s['n']:>4} {s.get('p50_ms', '-'):>8} {s.get('p95_ms', '-'):>8} "
                  f"{s.get('max_ms', '-'):>8} {s['server_cpu_per_s']:>7}  {flood}")
        print(f"{name:9} p50 during flood / alone: {run['p50_ratio']}")
        for phase in ("alone", "flood"):
            for refusal in run[phase]["refusals"]:
                print(f"{name:9} {phase:6} valid key refused: {refusal}")


if __name__ == "__main__":
    main()
