"""The trained reader against extractive and SmolLM2, on held-out questions only, in one run.

    python benchmarks/reader_quality.py [--squad 1500] [--ooc 500] [--smollm2 30] [--hotpotqa 500]

Needs a reader in the benchmark project (``ragtune reader train`` with RAGTUNE_DATA_DIR at the
bench data folder, or benchmarks/train_reader.py). The split is the reader's own
(``ragtune.finetune.reader.split_of``): SQuAD 2.0 dev by article, HotpotQA dev by question id; the
reader trained on quarters 0-1, chose its thresholds on quarter 2; everything here is quarter 3.

* SQuAD 2.0: the collection holds the held-out half (quarters 2-3: 649 paragraphs); the questions
  are quarter 3's, answerable and adversarial unanswerable interleaved. Official overall F1,
  HasAns F1, NoAns accuracy; the ROC AUC of the no-answer score on answerable vs unanswerable.
* Out of collection: questions about training articles (not in the collection; those calibration
  used are left out) and HotpotQA quarter-3 questions, mixed with the answerable in-collection ones.
* HotpotQA: quarter-3 questions over the full 66,635-paragraph corpus (``populate.py hotpotqa
  --embedder minilm-int8`` indexes it once).
* Generators: extractive and SmolLM2 with the old abstention (support threshold) and with the
  reader's rule; the reader; SmolLM2 with the reader's span in its prompt. SmolLM2 runs on the
  first ``--smollm2`` questions, and every generator is also scored on those same questions.

Writes benchmarks/results/reader_quality.json.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time
from typing import Any

from common import bench_engine, percentiles, write_result
from rich.console import Console
from rich.table import Table

from ragtune.evaluate.answers import AnswerCase, CaseResult, score_generator, token_f1
from ragtune.evaluate.datasets import RetrievalDataset, load_dataset
from ragtune.evaluate.retrieval import index_dataset
from ragtune.finetune.answerability import roc_auc
from ragtune.finetune.reader import TEST, calibration_sample, public_split, split_of
from ragtune.models import Principal

console = Console()
OPERATOR = Principal.system()
COLLECTION = "reader-squad-held-out"


def held_out_squad(cache: Any) -> tuple[RetrievalDataset, list[AnswerCase]]:
    """The held-out half's paragraphs as a dataset, and quarter 3's questions as cases."""
    full = load_dataset("squad", cache)
    keep = {d: doc for d, doc in full.corpus.items() if split_of(doc.title) != "train"}
    test_docs = {d for d, doc in keep.items() if split_of(doc.title) == TEST}
    answerable = [AnswerCase(q, t, full.answers[q], frozenset(full.qrels[q]), True)
                  for q, t in full.queries.items() if set(full.qrels[q]) <= test_docs]
    unanswerable = [AnswerCase(q, t, [], frozenset(full.unanswerable_qrels[q]), False)
                    for q, t in full.unanswerable.items() if set(full.unanswerable_qrels[q]) <= test_docs]
    cases: list[AnswerCase] = []
    for i in range(max(len(answerable), len(unanswerable))):
        cases.extend(x[i] for x in (answerable, unanswerable) if i < len(x))
    dataset = RetrievalDataset("squad-held-out", keep, {}, {})
    return dataset, cases


def ask_all(rt: Any, cases: list[AnswerCase], collection: str, **ask: Any) -> list[CaseResult]:
    out = []
    for case in cases:
        started = time.perf_counter()
        answer = rt.ask(case.question, collection=collection, principal=OPERATOR, **ask)
        out.append(CaseResult(case, answer, time.perf_counter() - started))
    return out


def scored(results: list[CaseResult]) -> dict[str, Any]:
    row = score_generator(results)
    reads = [r.answer.timings_ms["read"] for r in results if "read" in r.answer.timings_ms]
    row["reader_ms"] = percentiles(reads) if reads else None
    row["decided_by"] = {k: sum(1 for r in results if r.answer.decided_by == k)
                         for k in ("retrieval", "reader", "answerability", "generator")}
    return row


def no_answer_auc(results: list[CaseResult]) -> float | None:
    pairs = [(-r.answer.usage["reader_no_answer"], r.case.answerable) for r in results
             if "reader_no_answer" in r.answer.usage]
    if not pairs:
        return None
    return round(roc_auc([p for p, _ in pairs], [a for _, a in pairs]), 4)


def out_of_collection(rt: Any, inside: list[CaseResult], outside: list[AnswerCase], collection: str,
                      reader: Any) -> dict[str, Any]:
    """Abstention on questions the collection has nothing about, beside in-collection answerable ones."""
    answerable = [r for r in inside if r.case.answerable]
    asked = ask_all(rt, outside, collection, generator="reader")
    gone = [r for r in asked if r.answer.abstained]
    wrongly = [r for r in answerable if r.answer.abstained]
    forced = []  # the reader's answer with no abstention at all, for the F1 the rule costs
    for r in answerable:
        span = reader.read(r.case.question, [h.chunk.text for h in r.answer.hits])
        forced.append(token_f1(span.text if span is not None else "", r.case.answers))
    with_rule = statistics.mean(token_f1(r.prediction, r.case.answers) for r in answerable)
    without = statistics.mean(forced)
    return {
        "out_of_collection": len(asked), "in_collection_answerable": len(answerable),
        "precision": round(len(gone) / max(1, len(gone) + len(wrongly)), 4),
        "recall": round(len(gone) / max(1, len(asked)), 4),
        "in_collection_answered": round(1 - len(wrongly) / max(1, len(answerable)), 4),
        "answerable_f1_with_rule": round(with_rule, 4), "answerable_f1_without_abstention": round(without, 4),
        "answerable_f1_relative_change": round((with_rule - without) / without, 4) if without else None,
        "decided_by": {k: sum(1 for r in gone if r.answer.decided_by == k) for k in ("retrieval", "reader")},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--squad", type=int, default=1500, help="quarter-3 SQuAD questions (half unanswerable)")
    parser.add_argument("--ooc", type=int, default=500, help="out-of-collection questions of each source")
    parser.add_argument("--smollm2", type=int, default=30, help="questions SmolLM2 answers (each variant)")
    parser.add_argument("--hotpotqa", type=int, default=500, help="quarter-3 HotpotQA questions (0: skip)")
    parser.add_argument("--skip-squad", action="store_true", help="only HotpotQA (its own result file)")
    args = parser.parse_args()
    started = time.perf_counter()
    out: dict[str, Any] = {"split": "reader's split_of: SQuAD by article, HotpotQA by question id; all quarter 3"}
    if args.skip_squad:
        hotpotqa_part(args.hotpotqa, out, args.smollm2)
        out["seconds"] = round(time.perf_counter() - started, 1)
        for label, row in out["hotpotqa"].items():
            console.print(f"HotpotQA {label}: {row}")
        console.print(f"wrote {write_result('reader_quality_hotpotqa', out)}")
        return
    with bench_engine("minilm") as rt:
        cache = rt.settings.resolved_cache_dir / "packages"
        reader = rt.reader_model("latest")
        out["reader"] = {"name": reader.name, "thresholds": reader.manifest["thresholds"],
                         "validation": reader.manifest["metrics"]["validation"],
                         "train_seconds": reader.manifest["metrics"]["train_seconds"]}
        dataset, cases = held_out_squad(cache)
        name, _ = index_dataset(rt, dataset, COLLECTION)
        cases = cases[: args.squad]
        few = cases[: args.smollm2]
        variants: dict[str, tuple[list[AnswerCase], dict[str, Any]]] = {
            "extractive (support threshold)": (cases, {"generator": "extractive", "reader": False}),
            "extractive (reader abstains)": (cases, {"generator": "extractive"}),
            "reader": (cases, {"generator": "reader"}),
            "smollm2 (support threshold)": (few, {"generator": "smollm2", "reader": False}),
            "smollm2 (reader abstains)": (few, {"generator": "smollm2"}),
        }
        results: dict[str, list[CaseResult]] = {}
        for label, (chosen, ask) in variants.items():
            console.print(f"[dim]{label}: {len(chosen)} questions[/]")
            if ask["generator"] != "extractive":
                rt.generator(ask["generator"])
            results[label] = ask_all(rt, chosen, name, **ask)
        hinted = bench_engine("minilm", reader_hint=True)
        with hinted:
            results["smollm2 + reader span in prompt"] = ask_all(hinted, few, name, generator="smollm2")
        out["squad"] = {label: scored(rs) for label, rs in results.items()}
        out["squad_same_questions"] = {label: scored(rs[: len(few)]) for label, rs in results.items()}
        out["no_answer_roc_auc"] = no_answer_auc(results["reader"])
        out["squad_questions"] = {"all": len(cases), "smollm2": len(few),
                                  "answerable": sum(c.answerable for c in cases)}

        split = public_split(cache, hotpotqa=False)
        _, used = calibration_sample(split)
        left = [q for q in split.out_of_collection if q not in set(used)]
        left.sort(key=lambda q: hashlib.sha256(q.encode()).hexdigest())
        squad_out = [AnswerCase(f"ooc-{i}", q, [], frozenset(), False) for i, q in enumerate(left[: args.ooc])]
        hotpot = load_dataset("hotpotqa", cache)
        hotpot_test = [q for q in hotpot.queries if split_of(q) == TEST]
        hotpot_out = [AnswerCase(q, hotpot.queries[q], [], frozenset(), False) for q in hotpot_test[: args.ooc]]
        out["out_of_collection"] = {
            "squad training articles": out_of_collection(rt, results["reader"], squad_out, name, reader),
            "hotpotqa questions": out_of_collection(rt, results["reader"], hotpot_out, name, reader),
        }
    if args.hotpotqa:
        hotpotqa_part(args.hotpotqa, out, args.smollm2)
    out["seconds"] = round(time.perf_counter() - started, 1)
    show(out)
    console.print(f"wrote {write_result('reader_quality', out)}")


def hotpotqa_part(limit: int, out: dict[str, Any], smollm2: int = 20) -> None:
    """Quarter-3 HotpotQA questions over the full pooled corpus (int8 query embedder, as populated)."""
    with bench_engine("minilm-int8") as rt:
        hotpot = load_dataset("hotpotqa", rt.settings.resolved_cache_dir / "packages")
        hotpot_test = [q for q in hotpot.queries if split_of(q) == TEST]
        hotpot_cases = [AnswerCase(q, hotpot.queries[q], hotpot.answers[q], frozenset(hotpot.qrels[q]), True)
                        for q in hotpot_test[:limit]]
        collection = f"eval-hotpotqa-{rt.embedder.name}"
        rows = {}
        for label, ask in {"extractive (support threshold)": {"generator": "extractive", "reader": False},
                           "reader": {"generator": "reader"}}.items():
            rows[label] = ask_all(rt, hotpot_cases, collection, **ask)
        few = hotpot_cases[:smollm2]
        if few:
            rows["smollm2 (support threshold)"] = ask_all(rt, few, collection, generator="smollm2", reader=False)
            out["hotpotqa_same_questions"] = {label: scored(rs[: len(few)]) for label, rs in rows.items()}
        forced = []
        reader = rt.reader_model("latest")
        for r in rows["reader"]:
            span = reader.read(r.case.question, [h.chunk.text for h in r.answer.hits])
            forced.append(token_f1(span.text if span is not None and span.kind == "span"
                                   else (span.kind if span is not None else ""), r.case.answers))
        out["hotpotqa"] = {label: scored(rs) for label, rs in rows.items()}
        out["hotpotqa"]["reader (never abstains)"] = {"f1": round(statistics.mean(forced), 4)}
        out["hotpotqa_questions"] = len(hotpot_cases)


def show(out: dict[str, Any]) -> None:
    table = Table(title="SQuAD 2.0 quarter 3 (held-out articles)", title_justify="left")
    for col in ("generator", "n", "overall F1", "HasAns F1", "NoAns acc", "abstained", "p50 ms", "reader p50 ms"):
        table.add_column(col)
    for label, row in out["squad"].items():
        reads = row["reader_ms"]["p50_ms"] if row.get("reader_ms") else None
        table.add_row(label, str(row["questions"]), f"{row['overall_f1']:.3f}", f"{row['f1']:.3f}",
                      f"{row['no_answer_accuracy']:.3f}", str(row["abstained"]), f"{row['p50_ms']:.0f}",
                      "" if reads is None else f"{reads:.0f}")
    console.print(table)
    console.print(f"no-answer ROC AUC (answerable vs adversarial unanswerable): {out['no_answer_roc_auc']}")
    for source, row in out["out_of_collection"].items():
        console.print(f"out of collection ({source}): {row}")
    for label, row in (out.get("hotpotqa") or {}).items():
        console.print(f"HotpotQA {label}: F1 {row['f1']:.3f}")


if __name__ == "__main__":
    main()
