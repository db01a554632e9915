"""Shared set-up for benchmark scripts: a persistent benchmark project (embedded PostgreSQL in
~/.cache/ragtune/bench-data, or $RAGTUNE_BENCH_DATA),
so stored embeddings are reused across runs (keyed by model and text hash)
and a rerun re-embeds nothing."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
CACHE = ROOT / "cache"
sys.path.insert(0, str(ROOT))


def default_bench_data() -> Path:
    """Outside the work tree, so the embedded corpora (an hour of embedding) survive a fresh checkout;
    an older in-tree folder is still used if that is where they are."""
    in_tree = CACHE / "ragtune-data"
    if (in_tree / "pg" / "PG_VERSION").exists():
        return in_tree
    return Path.home() / ".cache" / "ragtune" / "bench-data"


def bench_engine(embedder: str = "minilm", **settings: Any) -> Any:
    from ragtune.engine import Ragtune
    from ragtune.settings import Settings

    data_dir = Path(os.environ.get("RAGTUNE_BENCH_DATA", default_bench_data()))
    data_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(os.environ.get("RAGTUNE_CACHE_DIR", CACHE))
    # The audit log is off unless a script asks for it: the speed and quality benchmarks compare
    # retrieval with retrieval, as they did before it existed; audit_overhead.py measures its cost.
    settings.setdefault("audit", False)
    return Ragtune(Settings.of(data_dir=data_dir, cache_dir=cache_dir, embedder=embedder, **settings))


def machine() -> dict[str, Any]:
    import torch

    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "platform": platform.platform(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(compact_json({"machine": machine(), **payload}) + "\n", encoding="utf-8")
    return path


def compact_json(value: Any, indent: int = 0, width: int = 110) -> str:
    """Indented JSON whose small objects and arrays (one row of a table, a curve) stay on one line:
    a result reads as the table it is, not as a thousand lines of one number each."""
    flat = json.dumps(value, default=str, ensure_ascii=False)
    if not isinstance(value, dict | list) or not value or indent + len(flat) <= width:
        return flat
    pad = " " * (indent + 2)
    if isinstance(value, list):
        items = [pad + compact_json(v, indent + 2, width) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"
    items = [f"{pad}{json.dumps(str(k), ensure_ascii=False)}: {compact_json(v, indent + 2, width)}"
             for k, v in value.items()]
    return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"


def module_at(rev: str, relative: str) -> types.ModuleType:
    """The repository's file ``relative`` as it was at git revision ``rev``, run as a module of its
    own (a baseline measured beside today's code in the same run)."""
    source = subprocess.run(["git", "-C", str(ROOT.parent), "show", f"{rev}:{relative}"], check=True,
                            capture_output=True, text=True).stdout
    name = f"{Path(relative).stem}_{rev}"
    module = types.ModuleType(name)
    sys.modules[name] = module  # dataclasses look their module up while a class is made
    exec(compile(source, f"{rev}:{relative}", "exec"), module.__dict__)
    return module


def percentiles(values: list[float]) -> dict[str, Any]:
    """n, p50, p95 and max of latencies in milliseconds."""
    import numpy as np

    if not values:
        return {"n": 0}
    arr = np.asarray(values)
    return {"n": len(values), "p50_ms": round(float(np.percentile(arr, 50)), 2),
            "p95_ms": round(float(np.percentile(arr, 95)), 2), "max_ms": round(float(arr.max()), 2)}


def worktree(commit: str) -> Path:
    """The source tree at ``commit``: a git worktree under the temp folder, made once, for a
    benchmark that runs an older version beside this one."""
    import subprocess
    import tempfile

    path = Path(tempfile.gettempdir()) / f"ragtune-{commit}"
    if not (path / "src" / "ragtune").is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force", str(path), commit],
                       check=True, capture_output=True)
    return path


def populated(name: str, limit: int | None, embedder: str = "minilm") -> tuple[Any, str, Any, list[str], list[str]]:
    """The bench engine, the collection ``populate.py`` indexed dataset ``name`` into (checked
    whole), the dataset, and its query ids and texts in one order."""
    from ragtune.evaluate.datasets import load_dataset

    rt = bench_engine(embedder)
    collection = f"eval-{name}-{rt.embedder.name}"
    ds = load_dataset(name, rt.settings.resolved_cache_dir / "packages", limit_queries=limit)
    info = rt.collection(collection)
    assert info.n_chunks == len(ds.corpus), f"{collection} has {info.n_chunks} chunks; run populate.py first"
    qids = list(ds.queries)
    return rt, collection, ds, qids, [ds.queries[q] for q in qids]


def round_interval(on: list[list[float]], off: list[list[float]], compare: Any, q: int = 50,
                   resamples: int = 2000) -> tuple[float, float]:
    """A 95% interval of ``compare(pooled on, pooled off)`` (their ratio, or difference) of the
    ``q``th percentile, resampling whole rounds: each round's blocks together, as they ran side by
    side on a machine whose speed drifts between rounds."""
    import numpy as np

    rng = np.random.default_rng(0)
    n = len(on)
    out = []
    for _ in range(resamples):
        picked = rng.integers(0, n, n)
        out.append(compare(float(np.percentile(np.concatenate([on[i] for i in picked]), q)),
                           float(np.percentile(np.concatenate([off[i] for i in picked]), q))))
    return float(np.percentile(out, 2.5)), float(np.percentile(out, 97.5))


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson interval of a share k/n (scipy's)."""
    from scipy.stats import binomtest

    if n == 0:
        return (0.0, 0.0)
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return (float(ci.low), float(ci.high))
