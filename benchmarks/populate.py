"""Index the evaluation corpora into the benchmark project (once; reruns re-embed nothing).

    python benchmarks/populate.py squad hotpotqa [--embedder minilm|minilm-int8]
"""

from __future__ import annotations

import argparse
import time

from common import bench_engine

from ragtune.evaluate.datasets import load_dataset
from ragtune.evaluate.retrieval import dataset_documents
from ragtune.models import ProgressEvent


def populate(rt, dataset_name: str, collection: str) -> dict:  # type: ignore[no-untyped-def]
    ds = load_dataset(dataset_name, rt.settings.resolved_cache_dir / "packages")
    docs = dataset_documents(ds)
    shown = [0]
    started = time.perf_counter()

    def progress(event: ProgressEvent) -> None:
        if event.task == "documents" and event.done >= shown[0] + 2000:
            shown[0] = event.done
            rate = event.done / (time.perf_counter() - started)
            print(f"{collection}: {event.done}/{event.total} documents, {rate:.1f}/s", flush=True)

    report = rt.ingest_documents(docs, collection=collection, whole_documents=True, near_duplicates=False,
                                 progress=progress)
    print(f"{collection}: {report}", flush=True)
    return {"added": report.added, "unchanged": report.unchanged, "embedded": report.embedded,
            "seconds": report.seconds}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("datasets", nargs="+")
    parser.add_argument("--embedder", default="minilm")
    args = parser.parse_args()
    with bench_engine(args.embedder) as rt:
        for name in args.datasets:
            populate(rt, name, f"eval-{name}-{rt.embedder.name}")
