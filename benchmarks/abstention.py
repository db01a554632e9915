"""Calibrate the abstention threshold on SQuAD 2.0 dev and report its precision and recall.

    python benchmarks/abstention.py [--per-class N]

Abstention is decided before any generation, from the best question support among the sentences of
the retrieved sources (lexical coverage of the question's terms + embedding cosine; see
ragtune.generate.grounding), so one extractive pass over the questions gives every threshold.
The first N answerable and N unanswerable questions are split in halves by a hash of the question id:
the threshold that maximises abstention F1 on one half is then measured on the other.
Writes benchmarks/results/abstention.json.
"""

from __future__ import annotations

import argparse
import hashlib
import time

import numpy as np
from common import bench_engine, write_result
from rich.console import Console
from rich.progress import track
from rich.table import Table

from ragtune.evaluate.answers import answer_cases
from ragtune.evaluate.datasets import load_dataset
from ragtune.evaluate.retrieval import index_dataset
from ragtune.models import Principal

console = Console()


def prf(supports: np.ndarray, unanswerable: np.ndarray, threshold: float) -> tuple[float, float, float]:
    abstain = supports < threshold
    tp = float(np.sum(abstain & unanswerable))
    p = tp / abstain.sum() if abstain.sum() else 0.0
    r = tp / unanswerable.sum() if unanswerable.sum() else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-class", type=int, default=500)
    args = parser.parse_args()
    # Never abstain while measuring: every question gets its support computed.
    with bench_engine(abstain_threshold=-1.0) as rt:
        dataset = load_dataset("squad", rt.settings.resolved_cache_dir / "packages")
        name, _ = index_dataset(rt, dataset)
        cases = answer_cases(dataset, 2 * args.per_class, unanswerable_share=0.5)
        supports, labels, calibrate = [], [], []
        started = time.perf_counter()
        for case in track(cases, description="support per question", console=console):
            answer = rt.ask(case.question, collection=name, generator="extractive", principal=Principal.system())
            supports.append(answer.usage["question_support"])
            labels.append(not case.answerable)
            calibrate.append(hashlib.sha1(case.qid.encode()).digest()[0] % 2 == 0)
        seconds = time.perf_counter() - started
    s, u, cal = np.array(supports), np.array(labels), np.array(calibrate)
    grid = np.round(np.arange(0.10, 0.80, 0.01), 2)
    best = max(grid, key=lambda t: prf(s[cal], u[cal], t)[2])
    p, r, f = prf(s[~cal], u[~cal], best)
    sweep = [{"threshold": float(t), **dict(zip(("precision", "recall", "f1"), prf(s[~cal], u[~cal], t),
                                                strict=True))} for t in grid[::5]]
    table = Table(title=f"abstention on SQuAD 2.0 dev, held-out half ({int((~cal).sum())} questions)")
    for col in ("threshold", "precision", "recall", "F1"):
        table.add_column(col, justify="right")
    for row in sweep:
        mark = " *" if abs(row["threshold"] - best) < 1e-9 else ""
        table.add_row(f"{row['threshold']:.2f}{mark}", f"{row['precision']:.3f}", f"{row['recall']:.3f}",
                      f"{row['f1']:.3f}")
    console.print(table)
    console.print(f"calibrated threshold {best:.2f}: held-out precision {p:.3f}, recall {r:.3f}, F1 {f:.3f}; "
                  f"mean support answerable {s[~u].mean():.3f} vs unanswerable {s[u].mean():.3f}")
    path = write_result("abstention", {
        "dataset": "squad", "questions": len(cases), "unanswerable": int(u.sum()), "seconds": round(seconds, 1),
        "threshold": float(best), "heldout": {"precision": p, "recall": r, "f1": f, "questions": int((~cal).sum())},
        "mean_support": {"answerable": float(s[~u].mean()), "unanswerable": float(s[u].mean())},
        "sweep_heldout": sweep,
    })
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
