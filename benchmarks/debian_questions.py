"""The 18-question check of issue 16 on Debian's documentation: ingest /usr/share/doc as this
machine's packages ship it (copied into the bench data folder by debian_docs.py's copy, never
committed), then ask 18 questions written for that corpus, each with the document that answers it
and a pattern its right answer matches. Every generator answers every question.

    python benchmarks/debian_questions.py [--source /usr/share/doc] [--generators extractive smollm2]

Per question: the rank of the answering document in hybrid search (top 10; the document it was
linked to as a near-duplicate counts as it), and per generator
whether the answer matches the pattern (correct), abstains, or says something else. A question
whose pattern is not in its document on this machine is reported as invalid and left out of the
shares. Writes benchmarks/results/debian_questions.json.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

from common import bench_engine, default_bench_data, write_result
from debian_docs import copy_docs
from rich.console import Console
from rich.table import Table

from ragtune.models import ProgressEvent

console = Console()
COLLECTION = "debian-docs-questions"

# (question, the answering document: a substring of its URI, a pattern of the right answer)
QUESTIONS: list[tuple[str, str, str]] = [
    ("Which uid range does Debian reserve, that update-passwd keeps consistent with the master copies?",
     "base-passwd/README", r"0\s*-\s*99"),
    ("Which CVE did the upstream patches added to bsdutils fix?", "bsdutils/changelog.Debian",
     r"CVE-2024-28085"),
    ("What is the default scale when bc is started with the -l option?", "bc/bc.html", r"\b20\b"),
    ("Is libffi thread-safe?", "libffi8/html/Thread-Safety", r"not completely thread-safe"),
    ("What is the default value of valgrind's --num-callers option?", "valgrind", r"\b12\b"),
    ("What does setting NODE_DISABLE_COLORS=1 do in Node.js?", "nodejs/api", r"colou?rs will not be used"),
    ("What is the default highWaterMark of a Node.js stream?", "nodejs/api", r"65536|64 KiB|16 KiB|16384"),
    ("Which SQLite version added support for window functions?", "changelog.html", r"3\.25(\.0)?\b"),
    ("Which bzip2 option keeps the input files instead of deleting them?", "bzip2", r"(^|\s)-k\b|--keep"),
    ("What is the recommended size of the IV for GCM in Nettle?", "nettle", r"\b12\b"),
    ("What is the top-level element of a fontconfig configuration file?", "fontconfig",
     r"<fontconfig>|fontconfig element"),
    ("What does the -v option of GNU time do?", "time/time.html", r"verbose"),
    ("Which GCC 12 analyzer warning is similar to -Wuninitialized but interprocedural?", "gcc-12-base/NEWS",
     r"-Wanalyzer-use-of-uninitiali[sz]ed-value"),
    ("What kind of errors does Helgrind detect?", "valgrind", r"thread|synchroni[sz]ation|data race"),
    ("Who holds the copyright of zlib?", "zlib1g/copyright", r"Gailly.*Adler|Adler.*Gailly"),
    ("Which Debian version of bzip2 made the tests cross-test-friendly?", "bzip2/changelog.Debian",
     r"1\.0\.8-5"),
    ("When was libffi 3.4.4 released?", "libffi8/README.md", r"October 23,? 2022|2022-10-23"),
    ("How many CPU cycles per byte does the interleaved word-by-word CRC algorithm take?", "crc-doc",
     r"1\.2"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=Path("/usr/share/doc"))
    parser.add_argument("--generators", nargs="+", default=["extractive", "smollm2"])
    parser.add_argument("--skip-ingest", action="store_true", help="the collection is already there")
    parser.add_argument("--subset", action="store_true",
                        help="only the packages the questions come from (node.js: five API pages) and 40 others "
                             "drawn at random (seed 16): the whole folder is ~230 M characters, hours of embedding")
    args = parser.parse_args()
    folder = default_bench_data() / "debian-doc"
    started = time.perf_counter()
    with bench_engine() as rt:
        ingest: dict[str, Any] = {}
        if not args.skip_ingest:
            copied = copy_subset(args.source, folder) if args.subset else copy_docs(args.source, folder)
            shown = [0.0]

            def progress(event: ProgressEvent) -> None:
                if time.perf_counter() - shown[0] > 30:
                    shown[0] = time.perf_counter()
                    console.print(f"{event.task} {event.done}/{event.total}")

            report = rt.sync(folder, collection=COLLECTION, progress=progress)
            by_suffix = [f for f in report.failed if f.reason.startswith("no loader for")]
            ingest = {"files": copied, "report": {k: v for k, v in report.to_dict().items()
                                                  if k not in ("failures", "warnings")},
                      "rejected_for_suffix": len(by_suffix),
                      "failure_reasons": sorted({f.error for f in report.failed}),
                      "seconds": round(time.perf_counter() - started, 1)}
            console.print(f"ingest: {ingest['report']}")
        rows = []
        stored = rt.documents(collection=COLLECTION, limit=None)
        for question, where, pattern in QUESTIONS:
            # the answering document, or the document it was linked to as a near-duplicate (the same
            # text shipped by another package): search finds the text once, under the original
            right = {d.uri for d in stored if where in d.uri} | {
                str(d.metadata["duplicate_of"]) for d in stored if where in d.uri and d.metadata.get("duplicate_of")}
            hits = rt.search(question, collection=COLLECTION, top_k=10, mode="hybrid").hits
            rank = next((i for i, h in enumerate(hits, start=1) if h.uri in right), None)
            valid = any(h.uri in right and re.search(pattern, h.chunk.text, re.I | re.S) for h in hits) or _in_corpus(
                rt, where, pattern)
            row: dict[str, Any] = {"question": question, "document": where, "rank": rank, "valid": valid,
                                   "top": hits[0].uri.replace(str(folder) + "/", "") if hits else None}
            for generator in args.generators:
                t0 = time.perf_counter()
                answer = rt.ask(question, collection=COLLECTION, generator=generator, max_tokens=96)
                text = answer.text or ""
                verdict = "abstained" if answer.abstained else (
                    "correct" if re.search(pattern, text, re.I | re.S) else "wrong")
                seconds = round(time.perf_counter() - t0, 1)
                row[generator] = {"verdict": verdict, "answer": text[:300], "seconds": seconds,
                                  "cited": [c.uri.replace(str(folder) + "/", "") for c in answer.citations][:3]}
            rows.append(row)
            console.print(f"{rank or '-':>3} {question[:60]:60} " + " ".join(
                f"{g}:{row[g]['verdict']}" for g in args.generators))
    valid_rows = [r for r in rows if r["valid"]]
    summary = {
        "questions": len(rows), "valid": len(valid_rows),
        "doc_at_1": sum(r["rank"] == 1 for r in valid_rows),
        "doc_in_5": sum(r["rank"] is not None and r["rank"] <= 5 for r in valid_rows),
        "generators": {g: {v: sum(r[g]["verdict"] == v for r in valid_rows)
                           for v in ("correct", "abstained", "wrong")} for g in args.generators},
    }
    path = write_result("debian_questions", {"source": str(args.source), "ingest": ingest, "summary": summary,
                                             "rows": rows})
    table = Table(title=f"18 questions on Debian's documentation ({summary['valid']} valid here)")
    for col in ("", "right document first", "in top 5", *args.generators):
        table.add_column(col, justify="right")
    n = max(summary["valid"], 1)
    table.add_row("share", f"{summary['doc_at_1']}/{n}", f"{summary['doc_in_5']}/{n}",
                  *(f"{summary['generators'][g]['correct']}/{n} correct, {summary['generators'][g]['abstained']} "
                    f"abstained" for g in args.generators))
    console.print(table)
    console.print(f"results in {path}")


QUESTION_PACKAGES = ["base-passwd", "bsdutils", "bc", "libffi8", "valgrind", "sqlite3", "libsqlite3-0", "bzip2",
                     "nettle-dev", "fontconfig", "time", "gcc-12-base", "zlib1g", "zlib1g-dev"]
NODE_PAGES = ["cli.html", "stream.html", "events.html", "os.html", "path.html"]


def copy_subset(source: Path, target: Path) -> int:
    """The question packages, five node.js API pages and 40 other packages drawn at random."""
    others = sorted(p.name for p in source.iterdir() if p.is_dir() and p.name not in QUESTION_PACKAGES
                    and p.name != "nodejs")
    packages = QUESTION_PACKAGES + random.Random(16).sample(others, 40)
    if target.is_dir():
        shutil.rmtree(target)
    copied = sum(copy_docs(source / name, target / name) for name in packages if (source / name).is_dir())
    (target / "nodejs" / "api").mkdir(parents=True)
    for page in NODE_PAGES:
        shutil.copyfile(source / "nodejs" / "api" / page, target / "nodejs" / "api" / page)
    return copied + len(NODE_PAGES)


def _in_corpus(rt: Any, where: str, pattern: str) -> bool:
    """Whether the answering document holds the answer on this machine (else the question is not
    valid here: packages differ between machines)."""
    for doc in rt.documents(collection=COLLECTION, limit=None):
        if where in doc.uri:
            _, text, _ = rt.document(doc.uri, collection=COLLECTION)
            if re.search(pattern, text, re.I | re.S):
                return True
    return False


if __name__ == "__main__":
    main()
