"""SmolLM2 with its decoding controls off (plain greedy, the old behaviour) and on (the
``[generation]`` defaults; see ``ragtune.generate.decoding``), in one run, interleaved, on the same
prompts; and, to show why they are the defaults, the defaults plus each other control (variants).

    python benchmarks/generation_controls.py [--limit 30] [--minutes 20] [--debian 0] [--timeout S]
        [--variants repetition_penalty=1.1 no_repeat_ngram_size=6] [--name generation_controls]

Questions: answerable SQuAD 2.0 dev questions spread over the file (every k-th), retrieved from
the populated SQuAD collection (``populate.py``) and packed into the ask prompt exactly as
``ask`` does; optionally the first N questions of ``debian_questions.py`` over its collection, if
it exists. Each prompt goes through the same generator object once per setting, the order
rotating per question so drifting load on shared cores hits all alike. Abstention is not
involved (it is decided before generation and would be the same for all).

Per setting: SQuAD token F1 and exact match (official normalisation, citations stripped); loop
rate, where an answer loops if some n-gram of 3+ of the model's tokens occurs 4+ times in it
(citations stripped) or it ran to the token cap or the timeout; answers cut at a loop; generated
tokens; generation latency; answers that cite [n]. Questions stop being started after
``--minutes`` so a slow shared machine still ends; the counts say how many were answered.
Writes benchmarks/results/generation_controls.json (``--name``).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
import statistics
import time
from typing import Any

from common import percentiles, populated, write_result
from rich.console import Console
from rich.table import Table

from ragtune.evaluate.answers import exact_match, token_f1
from ragtune.generate.decoding import OFF, DecodingControls, max_ngram_count
from ragtune.generate.grounding import parse_citations, strip_citations
from ragtune.generate.local import TransformersGenerator
from ragtune.generate.prompt import build_prompt
from ragtune.models import Completion

console = Console(width=160)


class _Cuts(logging.Handler):
    """Counts the loops the generator cut (it logs each at debug level)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "cut a loop" in record.getMessage()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=30, help="SQuAD questions")
    parser.add_argument("--debian", type=int, default=0, help="debian_questions.py questions too (slower)")
    parser.add_argument("--minutes", type=float, default=20.0, help="start no new question after this")
    parser.add_argument("--variants", nargs="*", default=["repetition_penalty=1.1", "no_repeat_ngram_size=6"],
                        help="FIELD=VALUE of DecodingControls, each on top of the defaults")
    parser.add_argument("--name", default="generation_controls", help="benchmarks/results/NAME.json")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per generation (default: [generation] timeout); on a loaded machine a "
                             "longer one lets token caps, not wall time, end the answers")
    args = parser.parse_args()
    started = time.perf_counter()
    rt, collection, ds, qids, texts = populated("squad", None)
    g = rt.settings.generation
    on = DecodingControls.of(g)
    timeout = args.timeout or g.timeout
    gen = TransformersGenerator.packaged(rt.settings.resolved_cache_dir, max_time=timeout, controls=OFF)
    controls = {"off": OFF, "on": on}
    for variant in args.variants:
        field, value = variant.split("=", 1)
        kind = type(getattr(on, field))
        typed = value.lower() in ("1", "true", "on", "yes") if kind is bool else kind(value)
        controls[f"on, {field} {value}"] = DecodingControls(**{**on.__dict__, field: typed})
    names = list(controls)
    cuts = _Cuts()
    log = logging.getLogger("ragtune.generate.local")
    log.addHandler(cuts)
    log.setLevel(logging.DEBUG)
    budget = max(64, min(g.context_tokens, gen.context_window - g.max_new_tokens - 256))  # as Answerer._budget

    stride = max(1, len(qids) // max(1, args.limit))
    cases: list[dict[str, Any]] = [{"set": "squad", "qid": qids[i], "question": texts[i],
                                    "gold": ds.answers.get(qids[i], []), "collection": collection,
                                    "max_tokens": g.max_new_tokens}
                                   for i in range(0, stride * args.limit, stride)]
    if args.debian:
        cases += _debian_cases(rt, args.debian)
    gen.generate(build_prompt("warm up", [], count_tokens=gen.count_tokens, budget=budget).messages, max_tokens=2)
    rows: list[dict[str, Any]] = []
    for n, case in enumerate(cases):
        if time.perf_counter() - started > args.minutes * 60:
            console.print(f"[yellow]time budget reached: {n} of {len(cases)} questions answered")
            break
        hits = rt.search(case["question"], collection=case["collection"], top_k=g.answer_top_k).hits
        prompt = build_prompt(case["question"], hits, count_tokens=gen.count_tokens, budget=budget)
        # rows name the question by id: SQuAD's text stays in the fetched package, not in results
        row: dict[str, Any] = {k: case[k] for k in ("set", "qid")}
        for name in names[n % len(names):] + names[:n % len(names)]:
            gen.controls = controls[name]
            before = cuts.count
            c = gen.generate(prompt.messages, max_tokens=case["max_tokens"])
            row[name] = _score(gen, case, c, cut=cuts.count > before)
        rows.append(row)
        console.print(f"{n + 1}/{len(cases)} {case['question'][:60]!r} "
                      + " | ".join(f"{s}: {row[s]['seconds']:.0f}s {row[s]['tokens']}t"
                                   f"{' LOOP' if row[s]['loop'] else ''} {row[s]['answer'][:40]!r}" for s in names[:2]))
    summary = {s: {part: _summary([r[s] for r in rows if r["set"] == part]) for part in ("squad", "debian")
                   if any(r["set"] == part for r in rows)} for s in names}
    console.print(_table(summary))
    path = write_result(args.name, {
        "settings": {**{name: c.__dict__ for name, c in controls.items()}, "max_new_tokens": g.max_new_tokens,
                     "timeout": timeout, "context_tokens": budget, "answer_top_k": g.answer_top_k},
        "questions": {"planned": len(cases), "answered": len(rows)}, "summary": summary, "answers": rows,
        "seconds": round(time.perf_counter() - started, 1)})
    console.print(f"wrote {path}")


def _debian_cases(rt: Any, limit: int) -> list[dict[str, Any]]:
    from debian_questions import COLLECTION, QUESTIONS

    names = {c.name for c in rt.collections()}
    if COLLECTION not in names:
        console.print(f"[yellow]no {COLLECTION} collection (debian_questions.py --subset makes it); skipped")
        return []
    return [{"set": "debian", "qid": str(i), "question": q, "gold": [], "pattern": pattern,
             "collection": COLLECTION, "max_tokens": 96} for i, (q, _, pattern) in enumerate(QUESTIONS[:limit])]


def _score(gen: TransformersGenerator, case: dict[str, Any], c: Completion, *, cut: bool) -> dict[str, Any]:
    text = strip_citations(c.text)
    ids = gen.tokenizer(text, add_special_tokens=False)["input_ids"]
    # the answer's hash and length only: a model's answer copies the dataset's passages
    out: dict[str, Any] = {"answer_sha256": hashlib.sha256(c.text.encode()).hexdigest()[:12],
                           "answer_chars": len(c.text), "tokens": c.completion_tokens, "seconds": round(c.seconds, 2),
                           "finish": c.finish_reason, "cut": cut, "cites": bool(parse_citations(c.text)),
                           "loop": max_ngram_count(ids, 3) >= 4 or c.finish_reason in ("length", "timeout")}
    if case["set"] == "squad":
        out.update(f1=token_f1(text, case["gold"]), em=exact_match(text, case["gold"]))
    else:
        out["correct"] = bool(re.search(case["pattern"], c.text, re.I | re.S))
    return out


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    if not rows:
        return {"n": 0}
    out: dict[str, Any] = {
        "n": len(rows), "loops": sum(r["loop"] for r in rows), "loop_rate": sum(r["loop"] for r in rows) / len(rows),
        "capped": sum(r["finish"] == "length" for r in rows), "timeouts": sum(r["finish"] == "timeout" for r in rows),
        "cut": sum(r["cut"] for r in rows), "citing": sum(r["cites"] for r in rows),
        "tokens_mean": statistics.mean(r["tokens"] for r in rows),
        "latency": percentiles([r["seconds"] * 1000 for r in rows]),
    }
    if "f1" in rows[0]:
        out.update(f1=statistics.mean(r["f1"] for r in rows), em=statistics.mean(r["em"] for r in rows))
    else:
        out["correct"] = sum(r["correct"] for r in rows)
    return out


def _table(summary: dict[str, dict[str, dict[str, Any]]]) -> Table:
    table = Table(title="SmolLM2: decoding controls off vs on (same prompts, interleaved)")
    for col in ("set", "controls", "n", "F1", "EM", "correct", "loops", "cap / timeout", "cut", "tokens (mean)",
                "p50 s", "p95 s", "cite [n]"):
        table.add_column(col, justify="left" if col in ("set", "controls") else "right")
    for part in ("squad", "debian"):
        for s in summary:
            m = summary[s].get(part)
            if not m or not m["n"]:
                continue
            lat = m["latency"]
            table.add_row(part, s, str(m["n"]), f"{m['f1']:.3f}" if "f1" in m else "",
                          f"{m['em']:.3f}" if "em" in m else "", str(m.get("correct", "")),
                          f"{m['loops']} ({m['loop_rate']:.0%})", f"{m['capped']} / {m['timeouts']}", str(m["cut"]),
                          f"{m['tokens_mean']:.0f}", f"{lat['p50_ms'] / 1000:.1f}", f"{lat['p95_ms'] / 1000:.1f}",
                          str(m["citing"]))
    return table


if __name__ == "__main__":
    main()
